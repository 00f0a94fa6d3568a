"""The seed's flowchart as a strip, filled with the actual values for one position of the prompt.

    raw text ─► tokenizer ─► token IDs ─► model ─► logits ─► softmax ─► loss

Pick a token (click its chip or use the spin box) and each stage shows what happens to it:
the span it covers in the text, the IDs of the context the model reads, the highest logits,
their softmax probabilities, and the loss −ln p(actual next token). The prompt follows the
predictions panel through ``events.prompt_changed``; the model is queried off the UI thread.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QSpinBox, QVBoxLayout, QWidget

from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.predictor import NextTokenPrediction, Predictor, TokenSurprise
from lmstudio_app.session import Session
from lmstudio_app.tokenizer import Token

from ..dialogs import describe_exception
from ..events import AppEvents
from ..widgets.token_chips import TokenChips, visible_text
from ..worker import run_in_thread
from .predictions import DEFAULT_PROMPT, NO_MODEL_HINT

STAGES = ("text", "tokenizer", "ids", "model", "logits", "softmax", "loss")
_TITLES = ("Raw text", "Tokenizer", "Token IDs", "Model", "Logits", "Softmax", "Loss")
_TOP = 5  # entries shown in the logits and softmax boxes
_CONTEXT_SHOWN = 8  # context tokens listed in the IDs box
_TEXT_WINDOW = 60  # characters of prompt shown either side of the selected token
_TRAINING_REFRESH_MS = 1000  # as the predictions panel


class _StageBox(QFrame):
    def __init__(self, title: str) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumWidth(150)
        self.title = QLabel(f"<b>{title}</b>")
        self.body = QLabel("—")
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setWordWrap(True)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.body, 1)


def _tok(text: str) -> str:
    return f"<code>'{html.escape(visible_text(text))}'</code>"


class PipelineView(QWidget):
    """A strip of stage boxes for one selected position of the prompt."""

    position_changed = Signal(int)
    updated = Signal()  # the boxes now show the current prompt and position

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self._prompt = DEFAULT_PROMPT
        self._tokens: list[Token] = []
        self._request_id = 0
        self._in_flight = False
        self._pending = False
        self._weights_version = 0
        self._surprise_cache: tuple[tuple[str, int], list[TokenSurprise]] | None = None
        self._last_refresh = 0.0
        self._loss: float | None = None
        self._context_length = 0

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
        strip = QWidget()
        strip_layout = QHBoxLayout(strip)
        for i, name in enumerate(STAGES):
            if i:
                arrow = QLabel("➜")
                arrow.setAlignment(Qt.AlignmentFlag.AlignCenter)
                strip_layout.addWidget(arrow)
            strip_layout.addWidget(self.boxes[name])
        scroll = QScrollArea()
        scroll.setWidget(strip)
        scroll.setWidgetResizable(True)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.chips)
        layout.addWidget(self.message_label)
        layout.addWidget(scroll, 1)

        self._debounce = QTimer(self, singleShot=True, interval=80)
        self._debounce.timeout.connect(self._start_query)
        self._throttle = QTimer(self, singleShot=True)
        self._throttle.timeout.connect(self.refresh)
        self._model_dirty = False
        events.prompt_changed.connect(self.set_prompt)
        events.model_updated.connect(self._on_model_updated)
        for signal in (events.training_paused, events.training_started, events.training_finished,
                       events.tokenizer_changed, events.model_config_changed):
            signal.connect(self._on_model_replaced)
        self.refresh()

    # ----- public API ----------------------------------------------------------------------

    def prompt(self) -> str:
        return self._prompt

    def set_prompt(self, text: str) -> None:
        if text != self._prompt:
            self._prompt = text
            self.refresh()

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
        return self._in_flight or self._pending or self._debounce.isActive()

    def refresh(self, *_args: Any) -> None:
        self._debounce.start()

    # ----- queries -------------------------------------------------------------------------

    def _on_position_spin(self, _value: int) -> None:
        self.chips.set_selected(self.position())
        self.position_changed.emit(self.position())
        self.refresh()

    def _on_model_updated(self) -> None:
        self._weights_version += 1
        if not self.isVisible():
            self._model_dirty = True  # a hidden view catches up when shown
        elif not self._throttle.isActive():
            wait = _TRAINING_REFRESH_MS - (time.monotonic() - self._last_refresh) * 1000
            self._throttle.start(max(0, int(wait)))

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._model_dirty:
            self._model_dirty = False
            self.refresh()

    def _on_model_replaced(self, *_args: Any) -> None:
        self._weights_version += 1
        self.refresh()

    def _set_tokens(self, tokens: list[Token]) -> None:
        """New prompt tokens: keep the position if it still exists, else follow the last token."""
        at_end = self.position() >= len(self._tokens) - 1
        self._tokens = tokens
        self.position_spin.blockSignals(True)
        self.position_spin.setRange(0, max(len(tokens) - 1, 0))
        if at_end:
            self.position_spin.setValue(max(len(tokens) - 1, 0))
        self.position_spin.blockSignals(False)
        self.chips.set_tokens(tokens)
        self.chips.set_selected(self.position() if tokens else None)

    def _start_query(self) -> None:
        if self._in_flight:
            self._pending = True
            return
        self._pending = False
        predictor = self.session.predictor()
        # a live or loaded model brings its own tokenizer, which the settings may since have replaced
        tokenizer = predictor.tokenizer if predictor is not None else self.session.tokenizer
        self._set_tokens(tokenizer.encode_with_offsets(self._prompt) if tokenizer is not None else [])
        self._show_static(tokenizer)
        if predictor is None or not self._tokens:
            self._show_model_stages(None, None)
            self._message(NO_MODEL_HINT if predictor is None else "the prompt is empty — type some text")
            self.updated.emit()
            return
        self._request_id += 1
        self._in_flight = True
        self._context_length = predictor.context_length
        self._last_refresh = time.monotonic()
        key = (self._prompt, self._weights_version)
        cached = self._surprise_cache[1] if self._surprise_cache and self._surprise_cache[0] == key else None
        job = self._job(predictor, self._request_id, self._prompt, self.position(), key, cached)
        run_in_thread(job, self._on_answer, self._on_error)

    @staticmethod
    def _job(predictor: Predictor, request_id: int, text: str, position: int, key: tuple[str, int],
             cached: list[TokenSurprise] | None) -> Callable[..., tuple]:
        def job(_report: Any, _cancelled: Any) -> tuple:
            try:
                prediction = predictor.next_token(text, position=position, k=_TOP)
                surprise = cached if cached is not None else predictor.surprise(text)
            except LMStudioError as exc:
                return request_id, key, None, None, str(exc)
            return request_id, key, prediction, surprise, None

        return job

    def _on_answer(self, outcome: tuple) -> None:
        request_id, key, prediction, surprise, problem = outcome
        self._in_flight = False
        if request_id == self._request_id and not self._pending:
            if problem is not None:
                self._show_model_stages(None, None)
                self._message(problem)
            else:
                self._surprise_cache = (key, surprise)
                self._message("")
                self._show_model_stages(prediction, surprise)
            self.updated.emit()
        if self._pending:
            self._start_query()

    def _on_error(self, exc: BaseException, details: str) -> None:
        self._in_flight = False
        self.events.error.emit(describe_exception(exc), details)
        if self._pending:
            self._start_query()

    def _message(self, text: str) -> None:
        self.message_label.setText(text)
        self.message_label.setVisible(bool(text))

    # ----- the boxes -------------------------------------------------------------------------

    def _show_static(self, tokenizer: Any) -> None:
        """Text, tokenizer and IDs: known without running the model."""
        if not self._tokens:
            for name in ("text", "ids"):
                self.boxes[name].body.setText("—")
            self.position_label.setText("")
        else:
            pos = self.position()
            tok = self._tokens[pos]
            self.position_label.setText(f"token {pos} of {len(self._tokens)}: {_tok(tok.text)} (id {tok.id})")
            lo, hi = max(0, tok.start - _TEXT_WINDOW), min(len(self._prompt), tok.end + _TEXT_WINDOW)
            span = self._prompt[tok.start:tok.end]
            shown = visible_text(span) if span.isspace() else span  # a highlighted space must show
            # the actual next token (what the loss is about) is underlined
            nxt = self._tokens[pos + 1] if pos + 1 < len(self._tokens) else None
            after = self._prompt[tok.end:hi]
            if nxt is not None and nxt.start == tok.end and nxt.end <= hi:
                cut = nxt.end - tok.end
                after = f"<u>{html.escape(after[:cut])}</u>{html.escape(after[cut:])}"
            else:
                after = html.escape(after)
            self.boxes["text"].body.setText(
                ("…" if lo else "") + html.escape(self._prompt[lo:tok.start])
                + f"<span style='background-color:#f2c94c; color:black'>{html.escape(shown)}</span>"
                + after + ("…" if hi < len(self._prompt) else ""))
            first = max(0, pos + 1 - _CONTEXT_SHOWN)
            rows = [f"{_tok(t.text)} → {t.id}" for t in self._tokens[first:pos + 1]]
            rows[-1] = f"<b>{rows[-1]}</b>"
            self.boxes["ids"].body.setText(("…<br>" if first else "") + "<br>".join(rows))
        if tokenizer is None:
            self.boxes["tokenizer"].body.setText("not built yet")
        else:
            self.boxes["tokenizer"].body.setText(
                f"{html.escape(self.session.config.tokenizer.plugin)} ({html.escape(tokenizer.kind)})<br>"
                f"vocabulary {tokenizer.vocab_size:,}<br>{len(self._tokens)} tokens")

    def _show_model_stages(self, prediction: NextTokenPrediction | None,
                           surprise: list[TokenSurprise] | None) -> None:
        self._loss = None
        if prediction is None or surprise is None:
            for name in ("model", "logits", "softmax", "loss"):
                self.boxes[name].body.setText("—")
            return
        pos, start = prediction.position, prediction.context_start
        vocab = len(prediction.probs)
        self.boxes["model"].body.setText(
            f"{html.escape(self.session.config.model.plugin)}<br>reads tokens {start}–{pos} "
            f"({pos - start + 1} of at most {self._context_length:,})<br>→ {vocab:,} logits")
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
