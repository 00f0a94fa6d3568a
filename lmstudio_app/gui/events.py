"""The one adapter between the Qt-free session and the widgets: its events, on the GUI thread.

The session (``session.events``) and its run controller (``session.run.events``) emit psygnal
signals on whichever thread changed the state: a worker thread reading files, the training
thread after a step. :class:`AppEvents` connects to every one of them and re-emits it as a Qt
signal of the same name; Qt queues an emit from another thread, so panels always run their
slots on the GUI thread. Panels connect here and call the session; they never emit these
themselves (the GUI-only signals at the end are theirs to emit).

Step reports are bounded: a tiny model logging every step can report thousands of times a
second, and if the GUI thread falls behind (a dialog open, a slow redraw) the queued signals
would grow without limit. The training thread waits once :data:`MAX_PENDING_REPORTS` reports
are undelivered, so memory stays flat however long the run; a stop never waits (the GUI thread
may be blocked joining the training thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from shiboken6 import isValid

from ..session import Session
from ..training.control import StepMetrics
from .dialogs import describe_exception
from .queries import PromptScorer

MAX_PENDING_REPORTS = 256  # step reports queued for the GUI thread before training waits for it


class AppEvents(QObject):
    """One instance per main window, handed to every panel."""

    # ---- the session's own events (see lmstudio_app.session.SessionEvents) ----
    corpus_changed = Signal()
    tokenizer_changed = Signal()
    corpus_tokenized = Signal()
    data_config_changed = Signal()
    model_config_changed = Signal()
    train_config_changed = Signal()
    watch_config_changed = Signal()
    model_changed = Signal()
    run_loaded = Signal(object)  # Path
    prompt_changed = Signal(str)
    view_step_changed = Signal(object)  # int | None: the step whose kept weights are probed
    continuations_ready = Signal()  # session.continuations() can answer
    # ---- the run's (see lmstudio_app.training.controller.RunEvents) ----
    run_state_changed = Signal(object)  # RunState
    training_started = Signal()  # session.trainer is the prepared run, before its first step
    training_step = Signal(object)  # StepMetrics
    model_updated = Signal()  # the live weights moved enough to probe again
    training_finished = Signal(str)  # the reason ("finished", "stopped"), or the error message
    training_failed = Signal(object, str)  # (exception, traceback) of a failed preparation or run
    # ---- the GUI's own ----
    status_message = Signal(str)  # a transient status-bar message
    error = Signal(str, str)  # (one-line message, details/traceback) → error dialog

    _step_arrived = Signal(object)  # queued from the training thread to _deliver_step

    def __init__(self, session: Session, parent: QObject | None = None,
                 max_pending: int = MAX_PENDING_REPORTS) -> None:
        super().__init__(parent)
        self.session = session
        self.max_pending = max_pending
        self.pending = 0  # step reports emitted but not yet delivered in the GUI thread
        self._room = threading.Condition()
        self._links: list[tuple[Any, Callable[..., None]]] = []
        core, run = session.events, session.run.events
        for name in ("corpus_changed", "tokenizer_changed", "corpus_tokenized", "data_config_changed",
                     "model_config_changed", "train_config_changed", "watch_config_changed", "model_changed", "run_loaded",
                     "prompt_changed", "view_step_changed", "continuations_ready"):
            self._relay(getattr(core, name), getattr(self, name).emit)
        self._relay(run.state_changed, self.run_state_changed.emit)
        self._relay(run.started, lambda _trainer: self.training_started.emit())
        self._relay(run.model_updated, self.model_updated.emit)
        self._relay(run.finished, self.training_finished.emit)
        self._relay(run.failed, self._on_failed)
        self._relay(run.step, self._queue_step)
        self._step_arrived.connect(self._deliver_step)
        # The prompt, scored once per change and shared by every panel that shows it.
        self.prompt_scores = PromptScorer(session, self, self)
        self.prompt_scores.failed.connect(self._on_bug)
        links = self._links
        self.destroyed.connect(lambda *_: AppEvents._unlink(links))

    def detach(self) -> None:
        """Stop relaying (the window closed; the session may outlive it, e.g. in tests)."""
        AppEvents._unlink(self._links)

    def _relay(self, source: Any, emit: Callable[..., None]) -> None:
        def forward(*args: Any) -> None:
            if isValid(self):  # the window may be gone while a worker thread reports
                emit(*args)

        source.connect(forward)
        self._links.append((source, forward))

    @staticmethod
    def _unlink(links: list[tuple[Any, Callable[..., None]]]) -> None:
        while links:
            source, forward = links.pop()
            source.disconnect(forward, missing_ok=True)

    def _on_failed(self, exc: BaseException, details: str) -> None:
        self.training_failed.emit(exc, details)
        self.training_finished.emit(describe_exception(exc))

    def _on_bug(self, exc: BaseException, details: str) -> None:
        """An unexpected exception while asking the model: the error dialog, once for all panels."""
        self.error.emit(describe_exception(exc), details)

    def _queue_step(self, metrics: StepMetrics) -> None:
        """In the training thread: wait for room, then hand the report to the GUI thread."""
        with self._room:
            while self.pending >= self.max_pending and not self.session.run.stop_requested:
                self._room.wait(0.1)
            self.pending += 1
        self._step_arrived.emit(metrics)

    @Slot(object)
    def _deliver_step(self, metrics: Any) -> None:
        with self._room:
            self.pending = max(0, self.pending - 1)
            self._room.notify()
        self.training_step.emit(metrics)
