"""Garbage collection in the GUI thread only.

Python's cyclic garbage collector runs in whichever thread happens to cross its allocation
threshold, and while a run trains that is usually the training thread. A collection there
that frees a closed dialog or panel destroys Qt objects outside the GUI thread, and with
PySide6 6.12 that can deadlock the app: the training thread, inside ``~QObject``, holds a Qt
mutex and waits for the GIL, while the GUI thread holds the GIL and waits for that mutex
(seen as a hung test run: both threads in ``futex_do_wait``). So, as pyqtgraph recommends
(``pyqtgraph.util.garbage_collector``), automatic collection is switched off and a timer in
the GUI thread collects with the interpreter's own thresholds instead. Reference counting,
which frees almost everything, is unaffected; only cycles wait for the next tick.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QTimer
from shiboken6 import isValid

COLLECT_INTERVAL_MS = 500


class GuiThreadCollector(QObject):
    """Collects garbage cycles on a timer, generation by generation as ``gc`` itself would."""

    def __init__(self, parent: QObject, interval_ms: int = COLLECT_INTERVAL_MS) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.collect)
        gc.disable()
        self.timer.start()

    def collect(self) -> int:
        """Collect the generations whose counts passed their thresholds; return objects freed."""
        counts = gc.get_count()
        freed = 0
        for generation in range(3):
            if counts[generation] <= self.thresholds[generation]:
                break
            freed += gc.collect(generation)
        return freed


_collector: GuiThreadCollector | None = None


def install() -> GuiThreadCollector:
    """Switch automatic collection to the GUI thread (once per application; idempotent)."""
    global _collector
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("create the QApplication first")
    if _collector is None or not isValid(_collector):  # none yet, or its application is gone
        _collector = GuiThreadCollector(app)
    return _collector
