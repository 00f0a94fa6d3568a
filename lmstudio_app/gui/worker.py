"""Background work: the training loop on its own QThread, and short tasks on a thread pool.

The trainer is Qt-free; :class:`TrainingWorker` only iterates ``trainer.steps()`` and turns
each :class:`~lmstudio_app.training.trainer.StepMetrics` into a queued signal. Pause, resume and stop
go straight to ``trainer.control`` (plain thread-safe flags), so they work even while the worker
thread is busy inside a step. The UI touches the live model only through the trainer's lock.

The queue of reports is bounded: a tiny model logging every step can report thousands of times a
second, and if the GUI thread falls behind (a dialog open, a slow redraw) the queued signals would
grow without limit. The worker waits once :data:`MAX_PENDING_REPORTS` are undelivered, so memory
stays flat however long the run; a stop never waits (the GUI thread may be blocked joining it).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from PySide6.QtCore import QObject, QRunnable, Qt, QThread, QThreadPool, Signal, Slot
from shiboken6 import isValid

from ..errors import LMStudioError
from ..training.trainer import Trainer
from .dialogs import describe_exception

T = TypeVar("T")
ReportFn = Callable[[int, int], None]
CancelledFn = Callable[[], bool]
MAX_PENDING_REPORTS = 256  # reports queued for the GUI thread before training waits for it


class TrainingWorker(QObject):
    """Runs ``trainer.steps()``; lives on a QThread (see :class:`TrainingRunner`)."""

    step = Signal(object)  # StepMetrics
    finished = Signal(str)  # the trainer's stop reason ("finished", "stopped", ...)
    failed = Signal(str, str)  # (one-line message, traceback)

    def __init__(self, trainer: Trainer, max_pending: int = MAX_PENDING_REPORTS) -> None:
        super().__init__()
        self.trainer = trainer
        self.max_pending = max_pending
        self.pending = 0  # reports emitted but not yet delivered in the GUI thread
        self._room = threading.Condition()

    @Slot()
    def run(self) -> None:
        try:
            for metrics in self.trainer.steps():
                self._wait_for_room()
                self.step.emit(metrics)
        except LMStudioError as exc:
            self.failed.emit(str(exc), traceback.format_exc())
        except Exception as exc:
            self.failed.emit(describe_exception(exc), traceback.format_exc())
        else:
            self.finished.emit(str(self.trainer.stop_reason or "finished"))

    def _wait_for_room(self) -> None:
        with self._room:
            while self.pending >= self.max_pending and not self.trainer.control.stop_requested:
                self._room.wait(0.1)
            self.pending += 1

    def delivered(self) -> None:
        """One report reached the GUI thread (called there, by the runner)."""
        with self._room:
            self.pending = max(0, self.pending - 1)
            self._room.notify()

    def pause(self) -> None:
        self.trainer.control.pause()

    def resume(self) -> None:
        self.trainer.control.resume()

    def stop(self) -> None:
        self.trainer.control.stop()


class TrainingRunner(QObject):
    """Owns the worker and its thread for one run at a time; re-emits the worker's signals."""

    step = Signal(object)
    finished = Signal(str)
    failed = Signal(str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker: TrainingWorker | None = None
        self.thread: QThread | None = None

    def start(self, trainer: Trainer) -> None:
        if self.is_running():
            raise RuntimeError("a training run is already in progress")
        self.wait()  # a previous thread that is just finishing
        thread = QThread()
        thread.setObjectName("training")
        worker = TrainingWorker(trainer)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.step.connect(self._on_step)  # queued: runs in the GUI thread
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        # The thread's event loop only has to run worker.run; quit as soon as it returns. Direct
        # connections: a queued quit would wait for the GUI thread, which may be blocked in wait().
        worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        worker.failed.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        self.worker, self.thread = worker, thread
        thread.start()

    def is_running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()

    @property
    def trainer(self) -> Trainer | None:
        return self.worker.trainer if self.worker is not None else None

    def pause(self) -> None:
        if self.worker is not None:
            self.worker.pause()

    def resume(self) -> None:
        if self.worker is not None:
            self.worker.resume()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until the training thread has ended (the trainer saves on its way out)."""
        if self.thread is None:
            return True
        done = self.thread.wait() if timeout_ms < 0 else self.thread.wait(timeout_ms)
        return bool(done)

    def stop_and_wait(self, timeout_ms: int = -1) -> bool:
        self.stop()  # TrainingControl.stop also wakes a paused trainer
        return self.wait(timeout_ms)

    @Slot(object)
    def _on_step(self, metrics: object) -> None:
        sender = self.sender()
        if isinstance(sender, TrainingWorker):
            sender.delivered()
        self.step.emit(metrics)

    def _on_finished(self, reason: str) -> None:
        self.finished.emit(reason)

    def _on_failed(self, message: str, details: str) -> None:
        self.failed.emit(message, details)


# ---- short background tasks -----------------------------------------------------------------


class _TaskSignals(QObject):
    done = Signal(object)
    failed = Signal(object, str)  # (exception, traceback)
    progressed = Signal(int, int)


class BackgroundTask(QRunnable, Generic[T]):
    """One call of ``fn(report, is_cancelled)`` on the global thread pool; results come back
    as queued signals, so ``on_done``/``on_error``/``progress`` run in the GUI thread."""

    _active: ClassVar[set[BackgroundTask[Any]]] = set()  # keeps tasks alive until they reported back

    def __init__(self, fn: Callable[[ReportFn, CancelledFn], T]) -> None:
        super().__init__()
        self.setAutoDelete(False)
        self.fn = fn
        self.signals = _TaskSignals()
        self.finished = False
        self._cancel = threading.Event()
        self.signals.done.connect(self._forget)
        self.signals.failed.connect(self._forget)

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def report(self, done: int, total: int) -> None:
        self._emit(self.signals.progressed, int(done), int(total))

    def run(self) -> None:
        try:
            result = self.fn(self.report, self.is_cancelled)
        except BaseException as exc:
            self._emit(self.signals.failed, exc, traceback.format_exc())
        else:
            self._emit(self.signals.done, result)

    def _emit(self, signal: Any, *args: object) -> None:
        # The application may be shutting down while this task ran (its window closed, the
        # interpreter finalising): then there is nobody left to tell, and no error to print.
        if isValid(self.signals):
            try:
                signal.emit(*args)
            except RuntimeError:  # deleted between the check and the emit
                pass

    def _forget(self, *_args: object) -> None:
        self.finished = True
        BackgroundTask._active.discard(self)


def run_in_thread(
    fn: Callable[[ReportFn, CancelledFn], T],
    on_done: Callable[[T], None] | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackgroundTask[T]:
    """Run ``fn(report, is_cancelled)`` off the GUI thread, e.g.
    ``run_in_thread(lambda report, cancelled: session.tokenize(report, cancelled), on_done, on_error)``.

    ``on_error(exception, traceback_text)`` gets :class:`~lmstudio_app.errors.Cancelled` too,
    so a caller can tell a cancellation from a failure. Call this from the GUI thread.
    """
    task: BackgroundTask[T] = BackgroundTask(fn)
    if on_done is not None:
        task.signals.done.connect(on_done)
    if on_error is not None:
        task.signals.failed.connect(on_error)
    if progress is not None:
        task.signals.progressed.connect(progress)
    BackgroundTask._active.add(task)
    QThreadPool.globalInstance().start(task)
    return task
