"""The logit lens: where in the stack the answer forms.

A column per prompt position, a row per point of the residual stream (after the embedding, after
each block). Each cell holds the token the model would predict next if it stopped there (the
stream decoded by the final norm and output layer), coloured by that token's probability, or by
the probability of the token that really comes next in the prompt. The bottom row is the model's
actual prediction: its last cell is the Predictions panel's top candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from lmstudio_app.inference.inspection import Inspector, LogitLens
from lmstudio_app.session import Session

from ..events import AppEvents
from ..widgets.heatmap import HeatmapWidget
from ..widgets.token_chips import visible_text
from .inside_base import Answer, InsideView, Problem

COLOUR_TOP, COLOUR_ACTUAL = "top", "actual"
HELP = ("Each cell: the next token the model would predict at that position if it stopped at that layer. "
        "The bottom row is its real prediction.")


class LensView(InsideView):
    title = "Logit lens"

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(session, events, parent)
        self.lens: LogitLens | None = None
        self._when = ""
        self.colour_combo = QComboBox()
        self.colour_combo.addItem("probability of that top token", COLOUR_TOP)
        self.colour_combo.addItem("probability of the real next token", COLOUR_ACTUAL)
        self.colour_combo.setToolTip("What the colour of each cell shows")
        self.colour_combo.currentIndexChanged.connect(lambda _i: self._draw())
        self.info_label = QLabel()
        self.info_label.setObjectName("lensInfo")
        self.heatmap = HeatmapWidget(square=False)
        self.heatmap.setToolTip(HELP)
        self.hover_label = QLabel(HELP)
        self.hover_label.setWordWrap(True)
        self.heatmap.cell_hovered.connect(
            lambda r, c: self.hover_label.setText(self.cell_text(r, c) if r >= 0 else HELP))
        header = QHBoxLayout()
        header.addWidget(self.info_label, 1)
        header.addWidget(QLabel("Colour:"))
        header.addWidget(self.colour_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.heatmap, 1)
        layout.addWidget(self.hover_label)

    def compute(self, inspector: Inspector, args: Any) -> tuple[Any, Any]:
        return inspector.logit_lens(args), None

    def show_problem(self, problem: Problem) -> None:
        self.lens = None
        self.info_label.setText("")
        self.heatmap.set_message(problem.text)

    def show_answer(self, answer: Answer) -> None:
        self.lens = answer.result
        self._when = self.step_text(answer)
        self._draw()

    def set_colour(self, mode: str) -> None:
        self.colour_combo.setCurrentIndex(self.colour_combo.findData(mode))

    def final_top_tokens(self) -> list[str]:
        """The bottom row: the model's own top prediction after each position."""
        return list(self.lens.top_tokens[-1]) if self.lens is not None else []

    def _draw(self) -> None:
        lens = self.lens
        if lens is None:
            return
        t = len(lens.tokens)
        if self.colour_combo.currentData() == COLOUR_ACTUAL:
            values = np.full((len(lens.layer_names), t), np.nan, dtype=np.float32)
            values[:, : t - 1] = lens.actual_probs
            bar = "p(real next token)"
        else:
            values, bar = lens.top_probs, "p(top token)"
        cols = [f"{visible_text(tok)} [{lens.context_start + i}]" for i, tok in enumerate(lens.tokens)]
        # The top token and its probability in each cell, as the table asks (the colour
        # may show the real next token's probability instead).
        cells = [[f"{visible_text(tok)}\n{float(lens.top_probs[r, c]):.0%}" for c, tok in enumerate(row)]
                 for r, row in enumerate(lens.top_tokens)]
        self.heatmap.set_data(values, lens.layer_names, cols, vmin=0.0, vmax=1.0, cell_text=cells,
                              tooltip=self.cell_text, bar_label=bar)
        last = lens.top_tokens[-1][-1]
        self.info_label.setText(f"{len(lens.layer_names)} points in the stack × {t} positions · {self._when} · "
                                f"after the whole prompt the model predicts <b>{visible_text(last)!r}</b> "
                                f"({float(lens.top_probs[-1, -1]):.1%})")
        self.info_label.setTextFormat(Qt.TextFormat.RichText)

    def cell_text(self, row: int, col: int) -> str:
        lens = self.lens
        if lens is None:
            return ""
        here = visible_text(lens.tokens[col])
        top = visible_text(lens.top_tokens[row][col])
        text = (f"after {here!r} (position {lens.context_start + col}), at {lens.layer_names[row]}: "
                f"top {top!r} p = {float(lens.top_probs[row, col]):.3f}")
        if col + 1 < len(lens.tokens):
            nxt = visible_text(lens.tokens[col + 1])
            text += f" · the real next token {nxt!r}: p = {float(lens.actual_probs[row, col]):.3f}"
        return text
