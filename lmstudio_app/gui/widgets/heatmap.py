"""Matrices painted as coloured cells: one large heatmap with labelled rows and columns, and a
grid of small ones to pick from.

:class:`HeatmapWidget` draws a ``(rows, cols)`` array with a string per row (left) and per column
(top, turned upright so long token strings fit), an optional text in each cell (the logit lens's
top token), a colour bar, and a tooltip per cell; hovering emits ``cell_hovered(row, col)``. Cells
can be masked (the attention above the diagonal, which is zero by construction, is left blank
rather than painted as "0"). :class:`ThumbnailGrid` paints a ``(L, H)`` grid of small matrices
(every layer × head of the attention) and emits ``selected(layer, head)`` when one is clicked.

Both paint one ``QImage`` per matrix scaled without smoothing (not one item per cell), so a
64 × 64 map of every head redraws in a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QHelpEvent,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
)
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

COLORMAP = "viridis"
_LUT_SIZE = 256
_MAX_LABEL_CHARS = 14


def colour_table(name: str = COLORMAP) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA of a perceptually uniform colour map (pyqtgraph's)."""
    lut = pg.colormap.get(name).getLookupTable(0.0, 1.0, _LUT_SIZE, alpha=True)
    return np.ascontiguousarray(lut, dtype=np.uint8)


_TABLES: dict[str, np.ndarray] = {}


def _table(name: str) -> np.ndarray:
    if name not in _TABLES:
        _TABLES[name] = colour_table(name)
    return _TABLES[name]


def to_rgba(values: np.ndarray, vmin: float, vmax: float, mask: np.ndarray | None = None,
            cmap: str = COLORMAP) -> np.ndarray:
    """``values`` ``(R, C)`` → ``(R, C, 4)`` uint8 through the colour map; masked or NaN cells transparent."""
    span = vmax - vmin if vmax > vmin else 1.0
    scaled = np.nan_to_num((np.asarray(values, dtype=np.float64) - vmin) / span, nan=0.0)
    index = np.clip((scaled * (_LUT_SIZE - 1)).round(), 0, _LUT_SIZE - 1).astype(np.intp)
    rgba = _table(cmap)[index]
    hidden = np.isnan(np.asarray(values, dtype=np.float64))
    if mask is not None:
        hidden |= mask
    rgba[hidden] = 0
    return np.ascontiguousarray(rgba)


def rgba_image(rgba: np.ndarray) -> QImage:
    """A QImage owning a copy of ``rgba`` ``(R, C, 4)`` uint8."""
    rows, cols = rgba.shape[:2]
    image = QImage(rgba.tobytes(), cols, rows, cols * 4, QImage.Format.Format_RGBA8888)
    return image.copy()  # detach from the temporary bytes


