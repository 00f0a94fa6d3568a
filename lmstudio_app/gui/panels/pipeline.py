"""The seed's flowchart as a strip, filled with the actual values for one position of the prompt.

    raw text ─► tokenizer ─► token IDs ─► model ─► logits ─► softmax ─► loss

Pick a token (click its chip or use the spin box) and each stage shows what happens to it:
the span it covers in the text, the IDs of the context the model reads, the highest logits,
their softmax probabilities, and the loss −ln p(actual next token). The prompt is the session's
and its answer the window's shared :class:`~lmstudio_app.gui.queries.PromptScorer`'s (the same one
the predictions panel shows); only a position whose logits that answer did not keep (a prompt
longer than the model's context) is asked for on its own.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QResizeEvent, QTextDocument
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.distributions import NextTokenPrediction, TokenSurprise
from lmstudio_app.session import Session
from lmstudio_app.tokenizer import Token, Tokenizer

from ..events import AppEvents
from ..queries import LatestQuery, PromptAnswer
from ..widgets.token_chips import UNK_LABEL, TokenChips, visible_text

STAGES = ("text", "tokenizer", "ids", "model", "logits", "softmax", "loss")
_TITLES = ("Raw text", "Tokenizer", "Token IDs", "Model", "Logits", "Softmax", "Loss")
_TOP = 5  # entries shown in the logits and softmax boxes
_CONTEXT_SHOWN = 8  # context tokens listed in the IDs box
_TEXT_WINDOW = 60  # characters of prompt shown either side of the selected token


class _StageBox(QFrame):
    MIN_WIDTH = 130

    def __init__(self, title: str) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumWidth(self.MIN_WIDTH)
        self.title = QLabel(f"<b>{title}</b>")
        self.body = QLabel("—")
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setWordWrap(True)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.body, 1)


class _FlowStrip(QWidget):
    """The stage boxes in reading order, as many per row as the width allows (arrows between
    the boxes of a row, a row's last box pointing on with "↵")."""

    _ARROW_WIDTH = 22

    def __init__(self, boxes: list[QWidget]) -> None:
        super().__init__()
        self._boxes = boxes
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(4, 4, 4, 4)
        self._grid.setHorizontalSpacing(2)
        self._arrows: list[QLabel] = []
        for _ in boxes[1:]:
            arrow = QLabel()
            arrow.setAlignment(Qt.AlignmentFlag.AlignCenter)
            arrow.setFixedWidth(self._ARROW_WIDTH)
            self._arrows.append(arrow)
        self.columns = 0
        self._place(len(boxes))

    def columns_for(self, width: int) -> int:
        box = _StageBox.MIN_WIDTH + self._ARROW_WIDTH + self._grid.horizontalSpacing() * 2
        return max(1, min(len(self._boxes), (width - 8 + self._ARROW_WIDTH) // box))

    def _place(self, columns: int) -> None:
        if columns == self.columns:
            return
        self.columns = columns
        for widget in (*self._boxes, *self._arrows):
            self._grid.removeWidget(widget)
        for col in range(2 * len(self._boxes)):
            self._grid.setColumnStretch(col, 0)
        for i, box in enumerate(self._boxes):
            row, col = divmod(i, columns)
            self._grid.addWidget(box, row, 2 * col)
            self._grid.setColumnStretch(2 * col, 1)
            if i + 1 < len(self._boxes):
                arrow = self._arrows[i]
                end_of_row = col == columns - 1
                arrow.setText("↵" if end_of_row else "➜")
                arrow.setToolTip("continues on the next row" if end_of_row else "")
                self._grid.addWidget(arrow, row, 2 * col + 1)

    def resizeEvent(self, event: QResizeEvent) -> None:
        self._place(self.columns_for(event.size().width()))
        super().resizeEvent(event)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(_StageBox.MIN_WIDTH + 8, hint.height())


def _tok(text: str) -> str:
    return f"<code>'{html.escape(visible_text(text))}'</code>"


class PipelineView(QWidget):
    """A strip of stage boxes for one selected position of the prompt."""

    position_changed = Signal(int)

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.scores = events.prompt_scores
        self._answer: PromptAnswer | None = None
        self._tokens: list[Token] = []
        self._loss: float | None = None
        # Positions the shared answer did not keep (a prompt longer than the context): asked alone.
        self._position_query = LatestQuery(self)
        self._position_query.answered.connect(self._on_position_answer)

        self.position_spin = QSpinBox()
        self.position_spin.setToolTip("Which token of the prompt to follow through the pipeline")
        self.position_spin.valueChanged.connect(self._on_position_spin)
        self.position_label = QLabel()
        self.chips = TokenChips()
        self.chips.token_clicked.connect(self.set_position)
        self.message_label = QLabel()
        header = QHBoxLayout()
        header.addWidget(QLabel("Position"))
        header.addWidget(self.position_spin)
        header.addWidget(self.position_label, 1)

        self.boxes = {name: _StageBox(title) for name, title in zip(STAGES, _TITLES)}
        self.strip = _FlowStrip([self.boxes[name] for name in STAGES])
        scroll = QScrollArea()
        scroll.setWidget(self.strip)
        scroll.setWidgetResizable(True)
        # The stages wrap into rows instead: every box, Softmax and Loss included, is on screen
        # at the window's default width, and a narrow dock scrolls down, never sideways.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll = scroll
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.chips)
        layout.addWidget(self.message_label)
        layout.addWidget(scroll, 1)

        self.scores.scored.connect(self._on_scored)
        if self.scores.latest is not None:
            self._on_scored(self.scores.latest)

    # ----- public API ----------------------------------------------------------------------

    def prompt(self) -> str:
        return self.session.prompt

    def set_prompt(self, text: str) -> None:
        self.session.set_prompt(text)  # the predictions panel follows too

    def position(self) -> int:
        return self.position_spin.value()

    def set_position(self, index: int) -> None:
        self.position_spin.setValue(index)

    def stage_text(self, name: str) -> str:
        """The plain text of one stage box (``STAGES`` names), for tests and screen readers."""
        doc = QTextDocument()
        doc.setHtml(self.boxes[name].body.text())
        return doc.toPlainText()

    def loss(self) -> float | None:
        """The loss shown in the last box (None at the last position or without a model)."""
        return self._loss

    def is_busy(self) -> bool:
        return self.scores.is_busy() or self._position_query.is_busy()

    def refresh(self, *_args: Any) -> None:
        self.scores.refresh()

    # ----- answers ---------------------------------------------------------------------------

    def _on_position_spin(self, _value: int) -> None:
        self.chips.set_selected(self.position())
        self.position_changed.emit(self.position())
        self._show()

    def _on_scored(self, answer: PromptAnswer) -> None:
        self._answer = answer
        self._set_tokens(answer.tokens)
        self._show()

    def _set_tokens(self, tokens: list[Token]) -> None:
        """New prompt tokens: keep the position if it still exists, else follow the last token."""
        at_end = self.position() >= len(self._tokens) - 1
        self._tokens = tokens
        self.position_spin.blockSignals(True)
        self.position_spin.setRange(0, max(len(tokens) - 1, 0))
        if at_end:
            self.position_spin.setValue(max(len(tokens) - 1, 0))
        self.position_spin.blockSignals(False)
        tokenizer = self._answer.score.tokenizer if self._answer and self._answer.score else self.session.tokenizer
        self.chips.set_unknown_id(tokenizer.unk_id if tokenizer is not None else None)
        self.chips.set_tokens(tokens)
        self.chips.set_selected(self.position() if tokens else None)

    def _show(self) -> None:
        answer = self._answer
        if answer is None:
            return
        score = answer.score
        self._show_static(score.tokenizer if score is not None else self.session.tokenizer, answer.text)
        if score is None or not self._tokens:
            self._show_model_stages(None, None, 0)
            self._message(answer.problem or "the prompt is empty — type some text")
            return
        self._message("")
        position = self.position()
        if score.has_position(position):
            self._show_model_stages(score.prediction(position, k=_TOP), score.surprise, score.context_length)
            return
        session, text = self.session, answer.text

        def job() -> tuple[PromptAnswer, NextTokenPrediction | str]:
            predictor = session.predictor(fresh=False)
            if predictor is None:
                return answer, "the model is gone"
            try:
                return answer, predictor.next_token(text, position=position, k=_TOP)
            except LMStudioError as exc:
                return answer, str(exc)

        self._position_query.request(job)

    def _on_position_answer(self, outcome: tuple[PromptAnswer, NextTokenPrediction | str]) -> None:
        answer, result = outcome
        if answer is not self._answer or answer.score is None:
            return  # another prompt or model since
        if isinstance(result, str):
            self._show_model_stages(None, None, 0)
            self._message(result)
        elif result.position == self.position():
            self._show_model_stages(result, answer.score.surprise, answer.score.context_length)

    def _message(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))

    # ----- the boxes -------------------------------------------------------------------------

    def _show_static(self, tokenizer: Tokenizer | None, prompt: str) -> None:
        """Text, tokenizer and IDs: known without running the model."""
        if not self._tokens:
            for name in ("text", "ids"):
                self.boxes[name].body.setText("—")
            self.position_label.setText("")
        else:
            pos = self.position()
            tok = self._tokens[pos]
            self.position_label.setText(f"token {pos} of {len(self._tokens)}: {_tok(tok.text)} (id {tok.id})")
            lo, hi = max(0, tok.start - _TEXT_WINDOW), min(len(prompt), tok.end + _TEXT_WINDOW)
            span = prompt[tok.start:tok.end]
            shown = visible_text(span) if span.isspace() else span  # a highlighted space must show
            # the actual next token (what the loss is about) is underlined
            nxt = self._tokens[pos + 1] if pos + 1 < len(self._tokens) else None
            after = prompt[tok.end:hi]
            if nxt is not None and nxt.start == tok.end and nxt.end <= hi:
                cut = nxt.end - tok.end
                after = f"<u>{html.escape(after[:cut])}</u>{html.escape(after[cut:])}"
            else:
                after = html.escape(after)
            self.boxes["text"].body.setText(
                ("…" if lo else "") + html.escape(prompt[lo:tok.start])
                + f"<span style='background-color:#f2c94c; color:black'>{html.escape(shown)}</span>"
                + after + ("…" if hi < len(prompt) else ""))
            first = max(0, pos + 1 - _CONTEXT_SHOWN)
            unk = tokenizer.unk_id if tokenizer is not None else None
            rows = [f"{_tok(t.text)} → {t.id}" + (f" {html.escape(UNK_LABEL)}" if t.id == unk else "")
                    for t in self._tokens[first:pos + 1]]
            rows[-1] = f"<b>{rows[-1]}</b>"
            self.boxes["ids"].body.setText(("…<br>" if first else "") + "<br>".join(rows))
        if tokenizer is None:
            self.boxes["tokenizer"].body.setText("not built yet")
        else:
            self.boxes["tokenizer"].body.setText(
                f"{html.escape(self.session.config.tokenizer.plugin)} ({html.escape(tokenizer.kind)})<br>"
                f"vocabulary {tokenizer.vocab_size:,}<br>{len(self._tokens)} tokens")

    def _show_model_stages(self, prediction: NextTokenPrediction | None,
                           surprise: list[TokenSurprise] | None, context_length: int) -> None:
        self._loss = None
        if prediction is None or surprise is None:
            for name in ("model", "logits", "softmax", "loss"):
                self.boxes[name].body.setText("—")
            return
        pos, start = prediction.position, prediction.context_start
        vocab = len(prediction.probs)
        self.boxes["model"].body.setText(
            f"{html.escape(self.session.config.model.plugin)}<br>reads tokens {start}–{pos} "
            f"({pos - start + 1} of at most {context_length:,})<br>→ {vocab:,} logits")
        self.boxes["logits"].body.setText("<br>".join(f"{_tok(c.text)} {c.logit:+.3f}" for c in prediction.candidates))
        self.boxes["softmax"].body.setText(
            "<br>".join(f"{_tok(c.text)} {c.prob:.2%}" for c in prediction.candidates)
            + f"<br><i>Σ over {vocab:,} tokens = {prediction.probs.sum():.6f}</i>")
        if pos + 1 < len(surprise) and surprise[pos + 1].loss is not None:
            actual = surprise[pos + 1]
            self._loss = actual.loss
            self.boxes["loss"].body.setText(
                f"next token {_tok(actual.token.text)} (id {actual.token.id})<br>p = {actual.prob:.4f}<br>"
                f"loss = −ln p = <b>{actual.loss:.4f}</b> nats")
        else:
            self.boxes["loss"].body.setText("—<br><i>last position: no next token to compare with</i>")
