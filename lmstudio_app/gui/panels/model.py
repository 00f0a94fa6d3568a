"""Choose a model plugin and its size, and see what it will cost before training it.

The settings form is generated from the plugin's params dataclass; every valid change goes to
``session.set_model``. The summary (parameters, FLOPs per token, memory, time per step) comes
from ``session.model_preview()``, which builds the model on the meta device and times a few
real steps (or a matmul, for a large model), so it runs through a debounced
:class:`~lmstudio_app.gui.queries.LatestQuery` (only the newest answer shown), and not while a run trains.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from lmstudio_app.errors import Cancelled, LMStudioError
from lmstudio_app.params import params_to_dict
from lmstudio_app.session import Session
from lmstudio_app.training.controller import RunState
from lmstudio_app.training.model_preview import ModelPreview

from ..dialogs import describe_exception
from ..events import AppEvents
from ..queries import LatestQuery
from ..widgets.plugin_chooser import ChooserPanel, PluginChooser
from ..widgets.training_progress import format_duration

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
        self._stale = False  # a refresh was asked for while training: timing steps now would slow it
        self._query = LatestQuery(self, debounce_ms=PREVIEW_DEBOUNCE_MS)
        self._query.answered.connect(self._on_preview)
        self._query.failed.connect(lambda exc, details: events.error.emit(describe_exception(exc), details))

        self.chooser = PluginChooser(session.registry.models(), "model")

        self.parameters_label = QLabel("—")
        self.non_embedding_label = QLabel("—")
        self.flops_label = QLabel("—")
        self.context_label = QLabel("—")
        self.memory_label = QLabel("—")
        self.step_time_label = QLabel("—")
        self.total_time_label = QLabel("—")
        self.total_time_label.setObjectName("totalTimeLabel")
        self.total_time_label.setToolTip("Max steps (Training panel) × the time per step above; evaluations "
                                         "and samples add a little")
        for label in (self.parameters_label, self.non_embedding_label, self.flops_label, self.context_label,
                      self.memory_label, self.step_time_label, self.total_time_label):
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
        rows.addRow("Estimated total time", self.total_time_label)
        layout = QVBoxLayout(self)
        layout.addWidget(settings)
        layout.addWidget(summary)
        layout.addStretch(1)

        self.chooser.plugin_chosen.connect(self._apply_settings)
        self.chooser.edited.connect(self._apply_settings)
        events.model_config_changed.connect(self._on_config_changed)
        events.train_config_changed.connect(self.refresh_preview)
        events.train_config_changed.connect(self._show_total_time)  # at once: max steps alone needs no new preview
        events.tokenizer_changed.connect(self.refresh_preview)
        events.run_state_changed.connect(self._on_run_state)
        self.sync_from_session()

    # ----- public API ----------------------------------------------------------------------

    def preview(self) -> ModelPreview | None:
        """The summary currently shown (None before the first one or after an error)."""
        return self._preview

    def is_busy(self) -> bool:
        return self._query.is_busy()

    def refresh_preview(self, *_args: Any) -> None:
        if self.session.run.state.active:
            self._stale = True
            return
        if self.form is not None and self.form.error():
            return  # the form already says what is wrong; the session still has the last valid model
        session = self.session

        def job() -> ModelPreview | str | None:
            try:
                return session.model_preview()
            except Cancelled:  # the corpus changed under the tokenizer it built: ask again
                return None
            except LMStudioError as exc:
                return str(exc)

        self._query.request(job)

    def _on_run_state(self, state: RunState) -> None:
        # Locked while a run trains: the run keeps the model it was built with, so an edit
        # would silently do nothing until the next run.
        self.chooser.set_locked(state.active, "Locked while training: stop the run to change the model "
                                "(a change applies to the next run)")
        if not state.active and self._stale:
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
        self._show_error("")  # the session announces the change: _on_config_changed refreshes

    def _on_config_changed(self) -> None:
        """Reload the form only when the session's choice differs from it (a preset, a loaded run)."""
        choice = self.session.config.model
        current = params_to_dict(self.form.params()) if self.form and not self.form.error() else None
        if choice.plugin != self.plugin() or current != choice.params:
            self.sync_from_session()
        else:
            self.refresh_preview()

    # ----- preview ---------------------------------------------------------------------------

    def _on_preview(self, outcome: ModelPreview | str | None) -> None:
        if outcome is None:
            self.refresh_preview()
        elif isinstance(outcome, str):
            self._preview = None
            self._show_error(outcome)
            self._set_summary(None)
        else:
            self._show_error("")
            self._preview = outcome
            self._set_summary(outcome)
            self.preview_ready.emit(outcome)

    def _set_summary(self, preview: ModelPreview | None) -> None:
        if preview is None:
            for label in (self.parameters_label, self.non_embedding_label, self.flops_label, self.context_label,
                          self.memory_label, self.step_time_label, self.total_time_label):
                label.setText("—")
            return
        self.parameters_label.setText(format_count(preview.parameters))
        self.non_embedding_label.setText(format_count(preview.non_embedding_parameters))
        self.flops_label.setText(format_flops(preview.flops_per_token))
        self.context_label.setText(f"{preview.context_length:,} tokens")
        self.memory_label.setText(f"{preview.memory_bytes / 1e6:,.1f} MB")
        how = "measured" if preview.step_time_measured else "estimated from matmul speed"
        self.step_time_label.setText(f"{format_seconds(preview.seconds_per_step)} on {preview.device} ({how})")
        self._show_total_time()

    def total_seconds(self) -> float | None:
        """The whole run's estimated training time: max steps × the time per step shown."""
        preview = self._preview
        if preview is None or preview.seconds_per_step is None:
            return None
        return self.session.config.train.max_steps * preview.seconds_per_step

    def _show_total_time(self) -> None:
        total = self.total_seconds()
        if total is None:
            self.total_time_label.setText("—")
            return
        steps = self.session.config.train.max_steps
        shown = format_seconds(total) if total < 10 else format_duration(total)
        self.total_time_label.setText(f"about {shown} for {steps:,} steps")
