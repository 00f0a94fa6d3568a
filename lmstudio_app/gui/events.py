"""Application-wide Qt signals: panels talk through these, never to each other directly."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal


class AppEvents(QObject):
    """One instance per main window, handed to every panel."""

    corpus_changed = Signal()  # files or text changed (session.text / file_infos)
    tokenizer_changed = Signal()  # session.tokenizer was (re)built or cleared
    corpus_tokenized = Signal()  # session.corpus is ready (token counts, compression)
    model_config_changed = Signal()  # session.config.model changed (plugin or params)
    train_config_changed = Signal()  # session.config.train changed
    training_started = Signal()
    training_paused = Signal()
    training_resumed = Signal()
    training_step = Signal(object)  # StepMetrics, at most every log_interval steps
    training_finished = Signal(str)  # the reason: "finished", "stopped", or an error message
    model_updated = Signal()  # the live model's weights changed enough to refresh predictions
    prompt_changed = Signal(str)  # the predictions panel's prompt (the pipeline view follows it)
    status_message = Signal(str)  # a transient status-bar message
    error = Signal(str, str)  # (one-line message, details/traceback) → error dialog
