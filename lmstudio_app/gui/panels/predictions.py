"""The heart of the app: what the model thinks comes next, for the person's own prompt.

The prompt is shown as token chips coloured by surprise, the next-token candidates as a ranked
table and a bar chart, with temperature / top-k / top-p controls and a Generate button that
streams a continuation. It works on the live model while training runs: inference takes the
trainer's lock, which the training loop holds during each step, so every query runs on the
thread pool and at most one is in flight; a newer request supersedes any result still on its
way (stale results are dropped), and refreshes caused by training are throttled to 2 Hz.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.predictor import NextTokenPrediction, Predictor, TokenSurprise
from lmstudio_app.session import Session

from .. import theme
from ..dialogs import describe_exception
from ..events import AppEvents
from ..widgets.probability_chart import CandidateTable, ProbabilityChart, SamplingControls
from ..widgets.token_chips import TokenChips, probability_color
from ..worker import run_in_thread

DEFAULT_PROMPT = "the cat sat on the"
NO_MODEL_HINT = "Start training or open a run to see predictions."
_TRAINING_REFRESH_MS = 1000  # ≤ 1 Hz while the weights change under us: each refresh costs training
_EDIT_DEBOUNCE_MS = 120


@dataclass(frozen=True)
class _Query:
    request_id: int
    text: str
    temperature: float
    top_k: int | None
    top_p: float | None
    k: int
    model_generation: int  # which model (bumped when it is replaced, not when it trains)
    weights_version: int  # bumped on every weight update too: keys the surprise cache


@dataclass
class _Answer:
    query: _Query
    prediction: NextTokenPrediction | None = None
    surprise: list[TokenSurprise] | None = None
    problem: str | None = None  # an expected failure (empty prompt, bad setting): shown inline


class PredictionsPanel(QWidget):
    """Prompt → chips by surprise, ranked candidates, chart, sampling controls, generation."""

    prompt_changed = Signal(str)
    prediction_ready = Signal(object)  # the NextTokenPrediction now shown
    generation_finished = Signal(str)  # the whole continuation

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self._request_id = 0
        self._shown_request_id = 0
        self._in_flight: _Query | None = None
        self._pending = False
        self._model_generation = 0
        self._weights_version = 0
        self._last_refresh = 0.0
        self._surprise_cache: tuple[tuple[str, int], list[TokenSurprise]] | None = None
        self._prediction: NextTokenPrediction | None = None
        self._generation_task: Any = None
        self._generated: list[str] = []
        self._generated_lock = threading.Lock()
        self._build_ui()

        self._debounce = QTimer(self, singleShot=True, interval=_EDIT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._start_query)
        self._throttle = QTimer(self, singleShot=True)
        self._throttle.timeout.connect(self.refresh)
        self._model_dirty = False

        events.model_updated.connect(self._on_model_updated)
        events.training_paused.connect(self._on_model_replaced)
        events.training_finished.connect(self._on_model_replaced)
        events.training_started.connect(self._on_model_replaced)
        events.tokenizer_changed.connect(self._on_model_replaced)
        events.model_config_changed.connect(self._on_model_replaced)
        self.refresh()

    # ----- UI ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.prompt_edit = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt_edit.setPlaceholderText("Type a prompt…")
        self.prompt_edit.setFixedHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.prompt_edit.textChanged.connect(self._on_prompt_edited)
        self.chips = TokenChips()
        self.chips.setToolTip("The prompt's tokens, green = the model expected it, red = surprising")
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)

        self.sampling = SamplingControls()
        self.sampling.changed.connect(self.refresh)

        self.table = CandidateTable()
        self.table.candidate_clicked.connect(self.append_candidate)
        self.chart = ProbabilityChart()
        self.chart.bar_clicked.connect(self.append_candidate)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.table)
        splitter.addWidget(self.chart)
        splitter.setStretchFactor(0, 3)  # the table's numbers matter most; the chart gets the rest
        splitter.setStretchFactor(1, 2)

        generate_box = QGroupBox("Generate")
        self.max_tokens_spin = QSpinBox()
        self.max_tokens_spin.setRange(1, 5000)
        self.max_tokens_spin.setValue(100)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setValue(-1)
        self.seed_spin.setSpecialValueText("random")
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self._on_generate_clicked)
        self.output_edit = QPlainTextEdit()
        self.output_edit.setReadOnly(True)
        self.output_edit.setPlaceholderText("The sampled continuation appears here")
        self.output_edit.setMaximumHeight(self.fontMetrics().lineSpacing() * 6 + 12)
        gen_row = QHBoxLayout()
        for label, widget in (("max tokens", self.max_tokens_spin), ("seed", self.seed_spin)):
            gen_row.addWidget(QLabel(label))
            gen_row.addWidget(widget)
        gen_row.addStretch(1)
        gen_row.addWidget(self.generate_button)
        gen_layout = QVBoxLayout(generate_box)
        gen_layout.addLayout(gen_row)
        gen_layout.addWidget(self.output_edit)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt_edit)
        layout.addWidget(self.chips)
        layout.addWidget(self.message_label)
        layout.addWidget(self.sampling)
        layout.addWidget(self.summary_label)
        layout.addWidget(splitter, 1)
        layout.addWidget(generate_box)

    # ----- public API ----------------------------------------------------------------------

    def prompt(self) -> str:
        return self.prompt_edit.toPlainText()

    def set_prompt(self, text: str) -> None:
        self.prompt_edit.setPlainText(text)

    def temperature(self) -> float:
        return self.sampling.temperature()

    def set_temperature(self, temperature: float) -> None:
        self.sampling.set_temperature(temperature)

    def prediction(self) -> NextTokenPrediction | None:
        """The prediction currently shown (None while there is none)."""
        return self._prediction

    def message(self) -> str:
        """The hint or problem shown above the controls ("" when all is well)."""
        return self.message_label.text()

    def is_busy(self) -> bool:
        return self._in_flight is not None or self._pending or self._debounce.isActive()

    def refresh(self, *_args: Any) -> None:
        """Ask the model again (debounced); call after anything that changes the answer."""
        self._debounce.start()

    def append_candidate(self, index: int) -> None:
        """Append the ``index``-th listed candidate's text to the prompt (which re-predicts)."""
        if self._prediction is not None and 0 <= index < len(self._prediction.candidates):
            cursor = self.prompt_edit.textCursor()
            cursor.movePosition(cursor.MoveOperation.End)
            cursor.insertText(self._prediction.candidates[index].text)
            self.prompt_edit.setTextCursor(cursor)

    def generate(self) -> None:
        """Sample a continuation of the prompt, streaming it into the output box."""
        predictor = self.session.predictor()
        if predictor is None:
            self._show_message(NO_MODEL_HINT)
            return
        if self._generation_task is not None:
            return
        seed = self.seed_spin.value()
        settings = {"max_tokens": self.max_tokens_spin.value(), "temperature": self.temperature(),
                    "top_k": self.sampling.top_k(), "top_p": self.sampling.top_p(), "seed": None if seed < 0 else seed}
        prompt = self.prompt()
        self.output_edit.clear()
        self._generated = []
        self._generation_task = run_in_thread(
            self._generation_job(predictor, prompt, settings),
            self._on_generation_done, self._on_generation_error, self._on_generation_progress,
        )
        self.generate_button.setText("Stop")

    def stop_generation(self) -> None:
        if self._generation_task is not None:
            self._generation_task.cancel()

    # ----- queries -------------------------------------------------------------------------

    def _on_prompt_edited(self) -> None:
        self.prompt_changed.emit(self.prompt())
        self.events.prompt_changed.emit(self.prompt())
        self.refresh()

    def _on_model_updated(self) -> None:
        self._weights_version += 1
        if not self.isVisible():
            self._model_dirty = True  # a hidden panel catches up when shown
            return
        wait = _TRAINING_REFRESH_MS - (time.monotonic() - self._last_refresh) * 1000
        if not self._throttle.isActive():
            self._throttle.start(max(0, int(wait)))

    def _on_model_replaced(self, *_args: Any) -> None:
        self._model_generation += 1
        self._weights_version += 1
        self.refresh()

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._model_dirty:
            self._model_dirty = False
            self.refresh()

    def _start_query(self) -> None:
        if self._in_flight is not None:
            self._pending = True  # one query at a time; the newest settings win when it returns
            return
        self._pending = False
        predictor = self.session.predictor()
        text = self.prompt()
        if predictor is None:  # still show how the prompt tokenizes, if a tokenizer exists
            tokenizer = self.session.tokenizer
            self._clear_results(NO_MODEL_HINT, error=False)
            self.chips.set_tokens(tokenizer.encode_with_offsets(text) if tokenizer is not None else [])
            return
        self._request_id += 1
        self._last_refresh = time.monotonic()
        query = _Query(self._request_id, text, self.temperature(), self.sampling.top_k(), self.sampling.top_p(),
                       self.sampling.rows(), self._model_generation, self._weights_version)
        cached = None
        if self._surprise_cache is not None and self._surprise_cache[0] == (text, query.weights_version):
            cached = self._surprise_cache[1]
        self._in_flight = query
        run_in_thread(self._query_job(predictor, query, cached), self._on_answer, self._on_query_error)

    @staticmethod
    def _query_job(predictor: Predictor, query: _Query, cached: list[TokenSurprise] | None) -> Callable:
        def job(_report: Any, _cancelled: Any) -> _Answer:
            try:
                prediction = predictor.next_token(query.text, temperature=query.temperature, top_k=query.top_k,
                                                  top_p=query.top_p, k=query.k)
                surprise = cached if cached is not None else predictor.surprise(query.text)
            except LMStudioError as exc:
                return _Answer(query, problem=str(exc))
            return _Answer(query, prediction, surprise)

        return job

    def _on_answer(self, answer: _Answer) -> None:
        self._in_flight = None
        # Drop an answer about another prompt or another model; one that is merely a setting
        # behind (the slider moved on) is still shown, so dragging reshapes the chart as it goes.
        query = answer.query
        stale = (query.request_id <= self._shown_request_id or query.text != self.prompt()
                 or query.model_generation != self._model_generation)
        if not stale:
            self._shown_request_id = query.request_id
            self._show_answer(answer)
        if self._pending:
            self._start_query()

    def _on_query_error(self, exc: BaseException, details: str) -> None:
        self._in_flight = None
        self.events.error.emit(describe_exception(exc), details)
        if self._pending:
            self._start_query()

    # ----- display -------------------------------------------------------------------------

    def _show_answer(self, answer: _Answer) -> None:
        if answer.problem is not None:
            self._clear_results(answer.problem, error=True)
            return
        prediction, surprise = answer.prediction, answer.surprise or []
        assert prediction is not None
        self._surprise_cache = ((answer.query.text, answer.query.weights_version), surprise)
        self._prediction = prediction
        colors = [probability_color(s.prob) for s in surprise]
        tips = ["first token: nothing before it to predict it from" if s.prob is None
                else f"p = {s.prob:.4f} (the model's probability for this token)\nloss = {s.loss:.3f} nats"
                for s in surprise]
        self.chips.set_tokens(prediction.tokens, colors, tips)
        self.table.set_candidates(prediction.candidates)
        self.chart.set_candidates(prediction.candidates)
        covered = sum(c.prob for c in prediction.candidates)
        vocab = len(prediction.probs)
        parts = [
            f"entropy {prediction.entropy:.3f} nats (perplexity {math.exp(prediction.entropy):.1f} of {vocab} tokens)",
            f"top-{len(prediction.candidates)} cover {covered:.1%} of the probability",
        ]
        self.summary_label.setText(" · ".join(parts))
        notes = []
        if prediction.context_start > 0:
            notes.append(f"only the last {len(prediction.tokens) - prediction.context_start} tokens fit the "
                         f"model's context")
        if prediction.unknown_chars:
            notes.append("characters the tokenizer does not know: " + " ".join(prediction.unknown_chars))
        self._show_message("; ".join(notes), error=False)
        self.prediction_ready.emit(prediction)

    def _clear_results(self, message: str, error: bool) -> None:
        self._prediction = None
        self.table.set_candidates([])
        self.chart.set_candidates([])
        self.summary_label.clear()
        self.chips.clear()
        self._show_message(message, error)

    def _show_message(self, text: str, error: bool = True) -> None:
        self.message_label.setText(text)
        self.message_label.setStyleSheet(theme.ERROR_STYLE if error and text else "")
        self.message_label.setVisible(bool(text))

    # ----- generation ----------------------------------------------------------------------

    def _on_generate_clicked(self) -> None:
        if self._generation_task is not None:
            self.stop_generation()
        else:
            self.generate()

    def _generation_job(self, predictor: Predictor, prompt: str, settings: dict[str, Any]) -> Callable:
        def job(report: Callable[[int, int], None], cancelled: Callable[[], bool]) -> str:
            pieces = []
            for piece in predictor.generate_iter(prompt, **settings):
                pieces.append(piece)
                with self._generated_lock:  # handed to the GUI thread through _on_generation_progress
                    self._generated.append(piece)
                report(len(pieces), settings["max_tokens"])
                if cancelled():
                    break
            return "".join(pieces)

        return job

    def _take_generated(self) -> str:
        with self._generated_lock:
            text, self._generated = "".join(self._generated), []
        return text

    def _on_generation_progress(self, _done: int, _total: int) -> None:
        text = self._take_generated()
        if text:
            cursor = self.output_edit.textCursor()
            cursor.movePosition(cursor.MoveOperation.End)
            cursor.insertText(text)

    def _on_generation_done(self, full_text: str) -> None:
        self._on_generation_progress(0, 0)
        self._generation_task = None
        self.generate_button.setText("Generate")
        self.generation_finished.emit(full_text)

    def _on_generation_error(self, exc: BaseException, details: str) -> None:
        self._generation_task = None
        self.generate_button.setText("Generate")
        if isinstance(exc, LMStudioError):
            self._show_message(str(exc))
        else:
            self.events.error.emit(describe_exception(exc), details)
