"""What each attention head looks at, for the current prompt.

The large map is one head: a row per query token (the position doing the looking), a column per key
token (the position looked at), its colour the attention weight (each row sums to 1; above the
diagonal is blank, since a token cannot look ahead). Beside it, every layer × head as a thumbnail:
click one to show it large. Hovering a cell names the pair and the weight, and which head attends
most strongly between those two tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QSplitter, QVBoxLayout, QWidget

from lmstudio_app.inference.inspection import AttentionMaps, Inspector
from lmstudio_app.session import Session

from ..events import AppEvents
from ..widgets.heatmap import HeatmapWidget, ThumbnailGrid
from ..widgets.token_chips import visible_text
from .inside_base import Answer, InsideView, Problem

HELP = ("Rows: the token doing the looking (query). Columns: the tokens it can look at (keys, itself and "
        "those before it). Colour: how much of its attention goes there; each row sums to 1.")


def causal_mask(t: int) -> np.ndarray:
    """True above the diagonal: the keys a query cannot see."""
    return np.triu(np.ones((t, t), dtype=bool), k=1)


class AttentionView(InsideView):
    title = "Attention"

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(session, events, parent)
        self.maps: AttentionMaps | None = None
        self._when = ""
        self.heatmap = HeatmapWidget(square=True)
        self.heatmap.setToolTip(HELP)
        self.heatmap.cell_hovered.connect(self._on_hover)
        self.grid = ThumbnailGrid()
        self.grid.selected.connect(lambda _layer, _head: self._draw_selected())
        scroll = QScrollArea()
        scroll.setWidget(self.grid)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(180)
        self.head_label = QLabel()
        self.head_label.setObjectName("attentionHead")
        self.hover_label = QLabel(HELP)
        self.hover_label.setObjectName("attentionHover")
        self.hover_label.setWordWrap(True)
        self.hover_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label = QLabel()
        self.message_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message_label.setWordWrap(True)
        self.message_label.hide()

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(self.head_label, 1)
        left_layout.addLayout(top)
        left_layout.addWidget(self.heatmap, 1)
        left_layout.addWidget(self.hover_label)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(scroll)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([600, 400])
        layout = QVBoxLayout(self)
        layout.addWidget(self.message_label)
        layout.addWidget(self.splitter, 1)

    def compute(self, inspector: Inspector, args: Any) -> tuple[Any, Any]:
        return inspector.attention(args), None

    def show_problem(self, problem: Problem) -> None:
        self.maps = None
        self.splitter.hide()
        self.message_label.setText(problem.text)
        self.message_label.show()
        self.heatmap.set_message(problem.text)
        self.grid.clear()

    def show_answer(self, answer: Answer) -> None:
        maps: AttentionMaps = answer.result
        self.maps = maps
        self._when = self.step_text(answer)
        self.message_label.hide()
        self.splitter.show()
        t = len(maps.tokens)
        self.grid.set_maps(maps.weights, maps.layer_names, causal_mask(t))
        self._draw_selected()

    # ----- the large map ---------------------------------------------------------------------

    def selection(self) -> tuple[int, int]:
        return self.grid.selection()

    def select(self, layer: int, head: int) -> None:
        self.grid.select(layer, head)

    def axis_labels(self) -> list[str]:
        if self.maps is None:
            return []
        return [f"{visible_text(tok)} [{self.maps.context_start + i}]" for i, tok in enumerate(self.maps.tokens)]

    def _draw_selected(self) -> None:
        maps = self.maps
        if maps is None:
            return
        layer, head = self.grid.selection()
        labels = self.axis_labels()
        t = len(labels)
        self.heatmap.set_data(maps.weights[layer, head], labels, labels, mask=causal_mask(t), vmin=0.0, vmax=1.0,
                              tooltip=self._tooltip, bar_label="attention weight")
        cropped = f" (the last {t} tokens: the model's context)" if maps.context_start else ""
        self.head_label.setText(f"<b>{maps.layer_names[layer]}, head {head + 1}</b> of {len(maps.layer_names)} "
                                f"layers × {maps.weights.shape[1]} heads · {t} prompt tokens{cropped} · {self._when}")

    def pair_text(self, query: int, key: int) -> str:
        """What hovering cell (query, key) says."""
        maps = self.maps
        if maps is None:
            return ""
        layer, head = self.grid.selection()
        q, k = visible_text(maps.tokens[query]), visible_text(maps.tokens[key])
        if key > query:
            return f"{q!r} (position {query}) cannot see {k!r} (position {key}): it comes later"
        weight = float(maps.weights[layer, head, query, key])
        s_layer, s_head, s_weight = maps.strongest(query, key)
        return (f"{q!r} (position {query}) → {k!r} (position {key}): weight {weight:.3f} in "
                f"{maps.layer_names[layer]}, head {head + 1} · strongest: "
                f"{maps.layer_names[s_layer]}, head {s_head + 1} ({s_weight:.3f})")

    def _tooltip(self, row: int, col: int) -> str:
        return self.pair_text(row, col)

    def _on_hover(self, row: int, col: int) -> None:
        self.hover_label.setText(self.pair_text(row, col) if row >= 0 else HELP)
