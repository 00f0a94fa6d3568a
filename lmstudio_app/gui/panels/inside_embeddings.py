"""How the token embeddings organise themselves: each token's embedding vector on the plane of its
two principal axes, coloured by how often the token occurs in the corpus.

The view keeps one :class:`~lmstudio_app.inference.inspection.EmbeddingProjector`, so each new map is
turned to line up with the previous one and the points drift while training instead of flipping;
it starts afresh when the model changes. Click a point (or type a token) to list its nearest
neighbours by cosine similarity in the full embedding space (the plane is only a shadow of it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.inference.inspection import EmbeddingMap, EmbeddingProjector, Inspector
from lmstudio_app.session import Session

from ..events import AppEvents
from ..widgets.embedding_map import EmbeddingMapView
from ..widgets.token_chips import visible_text
from .inside_base import Answer, InsideView, Problem

NEIGHBOURS = 10
COUNT_SAMPLE_CHARS = 2_000_000  # without a tokenized corpus: count the tokens of this much text
_COUNT_CHUNK = 1 << 22


def count_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token ID occurs in ``tokens`` (in chunks: a large memmap is never copied whole)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), _COUNT_CHUNK):
        chunk = np.asarray(tokens[start : start + _COUNT_CHUNK], dtype=np.int64)
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


class EmbeddingView(InsideView):
    title = "Embeddings"
    uses_prompt = False

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(session, events, parent)
        self.projector = EmbeddingProjector()
        self.map: EmbeddingMap | None = None
        self.selected_id: int | None = None
        self._counts: tuple[tuple[Any, ...], np.ndarray] | None = None  # (what was counted, counts)
        self.view = EmbeddingMapView()
        self.view.point_clicked.connect(lambda index: self.select_index(index))
        self.info_label = QLabel()
        self.info_label.setObjectName("embeddingInfo")
        self.info_label.setWordWrap(True)
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("find a token…")
        self.find_edit.setClearButtonEnabled(True)
        self.find_edit.returnPressed.connect(lambda: self.select_token(self.find_edit.text()))
        self.picked_label = QLabel("Click a point to list its nearest neighbours.")
        self.picked_label.setWordWrap(True)
        self.neighbour_list = QListWidget()
        self.neighbour_list.setToolTip("Nearest by cosine similarity of the full embedding vectors; click one to go there")
        self.neighbour_list.itemClicked.connect(self._on_neighbour_clicked)

        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.find_edit)
        side_layout.addWidget(self.picked_label)
        side_layout.addWidget(self.neighbour_list, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([800, 240])
        top = QHBoxLayout()
        top.addWidget(self.info_label, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.splitter, 1)

    # ----- asking --------------------------------------------------------------------------------

    def request_args(self) -> Any:
        session = self.session
        corpus = session.trainer.corpus if session.trainer is not None else session.corpus
        return self.projector, corpus.train if corpus is not None else None, session.text

    def compute(self, inspector: Inspector, args: Any) -> tuple[Any, Any]:
        projector, tokens, text = args
        vocab = inspector.predictor.tokenizer.vocab_size
        counts = self._token_counts(inspector, tokens, text, vocab)
        return inspector.embeddings(projector, counts), None

    def _token_counts(self, inspector: Inspector, tokens: np.ndarray | None, text: str, vocab: int) -> np.ndarray | None:
        """Corpus frequencies, counted once per corpus (in the worker thread)."""
        if tokens is not None and len(tokens):
            key: tuple[Any, ...] = ("tokens", id(tokens), len(tokens), vocab)
        elif text:
            key = ("text", id(inspector.predictor.tokenizer), len(text), vocab)
        else:
            return None
        cached = self._counts
        if cached is not None and cached[0] == key:
            return cached[1]
        if tokens is not None and len(tokens):
            counts = count_tokens(tokens, vocab)
        else:
            ids = np.asarray(inspector.predictor.tokenizer.encode(text[:COUNT_SAMPLE_CHARS]), dtype=np.int64)
            counts = count_tokens(ids, vocab)
        self._counts = (key, counts)
        return counts

    def model_changed(self) -> None:
        self.projector = EmbeddingProjector()  # the new model's axes owe nothing to the old one's
        self.view.reset_axes()
        self.selected_id = None

    # ----- showing ---------------------------------------------------------------------------------

    def show_problem(self, problem: Problem) -> None:
        self.map = None
        self.info_label.setText("")
        self.neighbour_list.clear()
        self.view.set_message(problem.text)

    def show_answer(self, answer: Answer) -> None:
        emap: EmbeddingMap = answer.result
        self.map = emap
        labels = [visible_text(label) for label in emap.labels]
        self.view.set_points(emap.xy, labels, emap.counts,
                             (f"PC 1 ({emap.explained[0]:.0%} of the variance)",
                              f"PC 2 ({emap.explained[1]:.0%})"))
        coloured = "colour: how often each token occurs in the corpus (log scale; dark: rare, yellow: frequent)" if emap.counts is not None \
            else "no corpus to count the tokens in"
        self.info_label.setText(f"{len(labels):,} tokens, width {emap.vectors.shape[1]} · {self.step_text(answer)} · "
                                f"{coloured}")
        if self.selected_id is not None:
            self.select_id(self.selected_id)

    def select_index(self, index: int) -> None:
        if self.map is not None and 0 <= index < len(self.map.token_ids):
            self.select_id(int(self.map.token_ids[index]))

    def select_token(self, text: str) -> bool:
        """Pick the token whose string is ``text`` (as shown, or stripped); False when none is."""
        if self.map is None or not text:
            return False
        for i, label in enumerate(self.map.labels):
            if label == text or visible_text(label) == text:
                self.select_index(i)
                return True
        for i, label in enumerate(self.map.labels):
            if label.strip() == text.strip():
                self.select_index(i)
                return True
        self.picked_label.setText(f"No token {text!r} in this vocabulary.")
        return False

    def select_id(self, token_id: int) -> None:
        emap = self.map
        if emap is None:
            return
        rows = np.flatnonzero(emap.token_ids == token_id)
        if not rows.size:
            return
        self.selected_id = token_id
        index = int(rows[0])
        found = emap.neighbours(token_id, k=NEIGHBOURS)
        by_label = {label: i for i, label in enumerate(emap.labels)}
        self.neighbour_list.clear()
        near = []
        for label, cos in found:
            item = QListWidgetItem(f"{visible_text(label)!r}   {cos:+.3f}")
            item.setData(Qt.ItemDataRole.UserRole, by_label.get(label, -1))
            self.neighbour_list.addItem(item)
            near.append(by_label.get(label, -1))
        count = f", seen {int(emap.counts[index]):,} times" if emap.counts is not None else ""
        self.picked_label.setText(f"<b>{visible_text(emap.labels[index])!r}</b> (id {token_id}{count}): "
                                  "nearest neighbours, cosine similarity")
        self.view.set_selection(index, [i for i in near if i >= 0])

    def neighbours_shown(self) -> list[str]:
        return [self.neighbour_list.item(i).text() for i in range(self.neighbour_list.count())]

    def _on_neighbour_clicked(self, item: QListWidgetItem) -> None:
        index = item.data(Qt.ItemDataRole.UserRole)
        if isinstance(index, int) and index >= 0:
            self.select_index(index)
