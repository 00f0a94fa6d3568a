"""Live loss curves that stay smooth with a million points.

Incoming metrics only go into numpy buffers (amortised O(1) appends); a ~15 Hz timer redraws
the curves, which were created once and are updated with ``setData``. pyqtgraph clips each
curve to the view and downsamples it ("peak" keeps spikes visible), so drawing costs about
the plot's width in pixels whatever the number of points. Buffers are capped: past the cap the
older half is thinned 2:1, so memory stays flat in long runs and recent steps keep full detail.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from . import theme

REDRAW_INTERVAL_MS = 66  # ~15 Hz: fluid to the eye, negligible cost
DEFAULT_MAX_POINTS = 1_000_000


class SeriesBuffer:
    """Growing (x, y) float64 arrays: capacity doubles, and at ``max_points`` old points thin out."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS, capacity: int = 1024) -> None:
        if max_points < 4:
            raise ValueError(f"max_points must be at least 4, got {max_points}")
        self.max_points = max_points
        self._xy = np.empty((2, min(capacity, max_points)), dtype=np.float64)
        self.size = 0

    def append(self, x: float, y: float) -> None:
        if self.size == self.max_points:
            self._thin_older_half()
        if self.size == self._xy.shape[1]:
            grown = np.empty((2, min(self.size * 2, self.max_points)), dtype=np.float64)
            grown[:, : self.size] = self._xy[:, : self.size]
            self._xy = grown
        self._xy[0, self.size] = x
        self._xy[1, self.size] = y
        self.size += 1

    def _thin_older_half(self) -> None:
        half = self.size // 2
        kept = self._xy[:, 0:half:2]
        n_kept = kept.shape[1]
        self._xy[:, :n_kept] = kept
        self._xy[:, n_kept : n_kept + self.size - half] = self._xy[:, half : self.size]
        self.size = n_kept + self.size - half

    @property
    def x(self) -> np.ndarray:
        return self._xy[0, : self.size]

    @property
    def y(self) -> np.ndarray:
        return self._xy[1, : self.size]

    def replace(self, x: np.ndarray, y: np.ndarray) -> None:
        """Swap in new contents of equal length (at most ``max_points``)."""
        n = len(x)
        if n != len(y) or n > self.max_points:
            raise ValueError(f"replace needs equal lengths <= {self.max_points}, got {n} and {len(y)}")
        if n > self._xy.shape[1]:
            self._xy = np.empty((2, min(max(n, 1024), self.max_points)), dtype=np.float64)
        self._xy[0, :n] = x
        self._xy[1, :n] = y
        self.size = n

    def clear(self) -> None:
        self.size = 0


def ema(values: np.ndarray, smoothing: float, block: int = 128) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing), vectorised in blocks.

    Within a block the EMA is a lower-triangular matrix product (powers of ``smoothing`` <= 1,
    so it is stable for any smoothing in [0, 1)); a Python loop only carries block ends.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    n = len(values)
    if n == 0 or smoothing == 0.0:
        return np.array(values, dtype=np.float64)
    a = smoothing
    pad = (-n) % block
    y = np.concatenate([np.asarray(values, dtype=np.float64), np.zeros(pad)]).reshape(-1, block)
    j = np.arange(block)
    powers = np.tril(a ** np.clip(j[:, None] - j[None, :], 0, None))  # M[j, i] = a^(j-i), i <= j
    local = (1.0 - a) * (y @ powers.T)  # each block's EMA started from zero
    carry_weights = a ** (j + 1)
    out = np.empty_like(local)
    carry = 0.0
    for k in range(local.shape[0]):
        out[k] = local[k] + carry_weights * carry
        carry = out[k, -1]
    flat = out.reshape(-1)[:n]
    return flat / (1.0 - a ** np.arange(1, n + 1))  # debias the zero start


