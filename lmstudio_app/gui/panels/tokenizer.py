"""Choose and train a tokenizer, and see how it cuts any text into tokens and IDs.

The plugin's settings form is generated from its params dataclass. Training (and tokenizing
the corpus right after, so the token counts and compression are known) runs on the thread
pool with a progress bar and a Cancel button; the live view below re-tokenizes a sample
sentence on every keystroke, which is instant for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.data.corpus import TokenizedCorpus
from lmstudio_app.errors import Cancelled, LMStudioError
from lmstudio_app.params import params_to_dict
from lmstudio_app.session import Session
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_app.training.controller import RunState

from ..dialogs import describe_exception
from ..events import AppEvents
from ..widgets.plugin_chooser import ChooserPanel, PluginChooser
from ..widgets.token_chips import TokenChips, is_word_level
from ..worker import BackgroundTask, run_in_thread

DEFAULT_SAMPLE = "The cat sat on the mat."


def vocabulary_text(tokenizer: Tokenizer) -> str:
    """The vocabulary size with its special tokens counted in and named: "257 (256 + 1 special:
    <|endoftext|>)", so the count matches the IDs a chip can show."""
    specials = [t.content for t in tokenizer.hf.get_added_tokens_decoder().values() if t.special]
    total = tokenizer.vocab_size
    if not specials:
        return f"{total:,}"
    return f"{total:,} ({total - len(specials):,} + {len(specials)} special: {', '.join(specials)})"