def short_label(text: str, limit: int = _MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class HeatmapWidget(QWidget):
    """A labelled heatmap (see the module docstring)."""

    cell_hovered = Signal(int, int)  # (row, col); (-1, -1) when the mouse leaves the cells
    cell_clicked = Signal(int, int)

    _PAD = 6
    _BAR_W = 12

    def __init__(self, parent: QWidget | None = None, *, square: bool = True) -> None:
        super().__init__(parent)
        self.square = square  # attention: square cells; the lens: cells as wide as their text
        self._values = np.zeros((0, 0), dtype=np.float32)
        self._mask: np.ndarray | None = None
        self._rows: list[str] = []
        self._cols: list[str] = []
        self._cell_text: list[list[str]] | None = None
        self._tooltip: Callable[[int, int], str] | None = None
        self._image: QImage | None = None
        self._vmin, self._vmax = 0.0, 1.0
        self._bar_label = ""
        self._message = ""
        self._hover: tuple[int, int] | None = None
        self._label_font = QFont(self.font())
        self._label_font.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.85))
        self._cell_font = QFont(self.font())
        self._cell_font.setPointSizeF(max(6.5, self.font().pointSizeF() * 0.8))
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 120)

    # ----- content --------------------------------------------------------------------------

    def set_data(self, values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 vmin: float = 0.0, vmax: float = 1.0, mask: np.ndarray | None = None,
                 cell_text: Sequence[Sequence[str]] | None = None,
                 tooltip: Callable[[int, int], str] | None = None, bar_label: str = "") -> None:
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)):
            raise ValueError(f"heatmap: values {values.shape} do not match {len(row_labels)} × {len(col_labels)} labels")
        self._values, self._mask = values, mask
        self._rows, self._cols = list(row_labels), list(col_labels)
        self._cell_text = [list(r) for r in cell_text] if cell_text is not None else None
        self._tooltip, self._vmin, self._vmax, self._bar_label = tooltip, vmin, vmax, bar_label
        self._image = rgba_image(to_rgba(values, vmin, vmax, mask)) if values.size else None
        self._message = ""
        self.update()

    def set_message(self, text: str) -> None:
        """Show ``text`` instead of a matrix (no model, a model that does not expose this)."""
        self._message = text
        self._values = np.zeros((0, 0), dtype=np.float32)
        self._rows, self._cols, self._image, self._cell_text = [], [], None, None
        self.update()

    def message(self) -> str:
        return self._message

    def values(self) -> np.ndarray:
        return self._values

    def row_labels(self) -> list[str]:
        return list(self._rows)

    def col_labels(self) -> list[str]:
        return list(self._cols)

    def cell_text(self, row: int, col: int) -> str:
        return self._cell_text[row][col] if self._cell_text is not None else ""

    def tooltip_text(self, row: int, col: int) -> str:
        if self._tooltip is not None:
            return self._tooltip(row, col)
        return f"{self._rows[row]} · {self._cols[col]}: {self._values[row, col]:.3f}"

    # ----- geometry ---------------------------------------------------------------------------

    def _margins(self) -> tuple[int, int]:
        fm = QFontMetrics(self._label_font)
        left = max((fm.horizontalAdvance(short_label(t)) for t in self._rows), default=0) + self._PAD * 2
        top = max((fm.horizontalAdvance(short_label(t)) for t in self._cols), default=0) + self._PAD * 2
        return left, top

    def cells_rect(self) -> QRect:
        """Where the cells are drawn (widget coordinates)."""
        rows, cols = self._values.shape
        if rows == 0 or cols == 0:
            return QRect()
        left, top = self._margins()
        right = self._BAR_W + QFontMetrics(self._label_font).horizontalAdvance("0.00") + self._PAD * 3
        width, height = max(1, self.width() - left - right), max(1, self.height() - top - self._PAD)
        cell_w, cell_h = width / cols, height / rows
        if self.square:
            cell_w = cell_h = min(cell_w, cell_h)
        return QRect(left, top, max(1, int(cell_w * cols)), max(1, int(cell_h * rows)))

    def cell_at(self, pos: QPoint) -> tuple[int, int] | None:
        rect = self.cells_rect()
        if rect.isNull() or not rect.contains(pos):
            return None
        rows, cols = self._values.shape
        row = min(rows - 1, int((pos.y() - rect.top()) * rows / rect.height()))
        col = min(cols - 1, int((pos.x() - rect.left()) * cols / rect.width()))
        return row, col

    def cell_center(self, row: int, col: int) -> QPoint:
        rect = self.cells_rect()
        rows, cols = self._values.shape
        return QPoint(int(rect.left() + (col + 0.5) * rect.width() / cols),
                      int(rect.top() + (row + 0.5) * rect.height() / rows))

    def sizeHint(self) -> QSize:
        return QSize(520, 420)

    # ----- painting -----------------------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        palette = self.palette()
        text_color = palette.text().color()
        if self._image is None:
            painter.setPen(palette.placeholderText().color())
            painter.drawText(self.rect().adjusted(12, 12, -12, -12),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._message)
            return
        rect = self.cells_rect()
        rows, cols = self._values.shape
        cell_w, cell_h = rect.width() / cols, rect.height() / rows
        painter.drawImage(QRectF(rect), self._image)  # no smoothing: each cell stays a sharp square
        fm = QFontMetrics(self._label_font)
        painter.setFont(self._label_font)
        painter.setPen(text_color)
        row_every = max(1, int(np.ceil(fm.height() / max(cell_h, 1e-6))))
        for r in range(0, rows, row_every):
            y = rect.top() + r * cell_h
            box = QRect(0, int(y), rect.left() - self._PAD, max(int(cell_h * row_every), fm.height()))
            painter.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop if row_every > 1
                             else Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, short_label(self._rows[r]))
        col_every = max(1, int(np.ceil(fm.height() / max(cell_w, 1e-6))))
        for c in range(0, cols, col_every):
            x = rect.left() + (c + 0.5) * cell_w
            painter.save()
            painter.translate(x + fm.ascent() / 2 - 1, rect.top() - self._PAD)
            painter.rotate(-90)
            painter.drawText(0, 0, short_label(self._cols[c]))
            painter.restore()
        if self._cell_text is not None:
            self._paint_cell_text(painter, rect, cell_w, cell_h)
        if self._hover is not None:
            r, c = self._hover
            painter.setPen(QPen(palette.highlight().color(), 2))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(rect.left() + c * cell_w, rect.top() + r * cell_h, cell_w, cell_h))
        self._paint_bar(painter, rect, fm, text_color)

    def _paint_cell_text(self, painter: QPainter, rect: QRect, cell_w: float, cell_h: float) -> None:
        fm = QFontMetrics(self._cell_font)
        if cell_h < fm.height() * 0.9:
            return  # too small to read: the tooltip says it
        painter.setFont(self._cell_font)
        rgba = to_rgba(self._values, self._vmin, self._vmax, self._mask)
        assert self._cell_text is not None
        for r, row in enumerate(self._cell_text):
            for c, text in enumerate(row):
                if not text:
                    continue
                red, green, blue = (int(v) for v in rgba[r, c, :3])
                light = 0.299 * red + 0.587 * green + 0.114 * blue > 140  # dark text on a light cell
                painter.setPen(QColor("#111111") if light else QColor("#f4f4f4"))
                box = QRectF(rect.left() + c * cell_w + 1, rect.top() + r * cell_h, cell_w - 2, cell_h)
                # As many lines of a multi-line cell as fit (the first is the most important), each elided.
                lines = text.split("\n")[: max(1, int(cell_h // fm.height()))]
                painter.drawText(box, Qt.AlignmentFlag.AlignCenter, "\n".join(
                    fm.elidedText(line, Qt.TextElideMode.ElideRight, int(cell_w - 2)) for line in lines))

    def _paint_bar(self, painter: QPainter, rect: QRect, fm: QFontMetrics, text_color: QColor) -> None:
        x = rect.right() + self._PAD * 2
        steps = 64
        gradient = to_rgba(np.linspace(self._vmax, self._vmin, steps)[:, None], self._vmin, self._vmax)
        painter.drawImage(QRectF(x, rect.top(), self._BAR_W, rect.height()), rgba_image(gradient))
        painter.setPen(text_color)
        painter.drawText(x + self._BAR_W + 3, rect.top() + fm.ascent(), f"{self._vmax:.2g}")
        painter.drawText(x + self._BAR_W + 3, rect.bottom(), f"{self._vmin:.2g}")
        if self._bar_label:
            painter.save()
            painter.translate(x + self._BAR_W + fm.ascent() + 4, rect.center().y() + fm.horizontalAdvance(self._bar_label) / 2)
            painter.rotate(-90)
            painter.drawText(0, 0, self._bar_label)
            painter.restore()

    # ----- input ---------------------------------------------------------------------------------

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        cell = self.cell_at(event.position().toPoint())
        if cell != self._hover:
            self._hover = cell
            self.cell_hovered.emit(*(cell if cell is not None else (-1, -1)))
            self.update()
        super().mouseMoveEvent(event)

    def leaveEvent(self, event: QEvent) -> None:
        if self._hover is not None:
            self._hover = None
            self.cell_hovered.emit(-1, -1)
            self.update()
        super().leaveEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        cell = self.cell_at(event.position().toPoint())
        if cell is not None and event.button() == Qt.MouseButton.LeftButton:
            self.cell_clicked.emit(*cell)
        super().mousePressEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            cell = self.cell_at(event.pos())
            if cell is None:
                QToolTip.hideText()
                event.ignore()
            else:
                QToolTip.showText(event.globalPos(), self.tooltip_text(*cell), self)
            return True
        return super().event(event)


class ThumbnailGrid(QWidget):
    """Every layer × head as a small map; click one to select it (``selected(layer, head)``)."""

    selected = Signal(int, int)

    _GAP = 6

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._images: list[list[QImage]] = []
        self._row_names: list[str] = []
        self._selection: tuple[int, int] = (0, 0)
        self._thumb = 56
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.setToolTip("Every layer × head: click one to show it large")

    def set_maps(self, weights: np.ndarray, row_names: Sequence[str], mask: np.ndarray | None = None) -> None:
        """``weights`` ``(L, H, T, T)``; each map coloured on 0..1 like the large one."""
        self._images = [[rgba_image(to_rgba(weights[layer, head], 0.0, 1.0, mask)) for head in range(weights.shape[1])]
                        for layer in range(weights.shape[0])]
        self._row_names = list(row_names)
        layer, head = self._selection
        if not (layer < len(self._images) and self._images and head < len(self._images[0])):
            self._selection = (0, 0)
        self.updateGeometry()
        self.update()

    def clear(self) -> None:
        self._images, self._row_names = [], []
        self.update()

    def shape(self) -> tuple[int, int]:
        return (len(self._images), len(self._images[0]) if self._images else 0)

    def selection(self) -> tuple[int, int]:
        return self._selection

    def select(self, layer: int, head: int) -> None:
        if (layer, head) != self._selection:
            self._selection = (layer, head)
            self.update()
            self.selected.emit(layer, head)

    def _label_height(self) -> int:
        return QFontMetrics(self.font()).height()

    def thumb_rect(self, layer: int, head: int) -> QRect:
        """Where the thumbnail of ``layer``, ``head`` is drawn."""
        label = self._label_height()
        top = self._GAP + label + layer * (self._thumb + self._GAP + 2 * label)  # name above, "head n" below
        return QRect(self._GAP + head * (self._thumb + self._GAP), top, self._thumb, self._thumb)

    def _fit(self) -> None:
        layers, heads = self.shape()
        if not layers:
            return
        by_width = (self.width() - self._GAP) // max(heads, 1) - self._GAP
        by_height = (self.height() - self._GAP) // layers - self._GAP - 2 * self._label_height()
        self._thumb = int(max(28, min(110, by_width, by_height if by_height > 28 else by_width)))

    def sizeHint(self) -> QSize:
        layers, heads = self.shape()
        step = 64 + self._GAP
        return QSize(max(120, heads * step + self._GAP), max(80, layers * (step + 2 * self._label_height())))

    def minimumSizeHint(self) -> QSize:
        """Room for the smallest thumbnails: a deep model scrolls rather than shrinking them to dots."""
        layers, heads = self.shape()
        label = self._label_height()
        return QSize(max(100, heads * (28 + self._GAP) + self._GAP),
                     max(60, layers * (28 + self._GAP + 2 * label) + self._GAP))

    def paintEvent(self, event: QPaintEvent) -> None:
        self._fit()
        painter = QPainter(self)
        palette = self.palette()
        fm = QFontMetrics(self.font())
        for layer, row in enumerate(self._images):
            first = self.thumb_rect(layer, 0)
            painter.setPen(palette.text().color())
            name = self._row_names[layer] if layer < len(self._row_names) else f"layer {layer + 1}"
            painter.drawText(first.left(), first.top() - 3, name)
            for head, image in enumerate(row):
                rect = self.thumb_rect(layer, head)
                painter.fillRect(rect, palette.base())
                painter.drawImage(QRectF(rect), image)
                chosen = (layer, head) == self._selection
                painter.setPen(QPen(palette.highlight().color() if chosen else palette.mid().color(), 3 if chosen else 1))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRect(rect.adjusted(-1, -1, 0, 0))
                painter.setPen(palette.text().color())
                painter.drawText(QRect(rect.left(), rect.bottom() + 1, rect.width(), fm.height()),
                                 Qt.AlignmentFlag.AlignHCenter, f"head {head + 1}" if rect.width() >= fm.horizontalAdvance("head 10") else f"h{head + 1}")

    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position().toPoint()
        for layer, row in enumerate(self._images):
            for head in range(len(row)):
                if self.thumb_rect(layer, head).adjusted(-2, -2, 2, 2).contains(pos):
                    self.select(layer, head)
                    return
        super().mousePressEvent(event)
