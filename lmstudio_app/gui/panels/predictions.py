"""The heart of the app: what the model thinks comes next, for the person's own prompt.

The prompt is shown as token chips coloured by surprise, the next-token candidates as a ranked
table and a bar chart, with temperature / top-k / top-p controls and a Generate button that
streams a continuation. The prompt is the session's (``session.set_prompt``); the window's
:class:`~lmstudio_app.gui.queries.PromptScorer` scores it once per change, off the UI thread and on
a copy of the live weights while training runs, and this panel and the pipeline view both show
that one answer. Sampling settings re-read the answer's logits: moving a slider asks no model.

When the corpus is synthetic (the demo grammar) and its exact odds are known
(``session.truth()``), the truth sits beside the model: each candidate's true probability in the
table ("true p") and in the chart (an outline per bar), and KL(true ‖ model) in the summary.

For any corpus, once it is tokenized the panel has the session index the training text in the
background (``session.build_continuations``, once per token array) and then shows what followed
the prompt's last ``n`` tokens there: each candidate's share in the table ("in text") and the most
frequent followers in a note under the summary, labelled as counts, not the truth. A
banner says when the weights probed are those kept at an earlier step, with a way back to live.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
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

from lmstudio_app.data.continuations import Continuations
from lmstudio_app.errors import Cancelled, LMStudioError
from lmstudio_app.inference.distributions import NextTokenPrediction
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.inference.truth import TokenTruth
from lmstudio_app.session import DEFAULT_PROMPT, Session

from .. import theme
from ..dialogs import describe_exception
from ..events import AppEvents
from ..queries import NO_MODEL_HINT, PromptAnswer
from ..widgets.probability_chart import CandidateTable, ProbabilityChart, SamplingControls
from ..widgets.token_chips import TokenChips, is_word_level, probability_color, visible_text
from ..worker import run_in_thread

__all__ = ["DEFAULT_PROMPT", "NO_MODEL_HINT", "PredictionsPanel", "counts_note", "truth_label"]

COUNTS_NOTE_TOKENS = 3  # the most frequent followers the note names


def counts_note(counts: Continuations, context: str, names: list[str]) -> str:
    """The one-line note under the summary: what followed the matched context in the training
    text (``context``: those tokens as text; ``names``: the most frequent followers' text, in
    ``counts.counts`` order), labelled as counts."""
    shares = counts.probabilities()
    followers = ", ".join(f"{name} {share:.1%}" for name, share in zip(names, shares.values(), strict=False))
    if counts.n == 0:
        where = f"in the training text, no context matched; over all {counts.occurrences:,} tokens"
    else:
        tokens = f"{counts.n} token{'s' if counts.n != 1 else ''}"
        where = (f"in the training text, after the last {tokens} ('{context}', seen "
                 f"{counts.occurrences:,} time{'s' if counts.occurrences != 1 else ''})")
    return f"{where}: {followers or 'nothing'} — counts, not the truth"


def truth_label(truth: TokenTruth) -> str:
    """How the chart's legend names a truth: "truth (demo grammar)" from its spec's description
    ("The demo grammar: every sentence…"), else its name."""
    head = (truth.spec.description or "").split(":", 1)[0].strip()
    if head.lower().startswith("the "):
        head = head[4:]
    if not head or len(head) > 30:
        head = truth.spec.name
    return f"truth ({head})"


def _readable(text: str) -> str:
    """Text for a one-line note: spaces as they are, newlines and other control characters shown."""
    return "".join(ch if ch == " " else visible_text(ch) for ch in text)


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
        self._truth: TokenTruth | None = None  # the corpus's exact odds, for the answer shown
        self._true_next: dict[int, float] | None = None  # ... after its prompt (None: unknown)
        self._kl: float | None = None  # KL(true ‖ shown prediction), nats
        self._counts: Continuations | None = None  # what followed the answer's prompt in the training text
        self._index_task: Any = None  # the training text's index being built
        self._generation_task: Any = None
        self._generated: list[str] = []
        self._generated_lock = threading.Lock()
        self._build_ui()
        self.scores.scored.connect(self._on_scored)
        events.prompt_changed.connect(self._on_session_prompt)
        events.view_step_changed.connect(self._on_view_step_changed)
        for signal in (events.corpus_tokenized, events.training_started, events.model_changed):
            signal.connect(self._ensure_index)
        events.continuations_ready.connect(self._refresh_counts)
        if self.scores.latest is not None:
            self._on_scored(self.scores.latest)
        self._ensure_index()

    # ----- UI ------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.prompt_edit = QPlainTextEdit(self.session.prompt)
        self.prompt_edit.setPlaceholderText("Type a prompt…")
        self.prompt_edit.setToolTip("The prompt: what the model continues (click a candidate below to append it)")
        self.prompt_edit.setFixedHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.prompt_edit.textChanged.connect(self._on_prompt_edited)
        self.chips = TokenChips()
        self.chips.setToolTip("The prompt's tokens, green = the model expected it, red = surprising")
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.summary_label = QLabel()
        self.summary_label.setWordWrap(True)
        self.counts_label = QLabel()
        self.counts_label.setObjectName("countsLabel")
        self.counts_label.setWordWrap(True)
        self.counts_label.setToolTip("How often each token followed the end of the prompt in the training "
                                     "text: counts in this one text (what a model that memorised it would "
                                     "say), not the true odds of the language")
        self.counts_label.setVisible(False)
        self.view_step_banner = QFrame()
        self.view_step_banner.setObjectName("viewStepBanner")
        self.view_step_banner.setFrameShape(QFrame.Shape.StyledPanel)
        self.view_step_label = QLabel()
        self.view_step_label.setObjectName("viewStepLabel")
        self.back_to_live_button = QPushButton("Back to live")
        self.back_to_live_button.setObjectName("backToLiveButton")
        self.back_to_live_button.setToolTip("Probe the latest weights again")
        self.back_to_live_button.clicked.connect(self.back_to_live)
        banner = QHBoxLayout(self.view_step_banner)
        banner.setContentsMargins(6, 2, 6, 2)
        banner.addWidget(self.view_step_label, 1)
        banner.addWidget(self.back_to_live_button)
        self.view_step_banner.setVisible(False)

        self.sampling = SamplingControls()
        self.sampling.changed.connect(self._show_answer)  # re-reads the scored logits: no model asked

        self.table = CandidateTable()
        self.table.candidate_clicked.connect(self.append_candidate)
        self.chart = ProbabilityChart()
        self.chart.bar_clicked.connect(self.append_candidate)
        self._columns_shown = (False, False)  # ("true p", "in text") when the table was last fitted
        self.results_splitter = splitter = QSplitter(Qt.Orientation.Horizontal)
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
        self.output_edit.setMinimumHeight(self.fontMetrics().lineSpacing() * 2 + 12)  # a short screen: two lines
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
        layout.addWidget(self.view_step_banner)
        layout.addWidget(self.prompt_edit)
        layout.addWidget(self.chips)
        layout.addWidget(self.message_label)
        layout.addWidget(self.sampling)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.counts_label)
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

    def true_next(self) -> dict[int, float] | None:
        """The exact odds of the next token after the shown prompt (None without a truth)."""
        return self._true_next

    def counts(self) -> Continuations | None:
        """What followed the shown prompt's end in the training text (None until indexed)."""
        return self._counts

    def counts_text(self) -> str:
        """The note under the summary ("" while hidden)."""
        return self.counts_label.text() if not self.counts_label.isHidden() else ""

    def kl_to_truth(self) -> float | None:
        """KL(true ‖ the shown prediction) in nats, as the summary says (None without a truth)."""
        return self._kl

    def view_step_text(self) -> str:
        """The banner's text ("" while the live weights are shown)."""
        return self.view_step_label.text() if not self.view_step_banner.isHidden() else ""

    def back_to_live(self) -> None:
        """Probe the latest weights again (the banner's button)."""
        try:
            self.session.set_view_step(None)
        except LMStudioError as exc:
            self._show_message(str(exc))

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
            # Back to the prompt: what is typed next goes on the prompt, and Space types a space
            # there instead of reaching the table (or the window's pause key).
            self.prompt_edit.setFocus(Qt.FocusReason.OtherFocusReason)

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
        self._truth, self._true_next = self._truth_after(answer)
        self._counts = self._counts_after(answer.text)
        self._show_view_step(answer.view_step)
        self._show_answer()

    def _truth_after(self, answer: PromptAnswer) -> tuple[TokenTruth | None, dict[int, float] | None]:
        """The corpus's truth and its exact next-token odds after the answer's prompt, if known
        (cheap: the truth is built once per tokenizer, a lookup is one encode)."""
        if answer.score is None:
            return None, None
        try:
            truth = self.session.truth()
            return (truth, truth.next_token(answer.text)) if truth is not None else (None, None)
        except LMStudioError:  # a tokenizer the truth cannot use: show the model alone
            return None, None

    # ----- what followed in the training text ----------------------------------------------

    def _ensure_index(self, *_args: Any) -> None:
        """Index the training text in the background, once per token array (the session keeps
        it): when there is a tokenized corpus and no index for it yet."""
        session = self.session
        if self._index_task is not None or (session.corpus is None and session.trainer is None):
            return
        if session.continuations("") is not None:  # built already
            return
        self._index_task = run_in_thread(lambda report, cancelled: session.build_continuations(report, cancelled),
                                         self._on_index_done, self._on_index_error)

    def _on_index_done(self, _index: object) -> None:
        self._index_task = None
        self._refresh_counts()

    def _on_index_error(self, exc: BaseException, details: str) -> None:
        self._index_task = None
        if not isinstance(exc, (Cancelled, LMStudioError)):
            self.events.error.emit(describe_exception(exc), details)

    def _refresh_counts(self, *_args: Any) -> None:
        answer = self._answer
        if answer is not None:
            self._counts = self._counts_after(answer.text)
            self._show_answer()

    def _counts_after(self, text: str) -> Continuations | None:
        """The training text's counts after the end of ``text`` (None without an index; a query
        takes well under a millisecond)."""
        try:
            return self.session.continuations(text) if text else None
        except LMStudioError:
            return None

    def _tokenizer(self) -> Any:
        trainer = self.session.trainer
        return trainer.tokenizer if trainer is not None else self.session.tokenizer

    def _show_counts(self, counts: Continuations | None) -> None:
        if counts is None:
            self.counts_label.clear()
            self.counts_label.setVisible(False)
            return
        tokenizer = self._tokenizer()
        try:
            decode = (lambda ids: tokenizer.decode(list(ids))) if tokenizer is not None else None
            context = _readable(decode(counts.context)) if decode is not None else ""
            top = list(counts.counts)[:COUNTS_NOTE_TOKENS]
            names = [_readable(decode([i])).strip() or visible_text(decode([i])) if decode is not None else str(i)
                     for i in top]
        except LMStudioError:
            context, names = "", [str(i) for i in list(counts.counts)[:COUNTS_NOTE_TOKENS]]
        self.counts_label.setText(counts_note(counts, context, names))
        self.counts_label.setToolTip(counts.describe())
        self.counts_label.setVisible(True)

    def _on_view_step_changed(self, step: int | None) -> None:
        if step is None:  # back to live: say so at once, the fresh answer follows
            self._show_view_step(None)

    def _show_view_step(self, step: int | None) -> None:
        if step is None:
            self.view_step_banner.setVisible(False)
            self.view_step_label.clear()
            return
        total = self._max_steps()
        of = f" of {total}" if total else ""
        self.view_step_label.setText(f"Showing the model at step {step}{of} (the weights kept then), not the "
                                     "latest")
        self.view_step_banner.setVisible(True)

    def _max_steps(self) -> int | None:
        """The run's max steps: the live trainer's, else the loaded run's config."""
        trainer = self.session.trainer
        config = trainer.config if trainer is not None else (
            self.session.config if self.session.loaded_run is not None else None)
        return config.train.max_steps if config is not None else None

    # ----- display -------------------------------------------------------------------------

    def _show_answer(self) -> None:
        answer = self._answer
        if answer is None or answer.text != self.prompt():
            return  # the answer for the current prompt is on its way
        if answer.score is None:
            self._clear_results(answer.problem or NO_MODEL_HINT, error=answer.problem != NO_MODEL_HINT)
            if answer.problem == NO_MODEL_HINT:  # still show how the prompt tokenizes, and what the text says
                self.chips.set_tokens(answer.tokens)
                self._show_counts(self._counts)
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
        self.chips.set_unknown_id(score.tokenizer.unk_id)
        self.chips.set_tokens(prediction.tokens, colors, tips)
        true = self._true_next
        counts = self._counts
        in_text = counts.probabilities() if counts is not None else None
        self.table.set_candidates(prediction.candidates, true, in_text)
        shown = (true is not None, in_text is not None)
        if shown != self._columns_shown:
            self._columns_shown = shown
            self._fit_table()
        self.chart.set_candidates(prediction.candidates, true,
                                  truth_label(self._truth) if true is not None and self._truth is not None else None)
        covered = sum(c.prob for c in prediction.candidates)
        vocab = len(prediction.probs)
        parts = [
            f"entropy {prediction.entropy:.3f} nats (perplexity {math.exp(prediction.entropy):.1f} of {vocab} tokens)",
            f"top-{len(prediction.candidates)} cover {covered:.1%} of the probability",
        ]
        self._kl = None
        if true is not None and self._truth is not None:
            self._kl = float(self._truth.kl(true, prediction.probs))
            parts.append(f"KL(true ‖ model) = {self._kl:.3f} nats")
            listed = {c.id for c in prediction.candidates}
            unlisted = sum(p for token_id, p in true.items() if token_id not in listed)
            if unlisted > 1e-9:  # the chart's outlines cannot show these: say how much is missing
                parts.append(f"true next tokens not listed: {unlisted:.1%} of the truth")
        self.summary_label.setText(" · ".join(parts))
        self._show_counts(counts)
        notes = []
        if prediction.context_start > 0:
            notes.append(f"only the last {len(prediction.tokens) - prediction.context_start} tokens fit the "
                         f"model's context")
        if prediction.unknown_chars:
            tokenizer = score.tokenizer
            what = "words" if is_word_level(tokenizer) else "characters"
            notes.append(f"{what} the tokenizer does not know: " + " ".join(prediction.unknown_chars))
        self._show_message("; ".join(notes), error=False)
        self.prediction_ready.emit(prediction)

    def _fit_table(self) -> None:
        """Once per appearance of the "true p" or "in text" column: widen the table to show all its columns,
        if the chart keeps a usable width (the splitter is the person's to move after that)."""
        sizes = self.results_splitter.sizes()
        total = sum(sizes)
        wanted = self.table.preferred_width()
        if total > 0 and sizes[0] < wanted:
            table = min(wanted, max(total - 260, sizes[0]))
            self.results_splitter.setSizes([table, total - table])

    def _clear_results(self, message: str, error: bool) -> None:
        self._prediction = None
        self._kl = None
        self.table.set_candidates([])
        self.chart.set_candidates([])
        self.summary_label.clear()
        self._show_counts(None)
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
