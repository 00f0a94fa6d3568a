"""A stretch of text as it reads, each token's background coloured by the model's loss on it.

Tokens flow like text (a newline token ends the line, long lines wrap between tokens), so the
passage stays readable while showing where the model was surprised: green where it expected the
token, red where it did not (the same log-probability scale as the prompt's chips). Hovering a
token shows its probability, its rank among the model's guesses and its loss. The first token has
no loss (nothing comes before it) and is drawn uncoloured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt
from PySide6.QtGui import QFontMetrics, QHelpEvent, QPainter, QPaintEvent, QResizeEvent
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from .token_chips import probability_color


@dataclass(frozen=True)
class ScoredPiece:
    """One token as drawn: its text, and (None for the first token) p, rank and loss."""

    text: str
    p: float | None = None
    rank: int | None = None
    loss: float | None = None


def _shown(text: str) -> str:
    """What is drawn for a token: tabs as spaces, other control characters (but newlines) visible."""
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    ")
        elif ch != "\n" and (ord(ch) < 32 or ord(ch) == 127):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


class TextLossView(QWidget):
    """Paints :class:`ScoredPiece` s as flowing text (see the module docstring)."""

    _MARGIN = 6
    _LINE_GAP = 3

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pieces: list[ScoredPiece] = []
        self._rects: list[list[QRect]] = []  # per piece: one rect per line it covers
        self._layout_width = -1
        self._placeholder = ""
        sp = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)

    def set_pieces(self, pieces: Sequence[ScoredPiece]) -> None:
        self._pieces = list(pieces)
        self._relayout()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self._pieces = []
        self._relayout()

    def placeholder(self) -> str:
        return self._placeholder if not self._pieces else ""

    def pieces(self) -> list[ScoredPiece]:
        return list(self._pieces)

    def tooltip_text(self, index: int) -> str:
        piece = self._pieces[index]
        head = f"token {index}: {piece.text!r}"
        if piece.p is None:
            return f"{head}\nthe first token: nothing before it to predict it from"
        return f"{head}\np = {piece.p:.4f} · rank {piece.rank} · loss {piece.loss:.3f} nats"

    def piece_rect(self, index: int) -> QRect:
        self._ensure_layout()
        return self._rects[index][0] if index < len(self._rects) and self._rects[index] else QRect()

    def index_at(self, pos: QPoint) -> int | None:
        self._ensure_layout()
        for i, rects in enumerate(self._rects):
            if any(r.contains(pos) for r in rects):
                return i
        return None

    # ----- layout -------------------------------------------------------------------------------

    def _compute(self, width: int) -> list[list[QRect]]:
        fm = QFontMetrics(self.font())
        line_h = fm.height() + self._LINE_GAP
        x, y = self._MARGIN, self._MARGIN
        right = max(width - self._MARGIN, self._MARGIN + 40)
        out: list[list[QRect]] = []
        for piece in self._pieces:
            rects: list[QRect] = []
            parts = _shown(piece.text).split("\n")
            for n, part in enumerate(parts):
                if n > 0:  # the newline itself: a small mark at the end of the line, then a new line
                    rects.append(QRect(x, y, fm.horizontalAdvance(" "), fm.height()))
                    x, y = self._MARGIN, y + line_h
                if not part:
                    continue
                w = fm.horizontalAdvance(part)
                if x + w > right and x > self._MARGIN:
                    x, y = self._MARGIN, y + line_h
                rects.append(QRect(x, y, max(w, 2), fm.height()))
                x += w
            out.append(rects or [QRect(x, y, 2, fm.height())])
        return out

    def _ensure_layout(self) -> None:
        if self._layout_width != self.width():
            self._rects = self._compute(self.width())
            self._layout_width = self.width()

    def _relayout(self) -> None:
        self._layout_width = -1
        self.updateGeometry()
        self.update()

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        rects = self._compute(max(width, 80))
        bottom = max((r.bottom() for piece in rects for r in piece), default=0)
        return max(bottom + self._MARGIN + 1, QFontMetrics(self.font()).height() * 3)

    def sizeHint(self) -> QSize:
        width = max(self.width(), 400)
        return QSize(width, self.heightForWidth(width))

    def resizeEvent(self, event: QResizeEvent) -> None:
        self._layout_width = -1
        super().resizeEvent(event)

    # ----- painting and input -----------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        self._ensure_layout()
        painter = QPainter(self)
        palette = self.palette()
        if not self._pieces:
            painter.setPen(palette.placeholderText().color())
            painter.drawText(self.rect().adjusted(self._MARGIN, self._MARGIN, -self._MARGIN, 0),
                             Qt.TextFlag.TextWordWrap, self._placeholder)
            return
        fm = QFontMetrics(self.font())
        painter.setPen(palette.text().color())
        for piece, rects in zip(self._pieces, self._rects):
            color = probability_color(piece.p)
            parts = [p for p in _shown(piece.text).split("\n")]
            texts = [t for n, part in enumerate(parts) for t in ((["⏎"] if n > 0 else []) + ([part] if part else []))]
            for rect, text in zip(rects, texts):
                if not rect.intersects(event.rect()):
                    continue
                if color is not None:
                    painter.fillRect(rect, color)
                painter.setPen(palette.placeholderText().color() if text == "⏎" else palette.text().color())
                painter.drawText(rect.left(), rect.top() + fm.ascent(), text if text != "⏎" else "⏎")

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            index = self.index_at(event.pos())
            if index is None:
                QToolTip.hideText()
                event.ignore()
            else:
                QToolTip.showText(event.globalPos(), self.tooltip_text(index), self)
            return True
        return super().event(event)
