"""Choose a model plugin and its size, and see what it will cost before training it.

The settings form is generated from the plugin's params dataclass; every valid change goes to
``session.set_model``. The summary (parameters, FLOPs per token, memory, time per step) comes
from ``session.model_preview()``, which builds the model on the meta device and times a few
real steps (or a matmul, for a large model), so it runs on the thread pool, debounced, with only
the newest answer shown, and not while a run trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from lmstudio_app.errors import Cancelled, LMStudioError
from lmstudio_app.params import params_to_dict
from lmstudio_app.session import ModelPreview, Session

from ..dialogs import describe_exception
from ..events import AppEvents
from ..widgets.plugin_chooser import ChooserPanel, PluginChooser
from ..worker import run_in_thread

PREVIEW_DEBOUNCE_MS = 300


def format_count(n: float) -> str:
    """1234567 → '1,234,567 (1.23 M)'."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{int(n):,} ({n / scale:.3g} {suffix})"
    return f"{int(n):,}"


def format_flops(flops: float) -> str:
    for scale, suffix in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if flops >= scale:
            return f"{flops / scale:.3g} {suffix}"
    return f"{flops:.3g} FLOP"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


class ModelPanel(ChooserPanel, QWidget):
    """Model plugin + generated settings form + a live size/cost summary."""

    preview_ready = Signal(object)  # the ModelPreview now shown

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self._preview: ModelPreview | None = None
        self._request_id = 0
        self._in_flight = False
        self._pending = False
        self._emitting = False
        self._training = False  # a run is training: timing steps now would slow it, and be slowed
        self._stale = False  # a refresh was asked for while training

        self.chooser = PluginChooser(session.registry.models(), "model")

        self.parameters_label = QLabel("—")
        self.non_embedding_label = QLabel("—")
        self.flops_label = QLabel("—")
        self.context_label = QLabel("—")
        self.memory_label = QLabel("—")
        self.step_time_label = QLabel("—")
        for label in (self.parameters_label, self.non_embedding_label, self.flops_label, self.context_label,
                      self.memory_label, self.step_time_label):
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.memory_label.setToolTip("Weights, gradients, optimiser state and the activations of one batch")
        self.step_time_label.setToolTip("A model this small: a few real training steps timed on random tokens.\n"
                                        "A larger one: estimated from its FLOPs and this device's matmul speed.")

        settings = QGroupBox("Model")
        settings_layout = QVBoxLayout(settings)
        settings_layout.addWidget(self.chooser)
        summary = QGroupBox("Summary")
        rows = QFormLayout(summary)
        rows.addRow("Parameters", self.parameters_label)
        rows.addRow("Without embeddings", self.non_embedding_label)
        rows.addRow("FLOPs per token (training)", self.flops_label)
        rows.addRow("Context length", self.context_label)
        rows.addRow("Estimated memory", self.memory_label)
        rows.addRow("Estimated time per step", self.step_time_label)
        layout = QVBoxLayout(self)
        layout.addWidget(settings)
        layout.addWidget(summary)
        layout.addStretch(1)

        self._debounce = QTimer(self, singleShot=True, interval=PREVIEW_DEBOUNCE_MS)
        self._debounce.timeout.connect(self._start_preview)
        self.chooser.plugin_chosen.connect(self._apply_settings)
        self.chooser.edited.connect(self._apply_settings)
        events.model_config_changed.connect(self._on_config_changed)
        events.train_config_changed.connect(self.refresh_preview)
        events.tokenizer_changed.connect(self.refresh_preview)
        events.training_started.connect(self._on_training_started)
        events.training_finished.connect(self._on_training_finished)
        self.sync_from_session()

    # ----- public API ----------------------------------------------------------------------

    def preview(self) -> ModelPreview | None:
        """The summary currently shown (None before the first one or after an error)."""
        return self._preview

    def is_busy(self) -> bool:
        return self._in_flight or self._pending or self._debounce.isActive()

    def refresh_preview(self, *_args: Any) -> None:
        if self._training:
            self._stale = True
            return
        self._debounce.start()

    def _on_training_started(self) -> None:
        self._training = True

    def _on_training_finished(self, *_args: Any) -> None:
        self._training = False
        if self._stale:
            self._stale = False
            self.refresh_preview()

    def sync_from_session(self) -> None:
        """Show the session's model choice and params (after a preset or a loaded run)."""
        choice = self.session.config.model
        self.chooser.set_choice(choice.plugin, choice.params)
        self.refresh_preview()

    # ----- settings ------------------------------------------------------------------------

    def _apply_settings(self) -> None:
        if self.form is None:
            return
        try:
            self.session.set_model(self.plugin(), self.form.values())
        except LMStudioError as exc:
            self._show_error(str(exc))
            return
        self._show_error("")
        self._emitting = True
        try:
            self.events.model_config_changed.emit()
        finally:
            self._emitting = False
        self.refresh_preview()

    def _on_config_changed(self) -> None:
        if self._emitting:
            return
        choice = self.session.config.model
        current = params_to_dict(self.form.params()) if self.form and not self.form.error() else None
        if choice.plugin != self.plugin() or current != choice.params:
            self.sync_from_session()
        else:
            self.refresh_preview()

    # ----- preview ---------------------------------------------------------------------------

    def _start_preview(self) -> None:
        if self._in_flight:
            self._pending = True
            return
        self._pending = False
        if self.form is not None and self.form.error():
            return  # the form already says what is wrong; the session still has the last valid model
        self._request_id += 1
        self._in_flight = True
        had_tokenizer = self.session.tokenizer is not None
        run_in_thread(self._preview_job(self._request_id, had_tokenizer), self._on_preview, self._on_preview_error)

    def _preview_job(self, request_id: int, had_tokenizer: bool) -> Callable[..., tuple]:
        session = self.session

        def job(_report: Any, _cancelled: Any) -> tuple:
            try:
                return request_id, had_tokenizer, session.model_preview(), None
            except Cancelled:  # the corpus changed under the tokenizer it built: ask again
                return request_id, had_tokenizer, None, None
            except LMStudioError as exc:
                return request_id, had_tokenizer, None, str(exc)

        return job

    def _on_preview(self, outcome: tuple) -> None:
        request_id, had_tokenizer, preview, problem = outcome
        self._in_flight = False
        if not had_tokenizer and self.session.tokenizer is not None:
            self.events.tokenizer_changed.emit()  # model_preview built it to learn the vocabulary size
        if preview is None and problem is None:
            self.refresh_preview()
        elif request_id == self._request_id and not self._pending:
            if problem is not None:
                self._preview = None
                self._show_error(problem)
                self._set_summary(None)
            else:
                self._show_error("")
                self._preview = preview
                self._set_summary(preview)
                self.preview_ready.emit(preview)
        if self._pending:
            self._start_preview()

    def _on_preview_error(self, exc: BaseException, details: str) -> None:
        self._in_flight = False
        self.events.error.emit(describe_exception(exc), details)
        if self._pending:
            self._start_preview()

    def _set_summary(self, preview: ModelPreview | None) -> None:
        if preview is None:
            for label in (self.parameters_label, self.non_embedding_label, self.flops_label, self.context_label,
                          self.memory_label, self.step_time_label):
                label.setText("—")
            return
        self.parameters_label.setText(format_count(preview.parameters))
        self.non_embedding_label.setText(format_count(preview.non_embedding_parameters))
        self.flops_label.setText(format_flops(preview.flops_per_token))
        self.context_label.setText(f"{preview.context_length:,} tokens")
        self.memory_label.setText(f"{preview.memory_bytes / 1e6:,.1f} MB")
        how = "measured" if preview.step_time_measured else "estimated from matmul speed"
        self.step_time_label.setText(f"{format_seconds(preview.seconds_per_step)} on {preview.device} ({how})")
