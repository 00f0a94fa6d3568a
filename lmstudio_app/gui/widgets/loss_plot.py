"""Live loss curves whose redraw costs the same at a thousand points or a million.

Incoming metrics only go into numpy buffers (amortised O(1) appends, the smoothed curve's EMA
updated incrementally); a timer redraws, only when something changed and the plot is on
screen, at most every :data:`REDRAW_INTERVAL_MS` and never taking more than the
:data:`REDRAW_BUDGET` share of the GUI thread (a training thread shares the interpreter with it,
so plot time is training time). A redraw hands each curve at most a few thousand points
(:data:`MAX_BINS` bins of two): min/max ("peak") decimation over the visible steps, from
per-level caches that only the new points extend (:mod:`.plot_data`), so spikes stay visible
and pyqtgraph never sees the full buffers.
The axes render into cached pixmaps and, while training, the step axis spans the whole run
from the start, so a new point repaints the curves without re-laying out the ticks and grid.
Buffers are capped: past the cap the older half is thinned 2:1, so memory stays flat in long
runs and recent steps keep full detail.

For a synthetic corpus whose exact odds are known (the demo grammar), two more things show how
close the model came to the truth: the KL divergence from the truth at each evaluation (mean
KL(true ‖ model) over the watched prompts, a curve on the loss axis: both are nats) and the
entropy floor, the lowest loss any model can reach, as a dashed horizontal line. A run without a
truth shows neither (not even in the legend).

The "y" choice switches the validation points between loss (nats per token of the run's
tokenizer) and bits per UTF-8 byte of the validation text, the unit in which runs with
different tokenizers compare. Only validation has a byte count, so in bits per byte the training
curves, the KL curve and the entropy floor (all nats per token) are hidden rather than mixed in.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPaintEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsItem,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.training.control import StepMetrics

from .. import theme
from .legend_row import legend_above
from .plot_data import DEFAULT_MAX_POINTS, PeakDecimator, SeriesBuffer, ema

REDRAW_INTERVAL_MS = 66  # ~15 Hz at most: fluid to the eye
MAX_REDRAW_INTERVAL_MS = 1000  # and at least 1 Hz, however slow the machine
# Share of wall time that redrawing the plot may take. Painting holds the GIL (pyqtgraph paints
# in Python, PySide6 keeps the GIL through Qt calls), so this is also what it may cost training:
# redraws are spaced a frame's cost divided by this apart (within REDRAW_INTERVAL_MS and
# MAX_REDRAW_INTERVAL_MS), so a frame twice as costly is redrawn half as often.
REDRAW_BUDGET = 0.01
MAX_BINS = 1500  # per curve: 2 points a bin, about two per pixel of a wide plot
MAX_MARKERS = 300  # validation points drawn with a marker each; more are drawn as a line
RANGE_HEADROOM = 0.05  # an auto-ranged axis leaves this share of the data's span free on each side
RANGE_SHRINK_BELOW = 0.5  # ... and only shrinks when the data fills less than this share of it
KL_LABEL = "KL to truth"  # the KL curve's legend entry
KL_COLORS = ("#9467bd", "#c9a0ff")  # on a light, a dark background
FLOOR_COLORS = ("#505050", "#b0b0b0")
Y_LOSS, Y_BPB = "loss", "bpb"  # the y choice: loss in nats/token, or validation bits per byte
Y_LABELS = {Y_LOSS: "loss (nats/token)", Y_BPB: "val. bits/byte"}
NO_BPB_LABEL = "bits per byte: not recorded in this run"  # a run from before val_bpb existed


class _TimedPlotWidget(pg.PlotWidget):
    """A PlotWidget that remembers how long its last paint took (for the redraw budget)."""

    paint_s = 0.0

    def paintEvent(self, event: QPaintEvent) -> None:
        started = time.perf_counter()
        super().paintEvent(event)
        self.paint_s = time.perf_counter() - started


class StickyViewBox(pg.ViewBox):
    """A ViewBox whose auto-range moves in steps instead of following every new point.

    Re-ranging an axis re-lays out its ticks, labels and grid: the costliest part of a paint.
    Plain auto-range does it whenever the loss reaches a new low; here an auto-ranged axis keeps
    its range while the data still fits it and fills at least :data:`RANGE_SHRINK_BELOW` of it,
    and when it has to move it leaves :data:`RANGE_HEADROOM` of the data's span free on each side. A range set any other way (zoom, pan) is left alone, and the
    "A" button still fits the data at once. ``from_zero``: the y range starts at 0 (losses and
    learning rates are never negative; on a linear axis the range then only changes when a
    new high arrives, which during training is rare).
    """

    def __init__(self, *args: object, from_zero: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.from_zero = from_zero
        self._auto_ranges: list[tuple[float, float] | None] = [None, None]  # what auto-range set last

    def setRange(self, rect: object = None, xRange: object = None, yRange: object = None,
                 padding: float | None = None, update: bool = True, disableAutoRange: bool = True) -> None:
        if not disableAutoRange:  # only ViewBox.updateAutoRange asks this way
            current = self.viewRange()
            xRange = self._sticky(self.XAxis, current[0], xRange)
            yRange = self._sticky(self.YAxis, current[1], yRange)
            if xRange is None and yRange is None:
                return
        super().setRange(rect, xRange, yRange, padding, update, disableAutoRange)
        if not disableAutoRange:
            for axis, asked in ((self.XAxis, xRange), (self.YAxis, yRange)):
                if asked is not None:
                    self._auto_ranges[axis] = tuple(self.viewRange()[axis])

    def enableAutoRange(self, axis: object = None, enable: bool | float = True, x: object = None,
                        y: object = None) -> None:
        before = list(self.state["autoRange"])
        super().enableAutoRange(axis, enable, x, y)
        for index in (self.XAxis, self.YAxis):
            if self.state["autoRange"][index] and not before[index]:  # switched on, e.g. by "A"
                self._auto_ranges[index] = None  # fit the data exactly, once

    def refit(self) -> None:
        """Follow the data again on both axes, starting with an exact fit (a new run)."""
        self._auto_ranges = [None, None]
        self.enableAutoRange()

    def refit_y(self) -> None:
        """Follow the data again on the y axis only, with an exact fit (the step range stays)."""
        self._auto_ranges[self.YAxis] = None
        self.enableAutoRange(axis=self.YAxis)

    def _sticky(self, axis: int, current: list[float], target: object) -> tuple[float, float] | None:
        """The range to set for ``target`` (the data's padded bounds), or None to keep ``current``."""
        if target is None:
            return None
        low, high = (float(v) for v in target)  # type: ignore[union-attr]
        if axis == self.YAxis and self.from_zero and not self.state["logMode"][axis] and low > 0:
            low = 0.0
        span, shown = high - low, current[1] - current[0]
        if (self._auto_ranges[axis] == tuple(current) and current[0] <= low and high <= current[1]
                and span >= RANGE_SHRINK_BELOW * shown):
            return None
        if self._auto_ranges[axis] is None:
            return low, high
        return low - span * RANGE_HEADROOM, high + span * RANGE_HEADROOM


class _DecimatedCurve:
    """One buffer drawn by one curve, through a decimator that follows the buffer's changes.

    ``symbol``: markers on the points while at most :data:`MAX_MARKERS` are drawn (beyond,
    they merge into a smudge and pyqtgraph spends ~0.1 ms on each): then the line alone.
    """

    def __init__(self, buffer: SeriesBuffer, curve: pg.PlotDataItem, symbol: str | None = None) -> None:
        self.buffer = buffer
        self.curve = curve
        self.symbol = symbol
        self.decimator = PeakDecimator(MAX_BINS)
        self._version = buffer.version

    def use(self, buffer: SeriesBuffer) -> None:
        """Draw another buffer from the next redraw on (the decimator starts over)."""
        self.buffer = buffer
        self.decimator.reset()
        self._version = buffer.version

    def draw(self, x_min: float | None, x_max: float | None) -> None:
        if self.buffer.version != self._version:
            self.decimator.reset()
            self._version = self.buffer.version
        x, y = self.decimator.decimate(self.buffer.x, self.buffer.y, x_min, x_max)
        if self.symbol is not None:
            symbol = self.symbol if len(x) <= MAX_MARKERS else None
            if self.curve.opts["symbol"] != symbol:
                self.curve.setSymbol(symbol)
        self.curve.setData(x, y)


class LossPlot(QWidget):
    """Train loss (raw + smoothed), validation loss markers and the learning rate (right axis).

    ``has_data_changed(bool)``: the plot got its first point, or was cleared (what enables the
    exports)."""

    has_data_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, max_points: int = DEFAULT_MAX_POINTS) -> None:
        super().__init__(parent)
        self._init_buffers(max_points)
        palette = theme.apply_theme()  # pyqtgraph's colours are read when a plot is created
        self._build_axes()
        self._build_legend()
        self._build_curves()
        self._cache_axes_and_legend()
        self._apply_palette(palette)
        theme.on_scheme_changed(self, lambda: self._apply_palette(theme.plot_palette()))
        self._build_layout(self._build_controls())
        self._build_timers()

    # ---- construction ---------------------------------------------------------------------

    def _init_buffers(self, max_points: int) -> None:
        """The curves' data, the incremental EMA's state and the redraw bookkeeping."""
        self.train = SeriesBuffer(max_points)
        self.val = SeriesBuffer(max_points)
        self.lr = SeriesBuffer(max_points)
        self.kl = SeriesBuffer(max_points)  # KL(true ‖ model) at evaluations, for a synthetic corpus
        self.val_bpb = SeriesBuffer(max_points)  # validation loss in bits per byte (absent in old runs)
        self.y_unit = Y_LOSS
        self._has_data = False
        self.entropy_floor: float | None = None  # the truth's entropy rate, nats/token
        self.smoothing = 0.6
        self._pending_smoothing: float | None = None  # from the slider, applied at the next redraw
        self._ema_state = 0.0  # un-debiased running EMA of the train loss, for incremental updates
        self._ema_count = 0
        self.smoothed = SeriesBuffer(max_points)
        self._dirty = False
        self._frame_cost_s = 0.0  # smoothed cost of one redraw + paint, sets the redraw interval
        self._drawn_steps: tuple[float | None, float | None] = (None, None)  # the range last decimated
        self.redraw_count = 0  # redraws that pushed data to the curves (for tests and benchmarks)

    def _build_axes(self) -> None:
        """The plot with its loss axis (left), step axis (bottom) and learning-rate axis (right)."""
        self.loss_view = StickyViewBox(from_zero=True)
        self.plot_widget = _TimedPlotWidget(viewBox=self.loss_view)
        self.plot_item = self.plot_widget.getPlotItem()
        self.plot_item.setLabel("bottom", "step")
        self.plot_item.setLabel("left", Y_LABELS[Y_LOSS])
        # Plain numbers: an SI prefix turns 0.18 bits per byte into "180" with an "m" in a label
        # too long to show.
        self.plot_item.getAxis("left").enableAutoSIPrefix(False)
        # The learning rate lives on its own y axis: a second ViewBox sharing the x axis.
        self.lr_view = StickyViewBox(from_zero=True)
        self.plot_item.showAxis("right")
        self.plot_item.scene().addItem(self.lr_view)
        right = self.plot_item.getAxis("right")
        right.linkToView(self.lr_view)
        right.setLabel("learning rate")
        # Tick labels in plain numbers: an SI scale factor would put "(x0.001)" into the label,
        # which then no longer fits the axis.
        right.enableAutoSIPrefix(False)
        right.setWidth(62)  # room for "0.0005" and the label: a learning rate's ticks are wide
        self.lr_view.setXLink(self.plot_item)
        self.plot_item.vb.sigResized.connect(self._sync_lr_view)
        # Tick labels may widen an axis but never narrow it again: otherwise the right axis can
        # flip between two widths at every redraw, and each flip resizes the view (a full repaint).
        for name in ("left", "right"):
            self.plot_item.getAxis(name).setStyle(autoReduceTextSpace=False)

    def _build_legend(self) -> None:
        """The legend, in a row above the plot (never over a curve); curves created with a name
        from now on list themselves in it."""
        legend_above(self.plot_item, columns=6)

    def _build_curves(self) -> None:
        """The four curves, each fed by its buffer through a decimator."""
        self.train_raw_curve = self.plot_item.plot(name="train (raw)")
        self.train_curve = self.plot_item.plot(name="train")
        self.val_curve = self.plot_item.plot(name="validation", symbol="o", symbolSize=6)
        self.lr_curve = pg.PlotDataItem(name="learning rate")
        self.lr_view.addItem(self.lr_curve)  # not in the loss view: add it to the legend by hand
        self.plot_item.legend.addItem(self.lr_curve, "learning rate")
        # The KL from the truth shares the loss axis (both nats); it joins the legend with its first point.
        self.kl_curve = pg.PlotDataItem(symbol="t", symbolSize=7)
        self.plot_item.addItem(self.kl_curve)
        self._kl_in_legend = False
        # The entropy floor: not data, so it never widens the auto-range (the y axis starts at 0 anyway).
        self.floor_line = pg.InfiniteLine(angle=0, movable=False, label="",
                                          labelOpts={"position": 0.02, "anchors": [(0, 1), (0, 1)]})
        self.floor_line.setVisible(False)
        self.plot_item.addItem(self.floor_line, ignoreBounds=True)
        self._val_drawn = _DecimatedCurve(self.val, self.val_curve, symbol="o")  # or self.val_bpb (set_y_unit)
        self._curves = [_DecimatedCurve(self.train, self.train_raw_curve),
                        _DecimatedCurve(self.smoothed, self.train_curve),
                        self._val_drawn,
                        _DecimatedCurve(self.lr, self.lr_curve),
                        _DecimatedCurve(self.kl, self.kl_curve, symbol="t")]
        self._set_skip_finite_check(True)

    def _cache_axes_and_legend(self) -> None:
        """Ticks, labels and grid lines are the costly part of a paint; as pixmaps they are only
        re-rendered when their axis range changes, not whenever a curve moves over them."""
        for item in (*(self.plot_item.getAxis(name) for name in ("left", "bottom", "right")), self.plot_item.legend):
            item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)

    def _build_controls(self) -> QHBoxLayout:
        """The smoothing slider (with its value) and the log-scale check box, in a row."""
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setObjectName("smoothingSlider")
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(round(self.smoothing * 100))
        self.smoothing_slider.setToolTip("Exponential moving average of the training loss (0 = raw)")
        self.smoothing_slider.valueChanged.connect(self._on_smoothing_slider)
        self.smoothing_label = QLabel(f"{self.smoothing:.2f}")
        self.log_checkbox = QCheckBox("Log scale")
        self.log_checkbox.setObjectName("logScale")
        self.log_checkbox.toggled.connect(self.set_log_y)
        self.y_combo = QComboBox()
        self.y_combo.setObjectName("yUnit")
        self.y_combo.addItem("loss", Y_LOSS)
        self.y_combo.addItem("bits per byte", Y_BPB)
        self.y_combo.setToolTip("Loss: nats per token of this run's tokenizer. Bits per byte: the validation loss "
                                "per UTF-8 byte of the validation text, comparable across tokenizers")
        self.y_combo.currentIndexChanged.connect(lambda _: self.set_y_unit(self.y_combo.currentData()))
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Smoothing"))
        controls.addWidget(self.smoothing_slider, 1)
        controls.addWidget(self.smoothing_label)
        controls.addWidget(self.log_checkbox)
        controls.addWidget(QLabel("y:"))
        controls.addWidget(self.y_combo)
        return controls

    def _build_layout(self, controls: QHBoxLayout) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addLayout(controls)

    def _build_timers(self) -> None:
        """The paced redraw timer, and a prompt one-off redraw after a zoom or pan by hand."""
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self.redraw)
        self._timer.start()
        # Zooming or panning by hand re-decimates the new range promptly, whatever the pace of
        # redraws for arriving data.
        self._view_timer = QTimer(self, singleShot=True, interval=REDRAW_INTERVAL_MS)
        self._view_timer.timeout.connect(self.redraw)
        self.plot_item.vb.sigRangeChangedManually.connect(self._view_timer.start)

    # ---- data in --------------------------------------------------------------------------

    def add_point(self, step: float, train_loss: float | None, lr: float | None = None,
                  val_loss: float | None = None, kl_to_truth: float | None = None,
                  val_bpb: float | None = None) -> None:
        """Buffer one step's numbers; nothing is drawn until the next timer tick."""
        if train_loss is not None and np.isfinite(train_loss):
            self.train.append(step, train_loss)
            a = self.smoothing
            self._ema_state = a * self._ema_state + (1.0 - a) * train_loss
            self._ema_count += 1
            debias = 1.0 - a**self._ema_count if a > 0 else 1.0
            self.smoothed.append(step, self._ema_state / debias)
        if lr is not None and np.isfinite(lr):
            self.lr.append(step, lr)
        if val_loss is not None and np.isfinite(val_loss):
            self.val.append(step, val_loss)
        if val_bpb is not None and np.isfinite(val_bpb):
            self.val_bpb.append(step, val_bpb)
        if self.y_unit == Y_BPB and self.val.size + self.val_bpb.size == 1:  # the first validation point
            self._update_y_label()
        if kl_to_truth is not None and np.isfinite(kl_to_truth):
            self.kl.append(step, kl_to_truth)
            if not self._kl_in_legend:
                self.plot_item.legend.addItem(self.kl_curve, KL_LABEL)
                self._kl_in_legend = True
        self._dirty = True
        if not self._has_data and (self.train.size or self.val.size):
            self._has_data = True
            self.has_data_changed.emit(True)

    def has_data(self) -> bool:
        return self._has_data

    def add_metrics(self, metrics: StepMetrics) -> None:
        """Take a step's report (its step, train_loss, lr, val_loss, val_bpb and KL to the truth)."""
        self.add_point(metrics.step, metrics.train_loss, metrics.lr, metrics.val_loss, metrics.kl_to_truth,
                       metrics.val_bpb)

    def set_entropy_floor(self, nats: float | None) -> None:
        """Draw the lowest reachable loss (a truth's entropy rate) as a dashed line; None hides it."""
        self.entropy_floor = float(nats) if nats is not None and np.isfinite(nats) else None
        if self.entropy_floor is None:
            self.floor_line.setVisible(False)
            return
        self.floor_line.setVisible(True)  # first: a hidden line's label ignores a new text
        self.floor_line.label.setFormat(f"entropy floor {self.entropy_floor:.3f}")
        self.floor_line.setVisible(self.y_unit == Y_LOSS)  # nats/token: not on a bits-per-byte axis
        self.floor_line.setToolTip("The lowest mean loss any model can reach on this corpus (nats/token): "
                                   "its generating grammar's entropy rate")
        self._place_floor()

    def _place_floor(self) -> None:
        if self.entropy_floor is not None:
            log = self.plot_item.ctrl.logYCheck.isChecked()
            self.floor_line.setValue(np.log10(self.entropy_floor) if log and self.entropy_floor > 0
                                     else self.entropy_floor)

    def clear(self) -> None:
        """Forget every point and the entropy floor; the step axis follows the data again (see
        :meth:`set_step_range`)."""
        for buffer in (self.train, self.smoothed, self.val, self.val_bpb, self.lr, self.kl):
            buffer.clear()
        if self._kl_in_legend:
            self.plot_item.legend.removeItem(self.kl_curve)
            self._kl_in_legend = False
        self.set_entropy_floor(None)
        self._update_y_label()
        self._ema_state, self._ema_count = 0.0, 0
        self.loss_view.refit()
        self.lr_view.refit()
        self._dirty = True
        self.redraw()
        if self._has_data:
            self._has_data = False
            self.has_data_changed.emit(False)

    def set_step_range(self, last_step: int) -> None:
        """Fix the step axis to 0..``last_step`` (a run's max steps): the curve fills it as it
        trains, and the axis is not re-laid out at every new point. The "A" button undoes it."""
        self.plot_item.setXRange(0, max(int(last_step), 1), padding=0.01)

    # ---- view options ---------------------------------------------------------------------

    def set_smoothing(self, smoothing: float) -> None:
        """Recompute the smoothed curve over every buffered point (vectorised: fast at 1M)."""
        self._pending_smoothing = None
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

    def _on_smoothing_slider(self, value: int) -> None:
        """Dragging sends many values: show each, recompute once per redraw with the latest."""
        self._pending_smoothing = value / 100
        self.smoothing_label.setText(f"{self._pending_smoothing:.2f}")
        self._dirty = True

    def set_y_unit(self, unit: str) -> None:
        """``"loss"``: every curve in nats per token; ``"bpb"``: the validation points in bits per
        UTF-8 byte, alone on the left axis (the combo box follows)."""
        if unit not in Y_LABELS:
            raise ValueError(f"y unit {unit!r} is not one of {', '.join(Y_LABELS)}")
        self.y_unit = unit
        loss = unit == Y_LOSS
        self._val_drawn.use(self.val if loss else self.val_bpb)
        for curve in (self.train_raw_curve, self.train_curve, self.kl_curve):
            curve.setVisible(loss)
        self.floor_line.setVisible(loss and self.entropy_floor is not None)
        self._update_y_label()
        self.loss_view.refit_y()  # the values changed scale: fit them again (the steps stay)
        if self.y_combo.currentData() != unit:
            self.y_combo.setCurrentIndex(self.y_combo.findData(unit))
        self._dirty = True
        self.redraw()

    def _update_y_label(self) -> None:
        """The left axis's unit; in bits per byte, says so when the run recorded none (an old run)."""
        missing = self.y_unit == Y_BPB and self.val.size > 0 and self.val_bpb.size == 0
        self.plot_item.setLabel("left", NO_BPB_LABEL if missing else Y_LABELS[self.y_unit])

    def set_log_y(self, on: bool) -> None:
        """A logarithmic loss axis (the check box follows)."""
        self.plot_item.setLogMode(x=False, y=bool(on))
        # pyqtgraph switches both y axes to log ticks but only the curves of the loss view to
        # log values: the learning rate (in its own view) follows here, or its axis would show
        # 10^(a linear lr near 0), a single "1".
        self.lr_curve.setLogMode(False, bool(on))
        self.lr_view.setLogMode("y", bool(on))
        self.lr_view.refit()
        self._place_floor()  # a line is placed in view coordinates: log10 of the floor on a log axis
        self._set_skip_finite_check(not on)  # log10 of a zero loss is -inf: let pyqtgraph check
        if self.log_checkbox.isChecked() != bool(on):
            self.log_checkbox.setChecked(bool(on))
        self._dirty = True

    def _set_skip_finite_check(self, skip: bool) -> None:
        """Only finite values are buffered, so pyqtgraph's own pass over them can be skipped."""
        for drawn in self._curves:
            drawn.curve.setSkipFiniteCheck(skip)

    # ---- drawing --------------------------------------------------------------------------

    def redraw(self) -> None:
        """Push the buffers to the curves, if anything changed and the plot is on screen."""
        if self._pending_smoothing is not None:
            self.set_smoothing(self._pending_smoothing)
        steps = self._visible_steps()  # zoomed or panned: decimate the new slice
        if not (self._dirty or steps != self._drawn_steps) or not self.isVisible():
            return  # a hidden plot catches up in showEvent
        self._dirty = False
        self._drawn_steps = steps
        self.redraw_count += 1
        started = time.perf_counter()
        for drawn in self._curves:
            drawn.draw(*steps)
        self._pace(time.perf_counter() - started + self.plot_widget.paint_s)

    def _pace(self, frame_s: float) -> None:
        """Space redraws so that they (and the paint each causes) stay within the budget."""
        self._frame_cost_s = frame_s if self._frame_cost_s == 0 else 0.7 * self._frame_cost_s + 0.3 * frame_s
        interval = round(1000 * self._frame_cost_s / REDRAW_BUDGET)
        self._timer.setInterval(min(max(interval, REDRAW_INTERVAL_MS), MAX_REDRAW_INTERVAL_MS))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.redraw()

    def _visible_steps(self) -> tuple[float | None, float | None]:
        """The step range on screen; (None, None) while the axis follows the data (all of it)."""
        view = self.plot_item.vb
        if view.state["autoRange"][view.XAxis]:
            return None, None
        x_min, x_max = view.viewRange()[0]
        return float(x_min), float(x_max)

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
        dark = QColor(palette.background).lightness() < 128
        kl_color, floor_color = KL_COLORS[dark], FLOOR_COLORS[dark]
        self.kl_curve.setPen(pg.mkPen(kl_color, width=2))
        self.kl_curve.setSymbolBrush(pg.mkBrush(kl_color))
        self.kl_curve.setSymbolPen(pg.mkPen(kl_color))
        self.floor_line.setPen(pg.mkPen(floor_color, width=1.5, style=Qt.PenStyle.DashLine))
        self.floor_line.label.setColor(floor_color)
        self.plot_item.legend.setLabelTextColor(palette.foreground)
