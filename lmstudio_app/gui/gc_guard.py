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

A full collection walks every tracked object, and with torch, Qt and pyqtgraph loaded that is
~35 ms of the GUI thread holding the GIL, which stalls training just as long. Once the main
window is up, :func:`freeze_long_lived` moves everything alive then (modules, the window and
its panels, which live as long as the app) out of the collector's sight, as ``gc.freeze``
is meant for; later collections only walk what was made since.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QTimer
from shiboken6 import isValid

COLLECT_INTERVAL_MS = 500


class GuiThreadCollector(QObject):
    """Collects garbage cycles on a timer, generation by generation as ``gc`` itself would.

    Like the interpreter's own collector, the oldest generation is only collected when the
    objects that reached it since its last collection exceed a quarter of those it held then:
    without that rule every tenth collection would walk every object of the process (~200 ms
    with torch's compiler stack imported, all of it holding the GIL).
    """

    def __init__(self, parent: QObject, interval_ms: int = COLLECT_INTERVAL_MS) -> None:
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        self.long_lived_total = len(gc.get_objects(2))
        self.collections = [0, 0, 0]  # per generation, by this collector
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.collect)
        gc.disable()
        self.timer.start()

    def collect(self) -> int:
        """Collect the oldest generation that is due, as ``gc`` would; return objects freed."""
        counts = gc.get_count()
        if counts[0] <= self.thresholds[0]:
            return 0
        generation = 0
        if counts[1] > self.thresholds[1]:
            generation = 1
            if counts[2] > self.thresholds[2]:
                pending = len(gc.get_objects(2)) - self.long_lived_total
                if pending > self.long_lived_total // 4:
                    generation = 2
        freed = gc.collect(generation)
        self.collections[generation] += 1
        if generation == 2:
            self.long_lived_total = len(gc.get_objects(2))
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


_frozen = False


def freeze_long_lived() -> None:
    """Once per process: collect, then exempt every surviving object from future collections."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
        if _collector is not None and isValid(_collector):
            _collector.long_lived_total = 0  # the oldest generation is empty now
