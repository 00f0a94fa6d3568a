"""One training run at a time on its own thread, its state an enum that announces every change.

:class:`RunController` is what the app's Start / Pause / Resume / Stop buttons drive, Qt-free: it
prepares the run (``make_trainer``: tokenizing, building the model) and then iterates
``trainer.steps()`` on a background thread, and reports through :attr:`RunController.events`
(psygnal signals, emitted on that thread; the GUI's adapter re-delivers them on its own thread).
Pause, resume and stop go straight to ``trainer.control`` (thread-safe flags), so they act even
while a step is running; a stop during preparation abandons the run without waiting for it.
"""

from __future__ import annotations

import enum
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psygnal import Signal, SignalGroup

from ..errors import Cancelled, ConfigError, LMStudioError
from .control import StepMetrics

if TYPE_CHECKING:
    from .trainer import Trainer


class RunState(enum.Enum):
    IDLE = "idle"  # no run yet, or preparing was cancelled
    PREPARING = "preparing"  # tokenizing, building the model (make_trainer)
    TRAINING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"  # asked to stop; the trainer saves a checkpoint after the current step
    FINISHED = "finished"  # reached max_steps or stopped (see RunController.stop_reason)
    FAILED = "failed"  # preparation or training raised (see RunController.error)

    @property
    def active(self) -> bool:
        """A run is being prepared or trained: settings are locked, another cannot start."""
        return self in (RunState.PREPARING, RunState.TRAINING, RunState.PAUSED, RunState.STOPPING)


class RunEvents(SignalGroup):
    state_changed = Signal(RunState)
    started = Signal(object)  # the Trainer, prepared, before its first step
    step = Signal(StepMetrics)  # at logged and evaluation steps, from the training thread
    model_updated = Signal()  # the live weights moved enough to probe again (evaluation, pause, end)
    finished = Signal(str)  # the trainer's stop reason: "finished" or "stopped"
    failed = Signal(object, str)  # (the exception, its traceback): preparing or training failed


class RunController:
    """Runs one trainer at a time (see the module docstring)."""

    def __init__(self) -> None:
        self.events = RunEvents()
        self.state = RunState.IDLE
        self.trainer: Trainer | None = None  # set once prepared: None while preparing
        self.history: list[dict[str, Any]] = []  # the run's metrics records from before this start
        self.stop_reason: str | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._run_id = 0  # bumped per start: an abandoned preparation's outcome is ignored
        self._lock = threading.Lock()

    # ---- actions ------------------------------------------------------------------------------

    def start(self, make_trainer: Callable[[], Trainer]) -> None:
        """Prepare (``make_trainer()``) and train on a new thread; refused while a run is active."""
        with self._lock:
            if self.state.active:
                raise ConfigError("a training run is already in progress: stop it first")
            self._run_id += 1
            run_id = self._run_id
            self.trainer, self.history, self.stop_reason, self.error = None, [], None, None
            thread = threading.Thread(target=self._run, args=(run_id, make_trainer), name="training", daemon=True)
            self._thread = thread
        self._set_state(RunState.PREPARING, run_id)
        thread.start()

    def pause(self) -> None:
        if self.state == RunState.TRAINING and self.trainer is not None:
            self.trainer.control.pause()
            self._set_state(RunState.PAUSED, self._run_id)
            self.events.model_updated.emit()  # probing is free now: show the model as it is

    def resume(self) -> None:
        if self.state == RunState.PAUSED and self.trainer is not None:
            self.trainer.control.resume()
            self._set_state(RunState.TRAINING, self._run_id)

    def toggle_pause(self) -> None:
        self.pause() if self.state == RunState.TRAINING else self.resume()

    def stop(self) -> None:
        """Stop after the current step (the trainer saves a checkpoint); abandon a preparation."""
        if self.state == RunState.PREPARING:
            with self._lock:
                self._run_id += 1  # whatever the preparation builds is never trained
            self._set_state(RunState.IDLE, self._run_id)
        elif self.state in (RunState.TRAINING, RunState.PAUSED) and self.trainer is not None:
            self.trainer.control.stop()  # also wakes a paused trainer so it can see the stop
            self._set_state(RunState.STOPPING, self._run_id)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the training thread ended (a preparation that was abandoned is not waited for)."""
        thread = self._thread
        if thread is None or self.state == RunState.IDLE:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stop_and_wait(self, timeout: float | None = None) -> bool:
        self.stop()
        return self.wait(timeout)

    @property
    def stop_requested(self) -> bool:
        trainer = self.trainer
        return self.state != RunState.TRAINING or (trainer is not None and trainer.control.stop_requested)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ---- the thread ---------------------------------------------------------------------------

    def _run(self, run_id: int, make_trainer: Callable[[], Trainer]) -> None:
        try:
            trainer = make_trainer()
        except BaseException as exc:  # every failure is reported; the thread ends
            if self._current(run_id):
                if isinstance(exc, Cancelled):
                    self._set_state(RunState.IDLE, run_id)
                self._fail(run_id, exc)
            return
        if not self._current(run_id):
            close = getattr(trainer, "close", None)
            if close is not None:  # stopped while preparing: free the run folder for the next start
                close()
            return
        self.history = self._recorded(trainer)
        self.trainer = trainer
        self._set_state(RunState.TRAINING, run_id)
        self.events.started.emit(trainer)
        try:
            for metrics in trainer.steps():
                self.events.step.emit(metrics)
                if metrics.val_loss is not None:
                    self.events.model_updated.emit()
        except BaseException as exc:  # a bug (or a plugin's SystemExit) ends the run with a message
            self._fail(run_id, exc)
        else:
            self.stop_reason = str(trainer.stop_reason or "finished")
            self.events.finished.emit(self.stop_reason)  # before the state: listeners see the end first
            self._set_state(RunState.FINISHED, run_id)
        self.events.model_updated.emit()

    @staticmethod
    def _recorded(trainer: Trainer) -> list[dict[str, Any]]:
        """The run's metrics from before this start (a resumed run's curve); read before the
        first step, so a listener never sees a step both here and as an event."""
        run_dir = getattr(trainer, "run_dir", None)
        try:
            return run_dir.read_metrics() if run_dir is not None else []
        except LMStudioError:  # an unreadable log: the curve just starts empty
            return []

    def _fail(self, run_id: int, exc: BaseException) -> None:
        self.error = exc
        self.events.failed.emit(exc, "".join(traceback.format_exception(exc)))  # before the state, as above
        if self.state != RunState.IDLE:
            self._set_state(RunState.FAILED, run_id)

    def _current(self, run_id: int) -> bool:
        return run_id == self._run_id

    def _set_state(self, state: RunState, run_id: int) -> None:
        with self._lock:
            if run_id != self._run_id or state == self.state:
                return
            self.state = state
        self.events.state_changed.emit(state)