class LossPlot(QWidget):
    """Train loss (raw + smoothed), validation loss markers and the learning rate (right axis)."""

    def __init__(self, parent: QWidget | None = None, max_points: int = DEFAULT_MAX_POINTS) -> None:
        super().__init__(parent)
        self.train = SeriesBuffer(max_points)
        self.val = SeriesBuffer(max_points)
        self.lr = SeriesBuffer(max_points)
        self.smoothing = 0.6
        self._ema_state = 0.0  # un-debiased running EMA of the train loss, for incremental updates
        self._ema_count = 0
        self.smoothed = SeriesBuffer(max_points)
        self._dirty = False

        palette = theme.apply_theme()
        self.plot_widget = pg.PlotWidget()
        self.plot_item = self.plot_widget.getPlotItem()
        self.plot_item.setLabel("bottom", "step")
        self.plot_item.setLabel("left", "loss")
        self.plot_item.setClipToView(True)
        self.plot_item.setDownsampling(auto=True, mode="peak")
        self.plot_item.addLegend(offset=(-10, 10))
        self.train_raw_curve = self.plot_item.plot(name="train (raw)")
        self.train_curve = self.plot_item.plot(name="train")
        self.val_curve = self.plot_item.plot(name="validation", symbol="o", symbolSize=6)

        # The learning rate lives on its own y axis: a second ViewBox sharing the x axis.
        self.lr_view = pg.ViewBox()
        self.plot_item.showAxis("right")
        self.plot_item.scene().addItem(self.lr_view)
        self.plot_item.getAxis("right").linkToView(self.lr_view)
        self.plot_item.getAxis("right").setLabel("learning rate")
        self.lr_view.setXLink(self.plot_item)
        self.lr_curve = pg.PlotDataItem(name="learning rate")
        self.lr_curve.setClipToView(True)
        self.lr_curve.setDownsampling(auto=True, method="peak")
        self.lr_view.addItem(self.lr_curve)
        self.plot_item.legend.addItem(self.lr_curve, "learning rate")
        self.plot_item.vb.sigResized.connect(self._sync_lr_view)
        self._apply_palette(palette)
        theme.on_scheme_changed(self, lambda: self._apply_palette(theme.plot_palette()))

        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setObjectName("smoothingSlider")
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(round(self.smoothing * 100))
        self.smoothing_slider.setToolTip("Exponential moving average of the training loss (0 = raw)")
        self.smoothing_slider.valueChanged.connect(lambda v: self.set_smoothing(v / 100))
        self.smoothing_label = QLabel(f"{self.smoothing:.2f}")
        self.log_checkbox = QCheckBox("Log scale")
        self.log_checkbox.setObjectName("logScale")
        self.log_checkbox.toggled.connect(self.set_log_y)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Smoothing"))
        controls.addWidget(self.smoothing_slider, 1)
        controls.addWidget(self.smoothing_label)
        controls.addWidget(self.log_checkbox)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addLayout(controls)

        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self.redraw)
        self._timer.start()

    # ---- data in --------------------------------------------------------------------------

    def add_point(self, step: float, train_loss: float | None, lr: float | None = None,
                  val_loss: float | None = None) -> None:
        """Buffer one step's numbers; nothing is drawn until the next timer tick."""
        if train_loss is not None and np.isfinite(train_loss):
            self.train.append(step, train_loss)
            a = self.smoothing
            self._ema_state = a * self._ema_state + (1.0 - a) * train_loss
            self._ema_count += 1
            debias = 1.0 - a**self._ema_count if a > 0 else 1.0
            self.smoothed.append(step, self._ema_state / debias)
        if lr is not None:
            self.lr.append(step, lr)
        if val_loss is not None and np.isfinite(val_loss):
            self.val.append(step, val_loss)
        self._dirty = True

    def add_metrics(self, metrics: object) -> None:
        """Take a StepMetrics (step, train_loss, lr, val_loss)."""
        self.add_point(metrics.step, metrics.train_loss, metrics.lr, metrics.val_loss)  # type: ignore[attr-defined]

    def clear(self) -> None:
        for buffer in (self.train, self.smoothed, self.val, self.lr):
            buffer.clear()
        self._ema_state, self._ema_count = 0.0, 0
        self._dirty = True
        self.redraw()

    # ---- view options ---------------------------------------------------------------------

    def set_smoothing(self, smoothing: float) -> None:
        """Recompute the smoothed curve over every buffered point (vectorised: fast at 1M)."""
        self.smoothing = min(max(float(smoothing), 0.0), 0.99)
        self.smoothing_label.setText(f"{self.smoothing:.2f}")
        smoothed = ema(self.train.y, self.smoothing)
        self.smoothed.replace(self.train.x, smoothed)
        if self.train.size:
            # Restart the incremental EMA where the vectorised one ended (un-debiased form).
            self._ema_count = self.train.size
            debias = 1.0 - self.smoothing**self._ema_count if self.smoothing > 0 else 1.0
            self._ema_state = float(smoothed[-1]) * debias
        self._dirty = True

    def set_log_y(self, on: bool) -> None:
        self.plot_item.setLogMode(x=False, y=bool(on))
        if self.log_checkbox.isChecked() != bool(on):
            self.log_checkbox.setChecked(bool(on))
        self._dirty = True

    # ---- drawing --------------------------------------------------------------------------

    def redraw(self) -> None:
        """Push the buffers to the curves if anything arrived since the last redraw."""
        if not self._dirty:
            return
        self._dirty = False
        self.train_raw_curve.setData(self.train.x, self.train.y)
        self.train_curve.setData(self.smoothed.x, self.smoothed.y)
        self.val_curve.setData(self.val.x, self.val.y)
        self.lr_curve.setData(self.lr.x, self.lr.y)

    def _sync_lr_view(self) -> None:
        self.lr_view.setGeometry(self.plot_item.vb.sceneBoundingRect())
        self.lr_view.linkedViewChanged(self.plot_item.vb, self.lr_view.XAxis)

    def _apply_palette(self, palette: theme.PlotPalette) -> None:
        self.plot_widget.setBackground(palette.background)
        for name in ("left", "bottom", "right"):
            axis = self.plot_item.getAxis(name)
            axis.setPen(pg.mkPen(palette.foreground))
            axis.setTextPen(pg.mkPen(palette.foreground))
        self.plot_item.showGrid(x=True, y=True, alpha=palette.grid_alpha)
        self.train_raw_curve.setPen(pg.mkPen(palette.train_raw, width=1))
        self.train_curve.setPen(pg.mkPen(palette.train, width=1))
        self.val_curve.setPen(pg.mkPen(palette.val, width=1))
        self.val_curve.setSymbolBrush(pg.mkBrush(palette.val))
        self.val_curve.setSymbolPen(pg.mkPen(palette.val))
        self.lr_curve.setPen(pg.mkPen(palette.lr, width=1, style=Qt.PenStyle.DashLine))
