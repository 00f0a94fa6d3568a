"""Two moments of a model side by side on one prompt (a :class:`MomentComparison`).

A table of the candidates of both moments' top lists (p at A, p at B, the change, largest change
first), the KL divergence KL(A ‖ B) of the two next-token distributions, and the prompt as two
rows of token chips coloured by the probability each moment gave each token.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.inference.compare import MomentComparison

from .. import theme
from .token_chips import TokenChips, probability_color, visible_text

KL_TOOLTIP = ("KL(A ‖ B): how surprised, on average, moment B would be by moment A's next-token "
              "prediction beyond A's own uncertainty (nats; 0 = the same prediction).")
_UP, _DOWN = QColor("#2ca02c"), QColor("#d62728")


def format_kl(value: float) -> str:
    """The KL label's text for ``value`` nats."""
    return f"KL(A ‖ B) = {value:.4f} nats"


def _surprise_tooltip(prob: float | None) -> str:
    if prob is None:
        return "the first token: nothing before it to predict it from"
    return f"p = {prob:.4f}   −ln p = {-math.log(max(prob, 1e-300)):.3f} nats"


class MomentCompareView(QWidget):
    """Shows one :class:`MomentComparison` (or a message saying why there is none)."""

    COLUMNS = ("next token", "p at A", "p at B", "change")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.comparison: MomentComparison | None = None
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("The union of both moments' top candidates for the next token, "
                              "largest change first (change = p at B − p at A)")
        self.table.setMinimumWidth(300)
        self.kl_label = QLabel()
        self.kl_label.setToolTip(KL_TOOLTIP)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.chips_a, self.chips_b = TokenChips(), TokenChips()
        self.name_a, self.name_b = QLabel("A"), QLabel("B")
        chips = QGridLayout()
        chips.addWidget(QLabel("surprise of the prompt's tokens (green: expected, red: surprising)"), 0, 0, 1, 2)
        for row, (name, strip) in enumerate(((self.name_a, self.chips_a), (self.name_b, self.chips_b)), start=1):
            chips.addWidget(name, row, 0, Qt.AlignmentFlag.AlignTop)
            chips.addWidget(strip, row, 1)
        chips.setColumnStretch(1, 1)
        right = QVBoxLayout()
        right.addWidget(self.kl_label)
        right.addWidget(self.message_label)
        right.addLayout(chips)
        right.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table, 2)
        layout.addLayout(right, 3)
        self.show_message("")

    def show_message(self, text: str, *, error: bool = False) -> None:
        """No comparison (yet): say why."""
        self.comparison = None
        self.table.setRowCount(0)
        self.kl_label.setText("")
        self.message_label.setText(text)
        self.message_label.setStyleSheet(theme.ERROR_STYLE if error else "")
        self.message_label.setVisible(bool(text))
        self.chips_a.clear()
        self.chips_b.clear()

    def show_comparison(self, comparison: MomentComparison, name_a: str, name_b: str) -> None:
        self.comparison = comparison
        self.message_label.setText("")
        self.message_label.setVisible(False)
        self.kl_label.setText(format_kl(comparison.kl_ab))
        self.table.setRowCount(len(comparison.rows))
        for r, row in enumerate(comparison.rows):
            change = QTableWidgetItem(f"{row.change:+.4f}")
            if abs(row.change) >= 5e-5:
                change.setForeground(_UP if row.change > 0 else _DOWN)
            items = (QTableWidgetItem(repr(visible_text(row.text))), QTableWidgetItem(f"{row.p_a:.4f}"),
                     QTableWidgetItem(f"{row.p_b:.4f}"), change)
            items[0].setToolTip(f"id {row.token_id}")
            for c, item in enumerate(items):
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.name_a.setText(f"A: {name_a}")
        self.name_b.setText(f"B: {name_b}")
        for strip, surprise in ((self.chips_a, comparison.surprise_a), (self.chips_b, comparison.surprise_b)):
            strip.set_tokens([s.token for s in surprise], [probability_color(s.prob) for s in surprise],
                             [_surprise_tooltip(s.prob) for s in surprise])

    def row_values(self) -> list[tuple[str, str, str, str]]:
        """The table's cells as shown, row by row."""
        return [tuple(self.table.item(r, c).text() for c in range(self.table.columnCount()))  # type: ignore[misc]
                for r in range(self.table.rowCount())]
