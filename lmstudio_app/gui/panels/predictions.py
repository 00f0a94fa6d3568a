"""The heart of the app: what the model thinks comes next, for the person's own prompt.

The prompt is shown as token chips coloured by surprise, the next-token candidates as a ranked
table and a bar chart, with temperature / top-k / top-p controls and a Generate button that
streams a continuation. The prompt is the session's (``session.set_prompt``); the window's
:class:`~lmstudio_app.gui.queries.PromptScorer` scores it once per change, off the UI thread and on
a copy of the live weights while training runs, and this panel and the pipeline view both show
that one answer. Sampling settings re-read the answer's logits: moving a slider asks no model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
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
from lmstudio_app.inference.distributions import NextTokenPrediction
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.session import DEFAULT_PROMPT, Session

from .. import theme
from ..dialogs import describe_exception
from ..events import AppEvents
from ..queries import NO_MODEL_HINT, PromptAnswer
from ..widgets.probability_chart import CandidateTable, ProbabilityChart, SamplingControls
from ..widgets.token_chips import TokenChips, probability_color
from ..worker import run_in_thread

__all__ = ["DEFAULT_PROMPT", "NO_MODEL_HINT", "PredictionsPanel"]


class PredictionsPanel(QWidget):
    """Prompt → chips by surprise, ranked candidates, chart, sampling controls, generation."""

    prediction_ready = Signal(object)  # the NextTokenPrediction now shown
    generation_finished = Signal(str)  # the whole continuation

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.scores = events.prompt_scores
        self._answer: PromptAnswer | None = None
        self._prediction: NextTokenPrediction | None = None
        self._generation_task: Any = None
        self._generated: list[str] = []
        self._generated_lock = threading.Lock()
        self._build_ui()
        self.scores.scored.connect(self._on_scored)
        events.prompt_changed.connect(self._on_session_prompt)
        if self.scores.latest is not None:
            self._on_scored(self.scores.latest)

    # ----- UI ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.prompt_edit = QPlainTextEdit(self.session.prompt)
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
        self.sampling.changed.connect(self._show_answer)  # re-reads the scored logits: no model asked

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
        return self.scores.is_busy()

    def refresh(self, *_args: Any) -> None:
        """Ask the model again about the prompt (the answer reaches every panel that shows it)."""
        self.scores.refresh()

    def append_candidate(self, index: int) -> None:
        """Append the ``index``-th listed candidate's text to the prompt (which re-predicts)."""
        if self._prediction is not None and 0 <= index < len(self._prediction.candidates):
            cursor = self.prompt_edit.textCursor()
            cursor.movePosition(cursor.MoveOperation.End)
            cursor.insertText(self._prediction.candidates[index].text)
            self.prompt_edit.setTextCursor(cursor)

    def generate(self) -> None:
        """Sample a continuation of the prompt, streaming it into the output box."""
        if not self.session.has_model():
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
            self._generation_job(prompt, settings),
            self._on_generation_done, self._on_generation_error, self._on_generation_progress,
        )
        self.generate_button.setText("Stop")

    def stop_generation(self) -> None:
        if self._generation_task is not None:
            self._generation_task.cancel()

    # ----- the prompt and its answer ---------------------------------------------------------

    def _on_prompt_edited(self) -> None:
        self.session.set_prompt(self.prompt())

    def _on_session_prompt(self, text: str) -> None:
        if text != self.prompt():  # set elsewhere (the session, another view): show it here too
            self.prompt_edit.setPlainText(text)

    def _on_scored(self, answer: PromptAnswer) -> None:
        self._answer = answer
        self._show_answer()

    # ----- display -------------------------------------------------------------------------

    def _show_answer(self) -> None:
        answer = self._answer
        if answer is None or answer.text != self.prompt():
            return  # the answer for the current prompt is on its way
        if answer.score is None:
            self._clear_results(answer.problem or NO_MODEL_HINT, error=answer.problem != NO_MODEL_HINT)
            if answer.problem == NO_MODEL_HINT:  # still show how the prompt tokenizes
                self.chips.set_tokens(answer.tokens)
            return
        score = answer.score
        try:
            prediction = score.prediction(temperature=self.temperature(), top_k=self.sampling.top_k(),
                                          top_p=self.sampling.top_p(), k=self.sampling.rows())
        except LMStudioError as exc:  # a sampling setting out of range
            self._clear_results(str(exc), error=True)
            return
        self._prediction = prediction
        surprise = score.surprise
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

    def _generation_job(self, prompt: str, settings: dict[str, Any]) -> Callable:
        session = self.session

        def job(report: Callable[[int, int], None], cancelled: Callable[[], bool]) -> str:
            predictor: Predictor | None = session.predictor()  # here: refreshing it may wait for a step
            if predictor is None:
                return ""
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
