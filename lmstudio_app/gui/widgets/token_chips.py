"""Text shown as tokens: one coloured chip per token with its ID underneath.

This is the "The cat sat on the mat" → ``[464, 3797, ...]`` picture. Chips are painted (not one
widget each) so a prompt of hundreds of tokens stays cheap to lay out and repaint while the
predictions refresh during training. Whitespace is made visible ('·' space, '⏎' newline,
'→' tab) because where a tokenizer puts spaces is much of what there is to learn about it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PySide6.QtCore import QEvent, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QHelpEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
)
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from lmstudio_app.tokenizer import Token

_VISIBLE_WHITESPACE = {" ": "·", "\n": "⏎", "\t": "→", "\r": "␍"}

# Alternating pastels drawn translucently over the palette's base colour, so the same hues read
# as light tints in a light theme and as muted tints in a dark one, with the palette's text colour.
_PASTELS = ("#7fb3ff", "#ffb36b", "#8fdc8f", "#e39bd9", "#f2d56b", "#7fd9d6")
_CHIP_ALPHA = 90
UNK_LABEL = "<unk>"  # what a chip of the tokenizer's unknown token says (its text is the input it replaced)
_MAX_CHIPS = 3000  # beyond this the strip ends with a "… N more tokens" note; the text is still there


def visible_text(text: str) -> str:
    """A token's text with whitespace and control characters made visible."""
    out = []
    for ch in text:
        if ch in _VISIBLE_WHITESPACE:
            out.append(_VISIBLE_WHITESPACE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def is_word_level(tokenizer: object) -> bool:
    """Whether a tokenizer's unknown pieces are whole words (a word tokenizer, also when a run's
    tokenizer.json was loaded back as a "file" one)."""
    if getattr(tokenizer, "kind", "") == "word":
        return True
    hf = getattr(tokenizer, "hf", None)
    return hf is not None and type(hf.model).__name__ == "WordLevel"


def probability_color(prob: float | None) -> QColor | None:
    """Green when the model expected the token (prob near 1), red when it did not.

    The hue follows log-probability (1 → green, 1e-4 or less → red) because most tokens of an
    untrained model sit at 1/vocab, where a linear scale would paint everything red.
    """
    if prob is None:
        return None

    surprise = min(max(-math.log10(max(prob, 1e-12)) / 4.0, 0.0), 1.0)  # 0 = expected, 1 = surprising
    hue = int(120 * (1.0 - surprise))  # 120 = green, 0 = red
    return QColor.fromHsv(hue, 200, 235, 150)


class TokenChips(QWidget):
    """Paints tokens as wrapped chips; click one to select it (``token_clicked(index)``)."""

    token_clicked = Signal(int)

    _PAD_X = 5
    _PAD_Y = 3
    _GAP = 4

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tokens: list[Token] = []
        self._colors: list[QColor | None] = []
        self._tooltips: list[str] = []
        self._selected: int | None = None
        self._rects: list[QRect] = []
        self._layout_width = -1
        self._placeholder = ""
        self._unk_id: int | None = None
        self._id_font = QFont(self.font())
        self._id_font.setPointSizeF(max(6.0, self.font().pointSizeF() * 0.75))
        sp = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        sp.setHeightForWidth(True)
        self.setSizePolicy(sp)
        self.setMouseTracking(False)

    # ----- content ----------------------------------------------------------------------

    def set_tokens(
        self,
        tokens: Sequence[Token],
        colors: Sequence[QColor | None] | None = None,
        tooltips: Sequence[str] | None = None,
    ) -> None:
        """Show ``tokens``; ``colors`` (per token, None = the alternating pastel) and extra
        ``tooltips`` lines are optional. Keeps the selection if it is still in range."""
        self._tokens = list(tokens)
        self.set_colors(colors, tooltips, _update=False)
        if self._selected is not None and self._selected >= len(self._tokens):
            self._selected = None
        self._relayout()

    def set_colors(
        self,
        colors: Sequence[QColor | None] | None,
        tooltips: Sequence[str] | None = None,
        _update: bool = True,
    ) -> None:
        """Recolour the current tokens (e.g. by surprise) without changing them."""
        n = len(self._tokens)
        self._colors = list(colors)[:n] + [None] * max(0, n - len(colors)) if colors else [None] * n
        self._tooltips = list(tooltips)[:n] + [""] * max(0, n - len(tooltips)) if tooltips else [""] * n
        if _update:
            self.update()

    def set_unknown_id(self, token_id: int | None) -> None:
        """The tokenizer's unknown token: its chips say ``<unk>`` (an ID 0 chip reading "zebra"
        would claim the tokenizer knows the word)."""
        if token_id != self._unk_id:
            self._unk_id = token_id
            self._relayout()

    def set_placeholder(self, text: str) -> None:
        """Shown in grey when there are no tokens (e.g. "Build a tokenizer first")."""
        self._placeholder = text
        self.update()

    def clear(self) -> None:
        self.set_tokens([])

    def tokens(self) -> list[Token]:
        return list(self._tokens)

    def chip_text(self, index: int) -> str:
        """The label drawn on chip ``index`` (whitespace made visible; ``<unk>`` for the unknown token)."""
        tok = self._tokens[index]
        return UNK_LABEL if self._unk_id is not None and tok.id == self._unk_id else visible_text(tok.text)

    def chip_color(self, index: int) -> QColor:
        """The fill of chip ``index``: its colour-map entry or the alternating pastel."""
        color = self._colors[index] if index < len(self._colors) else None
        if color is not None:
            return QColor(color)
        pastel = QColor(_PASTELS[index % len(_PASTELS)])
        pastel.setAlpha(_CHIP_ALPHA)
        return pastel

    def chip_tooltip(self, index: int) -> str:
        tok = self._tokens[index]
        lines = [f"token {index}: {visible_text(tok.text)!r}", f"id {tok.id}", f"characters {tok.start}–{tok.end}"]
        if self._unk_id is not None and tok.id == self._unk_id:
            lines.insert(1, f"unknown to the tokenizer: {UNK_LABEL}")
        extra = self._tooltips[index] if index < len(self._tooltips) else ""
        return "\n".join(lines + ([extra] if extra else []))

    # ----- selection --------------------------------------------------------------------

    def selected(self) -> int | None:
        return self._selected

    def set_selected(self, index: int | None) -> None:
        """Outline chip ``index`` (None clears); does not emit ``token_clicked``."""
        if index is not None and not 0 <= index < len(self._tokens):
            index = None
        if index != self._selected:
            self._selected = index
            self.update()

    def chip_rect(self, index: int) -> QRect:
        """Where chip ``index`` is drawn (widget coordinates), e.g. to click it in a test."""
        self._ensure_layout()
        return QRect(self._rects[index])

    def index_at(self, pos: QPoint) -> int | None:
        self._ensure_layout()
        for i, rect in enumerate(self._rects):
            if rect.contains(pos):
                return i
        return None

    # ----- layout -----------------------------------------------------------------------

    def _chip_size(self, index: int, fm: QFontMetrics, id_fm: QFontMetrics) -> QSize:
        tok = self._tokens[index]
        width = max(fm.horizontalAdvance(self.chip_text(index)), id_fm.horizontalAdvance(str(tok.id)))
        return QSize(width + 2 * self._PAD_X, fm.height() + id_fm.height() + 2 * self._PAD_Y)

    def _compute_rects(self, width: int) -> list[QRect]:
        fm, id_fm = QFontMetrics(self.font()), QFontMetrics(self._id_font)
        rects: list[QRect] = []
        x = y = self._GAP
        row_height = 0
        for i in range(min(len(self._tokens), _MAX_CHIPS)):
            size = self._chip_size(i, fm, id_fm)
            if x > self._GAP and x + size.width() + self._GAP > width:
                x, y = self._GAP, y + row_height + self._GAP
                row_height = 0
            rects.append(QRect(QPoint(x, y), size))
            x += size.width() + self._GAP
            row_height = max(row_height, size.height())
        return rects

    def _ensure_layout(self) -> None:
        if self._layout_width != self.width():
            self._rects = self._compute_rects(max(self.width(), 60))
            self._layout_width = self.width()

    def _relayout(self) -> None:
        self._layout_width = -1
        self.updateGeometry()
        self.update()

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        rects = self._compute_rects(max(width, 60))
        extra = QFontMetrics(self.font()).height() + self._GAP if len(self._tokens) > _MAX_CHIPS else 0
        if not rects:
            return QFontMetrics(self.font()).height() * 2 + 2 * self._GAP
        return max(r.bottom() for r in rects) + self._GAP + 1 + extra

    def sizeHint(self) -> QSize:
        width = max(self.width(), 300)
        return QSize(width, self.heightForWidth(width))

    def minimumSizeHint(self) -> QSize:
        return QSize(60, QFontMetrics(self.font()).height() * 2 + 2 * self._GAP)

    def resizeEvent(self, event: QResizeEvent) -> None:
        self._layout_width = -1
        super().resizeEvent(event)

    # ----- painting and input -------------------------------------------------------------

    def paintEvent(self, event: QPaintEvent) -> None:
        self._ensure_layout()
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        if not self._tokens:
            painter.setPen(palette.placeholderText().color())
            painter.drawText(self.rect().adjusted(self._GAP, self._GAP, 0, 0), self._placeholder)
            return
        fm = QFontMetrics(self.font())
        text_color = palette.text().color()
        id_color = QColor(text_color)
        id_color.setAlpha(170)
        for i, rect in enumerate(self._rects):
            if not rect.intersects(event.rect()):
                continue
            selected = i == self._selected
            border = palette.highlight().color() if selected else QColor(text_color.red(), text_color.green(),
                                                                        text_color.blue(), 50)
            painter.setPen(QPen(border, 2.0 if selected else 1.0))
            painter.setBrush(self.chip_color(i))
            painter.drawRoundedRect(rect.adjusted(0, 0, -1, -1), 4, 4)
            text_rect = QRect(rect.left(), rect.top() + self._PAD_Y, rect.width(), fm.height())
            painter.setPen(text_color)
            painter.setFont(self.font())
            painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter, self.chip_text(i))
            id_rect = QRect(rect.left(), text_rect.bottom(), rect.width(), rect.bottom() - text_rect.bottom())
            painter.setPen(id_color)
            painter.setFont(self._id_font)
            painter.drawText(id_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                             str(self._tokens[i].id))
        if len(self._tokens) > _MAX_CHIPS and self._rects:
            painter.setPen(palette.placeholderText().color())
            painter.setFont(self.font())
            y = max(r.bottom() for r in self._rects) + self._GAP + fm.ascent()
            painter.drawText(self._GAP, y, f"… {len(self._tokens) - _MAX_CHIPS} more tokens")

    def mousePressEvent(self, event: QMouseEvent) -> None:
        index = self.index_at(event.position().toPoint())
        if index is not None and event.button() == Qt.MouseButton.LeftButton:
            self.set_selected(index)
            self.token_clicked.emit(index)
        super().mousePressEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            index = self.index_at(event.pos())
            if index is None:
                QToolTip.hideText()
                event.ignore()
            else:
                QToolTip.showText(event.globalPos(), self.chip_tooltip(index), self, self.chip_rect(index))
            return True
        return super().event(event)
