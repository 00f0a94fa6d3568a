"""The token embeddings as a 2-D scatter: one point per token, labelled, coloured by how often the
token occurs in the corpus; click a point to pick that token (``point_clicked(index)``).

The positions come aligned with the previous map (the core's ``EmbeddingProjector``), and the view
keeps its range between updates (it only grows when points leave it), so while training the
points drift instead of the whole picture jumping. Only the :data:`MAX_LABELS` most frequent
tokens (and the picked one and its neighbours) carry a label: thousands of labels are unreadable
and slow to draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QPointF, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QVBoxLayout, QWidget

from .. import theme
from .heatmap import short_label, to_rgba

MAX_LABELS = 120  # labelled points (the most frequent tokens)
MAX_POINTS = 4000  # drawn points; a larger vocabulary shows its most frequent tokens
_CMAP = "plasma"
_SHADES = 64
_BRUSHES: list[QBrush] = []


def _brushes() -> list[QBrush]:
    """One brush per shade of the colour map, made once (not one per point per update)."""
    if not _BRUSHES:
        rgba = to_rgba(np.linspace(0.0, 1.0, _SHADES)[None, :], 0.0, 1.0, cmap=_CMAP)[0]
        _BRUSHES.extend(pg.mkBrush(QColor(int(r), int(g), int(b), 210)) for r, g, b, _a in rgba)
    return _BRUSHES


class EmbeddingMapView(QWidget):
    """Scatter of 2-D token positions (see the module docstring)."""

    point_clicked = Signal(int)  # index into the labels given to set_points

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        palette = theme.plot_palette()
        self.plot = pg.PlotWidget(background=palette.background)
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=True, y=True, alpha=palette.grid_alpha)
        self.plot.hideButtons()
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).enableAutoSIPrefix(False)  # "(x0.001)" says nothing useful here
        self.scatter = pg.ScatterPlotItem(size=9, pxMode=True, hoverable=True, tip=self._tip)
        self.scatter.sigClicked.connect(self._on_clicked)
        self.ring = pg.ScatterPlotItem(size=16, pxMode=True, brush=None, pen=pg.mkPen("#e8443a", width=2.5))
        self.near = pg.ScatterPlotItem(size=13, pxMode=True, brush=None, pen=pg.mkPen("#e8443a", width=1.2))
        self.plot.addItem(self.scatter)
        self.plot.addItem(self.near)
        self.plot.addItem(self.ring)
        self.message_item = pg.TextItem("", anchor=(0.5, 0.5), color=palette.foreground)
        self.plot.addItem(self.message_item, ignoreBounds=True)
        self._labels: list[str] = []
        self._shown: np.ndarray = np.zeros(0, dtype=np.int64)  # label indices of the drawn points
        self._xy = np.zeros((0, 2), dtype=np.float32)
        self._text_items: dict[int, pg.TextItem] = {}  # label index -> its item
        self._selected: int | None = None
        self._neighbours: list[int] = []
        self._labelled: set[int] = set()
        self._fresh_axes = True
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    # ----- content -------------------------------------------------------------------------------

    def reset_axes(self) -> None:
        """Fit the view to the next map (a new model: its positions have nothing to do with the last)."""
        self._fresh_axes = True

    def set_points(self, xy: np.ndarray, labels: Sequence[str], counts: np.ndarray | None,
                   axis_names: tuple[str, str] = ("PC 1", "PC 2")) -> None:
        self.message_item.setText("")
        self._labels = list(labels)
        xy = np.asarray(xy, dtype=np.float32)
        order = np.argsort(-counts, kind="stable") if counts is not None else np.arange(len(labels))
        self._shown = np.asarray(order[:MAX_POINTS], dtype=np.int64)
        self._xy = xy
        shown_xy = xy[self._shown]
        if counts is not None and len(counts):
            heat = np.log1p(np.asarray(counts, dtype=np.float64)[self._shown])
            shade = np.clip((heat / max(float(heat.max()), 1e-9) * (_SHADES - 1)).round(), 0, _SHADES - 1)
            table = _brushes()
            brushes = [table[int(i)] for i in shade]
        else:
            brushes = [pg.mkBrush(QColor(31, 119, 180, 200))] * len(self._shown)
        self.scatter.setData(x=shown_xy[:, 0], y=shown_xy[:, 1], data=self._shown, brush=brushes,
                             pen=pg.mkPen(0, 0, 0, 60))
        self.plot.setLabel("bottom", axis_names[0])
        self.plot.setLabel("left", axis_names[1])
        self._labelled = set(int(i) for i in self._shown[:MAX_LABELS])
        self._redraw_labels()
        self._keep_axes(shown_xy)

    def set_message(self, text: str) -> None:
        self.scatter.clear()
        self.ring.clear()
        self.near.clear()
        for item in self._text_items.values():
            self.plot.removeItem(item)
        self._text_items = {}
        self._labels, self._xy, self._shown = [], np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        self._selected, self._neighbours, self._labelled = None, [], set()
        view = self.plot.getViewBox().viewRange()
        self.message_item.setPos((view[0][0] + view[0][1]) / 2, (view[1][0] + view[1][1]) / 2)
        self.message_item.setText(text)

    def message(self) -> str:
        return self.message_item.textItem.toPlainText()

    def set_selection(self, index: int | None, neighbours: Sequence[int] = ()) -> None:
        """Ring the picked token and its neighbours (label indices), with labels."""
        self._selected, self._neighbours = index, list(neighbours)
        if index is None or index >= len(self._xy):
            self.ring.clear()
            self.near.clear()
        else:
            self.ring.setData(x=[self._xy[index, 0]], y=[self._xy[index, 1]])
            near = [i for i in self._neighbours if i < len(self._xy)]
            self.near.setData(x=self._xy[near, 0], y=self._xy[near, 1])
        self._redraw_labels()

    def labels(self) -> list[str]:
        return list(self._labels)

    def positions(self) -> np.ndarray:
        return self._xy.copy()

    def scene_pos(self, index: int) -> QPoint:
        """Where point ``index`` is drawn, in the plot's viewport coordinates (for tests and tours)."""
        scene = self.plot.getViewBox().mapViewToScene(QPointF(float(self._xy[index, 0]), float(self._xy[index, 1])))
        return self.plot.mapFromScene(scene)

    # ----- inner workings ----------------------------------------------------------------------

    def _redraw_labels(self) -> None:
        """Place the labels; items are reused (made and removed only when the labelled set changes),
        since re-creating a hundred text items a second while training costs the GUI thread."""
        wanted = self._labelled | set(self._neighbours)
        if self._selected is not None:
            wanted.add(self._selected)
        wanted = {i for i in wanted if i < len(self._xy)}
        for index in [i for i in self._text_items if i not in wanted]:
            self.plot.removeItem(self._text_items.pop(index))
        foreground = theme.plot_palette().foreground
        for index in sorted(wanted):
            picked = index == self._selected or index in self._neighbours
            item = self._text_items.get(index)
            if item is None:
                item = self._text_items[index] = pg.TextItem(anchor=(0, 1))
                self.plot.addItem(item, ignoreBounds=True)
            text = short_label(self._labels[index], 10)
            if item.toPlainText() != text:
                item.setText(text)
            item.setColor("#e8443a" if picked else foreground)
            item.setPos(float(self._xy[index, 0]), float(self._xy[index, 1]))

    def _keep_axes(self, xy: np.ndarray) -> None:
        if not len(xy):
            return
        box = self.plot.getViewBox()
        # Python floats: pyqtgraph compares the range with its float64 limits, which overflow a float32
        low, high = xy.min(axis=0).astype(np.float64), xy.max(axis=0).astype(np.float64)
        lo, hi, pad = low.tolist(), high.tolist(), ((high - low) * 0.08 + 1e-6).tolist()
        if self._fresh_axes:
            self._fresh_axes = False
            box.setRange(xRange=(lo[0] - pad[0], hi[0] + pad[0]), yRange=(lo[1] - pad[1], hi[1] + pad[1]), padding=0)
            return
        (x0, x1), (y0, y1) = box.viewRange()
        if lo[0] < x0 or hi[0] > x1 or lo[1] < y0 or hi[1] > y1:  # grow only: the picture holds still
            box.setRange(xRange=(min(x0, lo[0] - pad[0]), max(x1, hi[0] + pad[0])),
                         yRange=(min(y0, lo[1] - pad[1]), max(y1, hi[1] + pad[1])), padding=0)

    def _tip(self, x: float, y: float, data: object) -> str:
        index = int(data) if data is not None else -1
        return repr(self._labels[index]) if 0 <= index < len(self._labels) else ""

    def _on_clicked(self, _item: object, points: Sequence[object], *_args: object) -> None:
        if len(points):
            self.point_clicked.emit(int(points[0].data()))  # type: ignore[attr-defined]
