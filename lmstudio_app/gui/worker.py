"""Short background tasks on Qt's thread pool, their results delivered on the GUI thread.

Training runs on the run controller's own thread (``lmstudio_app.training.controller``), its
reports re-delivered by ``events.AppEvents``; everything else slow (reading files, building a
tokenizer, asking the model) is a :class:`BackgroundTask` started with :func:`run_in_thread`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from shiboken6 import isValid

T = TypeVar("T")
ReportFn = Callable[[int, int], None]
CancelledFn = Callable[[], bool]


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