class TokenizerPanel(ChooserPanel, QWidget):
    """Tokenizer plugin + settings, a Train button, corpus statistics and live token chips."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self._task: BackgroundTask[Any] | None = None
        self._phase = ""
        self._cancel_requested = False

        self.chooser = PluginChooser(session.registry.tokenizers(), "tokenizer")

        self.train_button = QPushButton("Train tokenizer")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)  # a tokenizer note can be a long sentence
        self.vocab_label = QLabel("—")
        self.tokens_label = QLabel("—")
        self.compression_label = QLabel("—")
        # Bytes per token: the compression in the unit bits per byte divides by, comparable across
        # tokenizers and scripts (a character of Chinese text is 3 UTF-8 bytes, of English text 1).
        self.bytes_per_token_label = QLabel("—")
        self.bytes_per_token_label.setToolTip("UTF-8 bytes of the corpus per token: a loss in nats per token "
                                              "divided by this (and by ln 2) is bits per byte")

        self.sample_edit = QLineEdit(DEFAULT_SAMPLE)
        self.sample_edit.setPlaceholderText("Type any text to see its tokens")
        self.sample_edit.textChanged.connect(self.update_sample)
        self.chips = TokenChips()
        self.chips.set_placeholder("Train the tokenizer to see how it splits this text")
        self.sample_count_label = QLabel()

        settings = QGroupBox("Tokenizer")
        settings_layout = QVBoxLayout(settings)
        settings_layout.addWidget(self.chooser)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        settings_layout.addLayout(buttons)
        settings_layout.addWidget(self.progress_bar)
        settings_layout.addWidget(self.status_label)
        stats = QFormLayout()
        stats.addRow("Vocabulary size", self.vocab_label)
        stats.addRow("Corpus tokens", self.tokens_label)
        stats.addRow("Characters per token", self.compression_label)
        stats.addRow("Bytes per token", self.bytes_per_token_label)
        settings_layout.addLayout(stats)
        live = QGroupBox("Try it")
        live_layout = QVBoxLayout(live)
        live_layout.addWidget(self.sample_edit)
        live_layout.addWidget(self.chips)
        live_layout.addWidget(self.sample_count_label)
        layout = QVBoxLayout(self)
        layout.addWidget(settings)
        layout.addWidget(live)
        layout.addStretch(1)

        self.chooser.plugin_chosen.connect(self._on_plugin_chosen)
        self.chooser.edited.connect(self._apply_settings)
        events.tokenizer_changed.connect(self._on_tokenizer_changed)
        events.corpus_tokenized.connect(self.update_stats)
        events.corpus_changed.connect(self.update_stats)
        events.run_state_changed.connect(self._on_run_state)
        self.sync_from_session()
        self._on_run_state(session.run.state)

    # ----- settings --------------------------------------------------------------------------

    def sync_from_session(self) -> None:
        """Show the session's tokenizer choice and params (after a preset or a loaded run)."""
        choice = self.session.config.tokenizer
        self.chooser.set_choice(choice.plugin, choice.params)
        self._label_train_button()
        self.update_stats()
        self.update_sample()

    def _label_train_button(self) -> None:
        trains = self.chooser.spec().trains_on_corpus
        self.train_button.setText("Train tokenizer" if trains else "Build tokenizer")

    def _on_plugin_chosen(self) -> None:
        self._label_train_button()
        self._apply_settings()

    def _apply_settings(self) -> None:
        if self.form is None:
            return
        try:
            self.session.set_tokenizer(self.plugin(), self.form.values())
        except LMStudioError as exc:
            self._show_error(str(exc))
            return
        self._show_error("")  # the session announces the change: _on_tokenizer_changed follows

    def _on_tokenizer_changed(self) -> None:
        """Reload the form only when the session's choice differs from it (a preset, a loaded
        run): the person's own edit arrives here too and must not reset what they are typing."""
        choice = self.session.config.tokenizer
        current = params_to_dict(self.form.params()) if self.form and not self.form.error() else None
        if choice.plugin != self.plugin() or current != choice.params:
            self.sync_from_session()
        else:
            self.update_stats()
            self.update_sample()

    def _on_run_state(self, state: RunState) -> None:
        """Locked while a run trains: an edit now could not change the run, and would silently
        not (the run uses the tokenizer it started with)."""
        self.chooser.set_locked(state.active, "Locked while training: stop the run to change the tokenizer "
                                "(a change applies to the next run)")
        self.train_button.setEnabled(not state.active and self._task is None)

    # ----- training --------------------------------------------------------------------------

    def is_busy(self) -> bool:
        return self._task is not None

    def train(self) -> None:
        """Build (train) the tokenizer on the corpus, then tokenize the corpus, off the UI thread."""
        if self._task is not None or (self.form is not None and self.form.error()):
            return
        self._set_busy(True)
        self._cancel_requested = False
        self._phase = "Training the tokenizer…"
        self._task = run_in_thread(self._job(), self._on_trained, self._on_failed, self._on_progress)

    def _job(self) -> Callable[[Callable[[int, int], None], Callable[[], bool]], TokenizedCorpus]:
        session = self.session

        def job(report: Callable[[int, int], None], cancelled: Callable[[], bool]) -> TokenizedCorpus:
            session.build_tokenizer(report, cancelled)
            self._phase = "Tokenizing the corpus…"  # read by _on_progress in the GUI thread
            return session.tokenize(report, cancelled)

        return job

    def cancel(self) -> None:
        if self._task is not None:
            self._cancel_requested = True
            self._task.cancel()
            self.status_label.setText("Cancelling…")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setFormat(f"{self._phase} %p%")
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(min(done, max(total, 1)))

    def _on_trained(self, corpus: TokenizedCorpus) -> None:
        self._set_busy(False)
        self.update_stats()
        self.events.status_message.emit(f"Tokenizer ready: vocabulary of {corpus.vocab_size:,}")

    def _on_failed(self, exc: BaseException, details: str) -> None:
        self._set_busy(False)
        self.update_stats()  # a tokenizer built before the cancel is real (the session announced it)
        if isinstance(exc, Cancelled):
            self.status_label.setText("Cancelled" if self._cancel_requested else str(exc))
        elif isinstance(exc, LMStudioError):
            self.status_label.setText("")
            self._show_error(str(exc))
        else:
            self.status_label.setText("")
            self.events.error.emit(describe_exception(exc), details)

    def _set_busy(self, busy: bool) -> None:
        if not busy:
            self._task = None
        editable = not busy and not self.chooser.locked  # a run training locks it too
        self.train_button.setEnabled(editable)
        self.cancel_button.setEnabled(busy)
        self.plugin_combo.setEnabled(editable)
        if self.form is not None:
            self.form.setEnabled(editable)
        self.progress_bar.setVisible(busy)
        if busy:
            self.progress_bar.setRange(0, 0)  # busy indicator until the first report
            self.status_label.setText("")
            self._show_error("")

    # ----- views -------------------------------------------------------------------------------

    def update_stats(self) -> None:
        tokenizer, corpus = self.session.tokenizer, self.session.corpus
        self.vocab_label.setText(vocabulary_text(tokenizer) if tokenizer is not None else "—")
        self.tokens_label.setText(f"{corpus.n_tokens:,}" if corpus is not None else "—")
        self.compression_label.setText(f"{corpus.chars_per_token:.2f}" if corpus is not None else "—")
        bytes_per_token = corpus.bytes_per_token if corpus is not None else 0.0  # 0.0: not known
        self.bytes_per_token_label.setText(f"{bytes_per_token:.2f}" if bytes_per_token else "—")
        if self._task is None:
            if corpus is not None:
                self.status_label.setText(f"Ready: {corpus.n_tokens:,} tokens")
            elif tokenizer is None:
                trains = self.chooser.spec().trains_on_corpus
                self.status_label.setText("Not trained yet" if trains else "Not built yet")
            else:  # built (or a run's), the corpus not tokenized with it yet
                self.status_label.setText("Ready; the corpus is tokenized at Start (or on Tokenize in the Data panel)")
            notes = tokenizer.notes if tokenizer is not None else []
            if notes:  # e.g. BPE learned fewer tokens than asked: the CLI prints the same lines
                self.status_label.setText("\n".join([self.status_label.text(), *notes]))

    def update_sample(self) -> None:
        tokenizer = self.session.tokenizer
        text = self.sample_edit.text()
        if tokenizer is None:
            self.chips.clear()
            self.sample_count_label.setText("")
            return
        tokens = tokenizer.encode_with_offsets(text)
        self.chips.set_unknown_id(tokenizer.unk_id)
        self.chips.set_tokens(tokens)
        unknown = sum(1 for t in tokens if t.id == tokenizer.unk_id) if tokenizer.unk_id is not None else 0
        what = "words" if is_word_level(tokenizer) else "characters"
        note = f" · {unknown} unknown ({what} it has no token for: <unk>)" if unknown else ""
        self.sample_count_label.setText(f"{len(tokens)} tokens for {len(text)} characters{note}")
