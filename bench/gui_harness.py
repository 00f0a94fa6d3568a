"""Shared by the GUI benchmarks (ui_stall.py, gui_speed.py): the real MainWindow, offscreen.

Each benchmark measures in fresh worker subprocesses (one per measurement), so every row
starts from the same state and a row can run another copy of the package: ``--impl DIR``
puts ``DIR`` first on the worker's ``sys.path`` (e.g. an unpacked ``git archive`` of an earlier
commit), which is how a change is compared side by side with the code before it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GAP_TIMER_MS = 5  # the probe timer: a gap much longer than this is a stall of the event loop


def run_worker(script: Path, args: Sequence[str], impl: str | None, timeout_s: float) -> dict[str, Any]:
    """Run ``script ARGS`` (ARGS start with ``--worker``) in a subprocess with its own
    LMSTUDIO_HOME, in that folder; return the JSON line it prints last."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    if impl:  # the copy's own built-in plugins too, when it has them (else the installed ones load)
        plugins = Path(impl) / "plugins"
        first = [impl, str(plugins)] if plugins.is_dir() else [impl]
        env["PYTHONPATH"] = os.pathsep.join([*first, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix="lmstudio-bench-") as home:
        env["LMSTUDIO_HOME"] = home
        done = subprocess.run([sys.executable, str(script), *args], check=False, env=env, cwd=home,
                              capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def make_app() -> Any:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["bench"])


def open_window(max_steps: int, preset: str = "default", device: str = "cpu", threads: int = 0) -> Any:
    """A shown MainWindow on the demo corpus with ``preset``, ``max_steps`` and ``threads``."""
    from lmstudio_app.gui.main_window import MainWindow
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.session import Session

    session = Session(PluginRegistry.discover(use_user_dir=False))
    session.apply_preset(preset)
    session.set_train({"max_steps": max_steps, "device": device, "threads": threads})
    window = MainWindow(session)
    window.resize(1400, 900)
    window.show()
    return window


def process_until(predicate: Callable[[], bool], timeout_s: float, poll_ms: int = 10) -> None:
    """Run the Qt event loop until ``predicate()`` holds (checked every ``poll_ms``).

    A nested QEventLoop rather than a processEvents() loop: PySide6 6.12 on Python 3.11 drops
    a reference to None on every processEvents() call, which aborts the interpreter after
    ~60k calls ("deallocating None").
    """
    from PySide6.QtCore import QEventLoop, QTimer

    if predicate():
        return
    deadline = time.monotonic() + timeout_s
    loop = QEventLoop()
    timed_out: list[bool] = []

    def check() -> None:
        if predicate():
            loop.quit()
        elif time.monotonic() > deadline:
            timed_out.append(True)
            loop.quit()

    poll = QTimer()
    poll.setInterval(poll_ms)
    poll.timeout.connect(check)
    poll.start()
    loop.exec()
    poll.stop()
    if timed_out:
        raise TimeoutError(f"gave up after {timeout_s:.0f} s")


def settle(window: Any, timeout_s: float = 120) -> None:
    """Wait until every panel's background work is done (the model panel's size and speed
    preview, for one, measures the machine for a second when the window opens), as a person
    would before pressing Start; then half a second more for the last repaints."""
    panels = [p for p in window.panels.values() if callable(getattr(p, "is_busy", None))]
    process_until(lambda: not any(p.is_busy() for p in panels), timeout_s)
    spin(0.5)


def spin(seconds: float) -> None:
    """Run the event loop for ``seconds`` (to let a window lay itself out, or finish redrawing)."""
    until = time.monotonic() + seconds
    process_until(lambda: time.monotonic() >= until, seconds + 5)


class CpuMeter:
    """CPU seconds used by this process's main thread and by all its other threads together,
    between :meth:`start` and :meth:`stop` (psutil reads them from the OS). Unlike wall time,
    this hardly depends on what else the machine runs, so it shows what the GUI itself costs."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._main_tid = threading.main_thread().native_id
        self._start = (0.0, 0.0)
        self.main_s = self.others_s = 0.0

    def _sample(self) -> tuple[float, float]:
        """(main thread, whole process): a thread that ended still counts in the process total."""
        main = sum(t.user_time + t.system_time for t in self._process.threads() if t.id == self._main_tid)
        times = self._process.cpu_times()
        return main, times.user + times.system

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        main, total = self._sample()
        self.main_s = main - self._start[0]
        self.others_s = total - self._start[1] - self.main_s


class TrainingThreadClock:
    """The training thread's own CPU seconds and wall seconds inside ``Trainer.steps()``.

    Their ratio is the share of the loop the thread actually ran. A thread that waits for
    the GIL (held by the GUI thread while it draws) or for the trainer's lock loses that
    share, while other programs on a shared machine mostly slow both clocks alike: so the
    share shows what the app costs the training even when tokens/s are noisy.
    """

    def __init__(self) -> None:
        self.cpu_s = self.wall_s = 0.0

    def install(self) -> TrainingThreadClock:
        """Wrap ``Trainer.steps`` (every trainer made from now on in this process)."""
        try:
            from lmstudio_app.training.trainer import Trainer
        except ImportError:  # a copy from before the packages (``--impl``): one flat training.py
            from lmstudio_app.training import Trainer  # type: ignore[attr-defined,no-redef]

        original = Trainer.steps
        clock = self

        def steps(trainer: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                yield from original(trainer)
            finally:
                clock.cpu_s += time.thread_time() - cpu
                clock.wall_s += time.perf_counter() - wall

        Trainer.steps = steps  # type: ignore[method-assign]
        return self

    @property
    def on_cpu(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0


class GapProbe:
    """A 5 ms precise timer that records the gaps between its ticks (the event loop's stalls)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.gaps_ms: list[float] = []
        self._last = 0.0
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(GAP_TIMER_MS)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps_ms.append((now - self._last) * 1000)
        self._last = now

    def summary(self) -> dict[str, float]:
        gaps = sorted(self.gaps_ms) or [0.0]
        return {"worst_ms": gaps[-1], "p99_ms": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
                "median_ms": statistics.median(gaps), "ticks": len(gaps)}


def is_training_steps(panel: Any) -> bool:
    """Past preparing, into the steps; in this app ("training", a RunState) and in older copies ("running")."""
    return getattr(panel.state, "value", panel.state) in ("training", "running")


def train_in_window(window: Any, timeout_s: float, probe: GapProbe | None = None) -> dict[str, Any]:
    """Click Start and wait for the end; returns the loop's wall time, the trainer's own clock,
    and the CPU seconds of the GUI thread and of the other threads (training, pool) meanwhile."""
    panel = window.training_panel
    finished: list[str] = []
    started: list[float] = []
    window.events.training_started.connect(lambda: started.append(time.perf_counter()))
    ended: list[float] = []
    window.events.training_finished.connect(lambda reason: (ended.append(time.perf_counter()), finished.append(reason)))
    panel.start_button.click()
    process_until(lambda: is_training_steps(panel) or bool(finished), timeout_s)
    cpu = CpuMeter()
    cpu.start()
    if probe is not None:
        probe.start()
    # The app's own work only: polling slowly (the end is timed by the signal, not the poll).
    process_until(lambda: bool(finished) and not panel.is_training(), timeout_s, poll_ms=250)
    cpu.stop()
    if probe is not None:
        probe.stop()
    trainer = window.session.trainer
    if finished[0] != "finished":
        raise RuntimeError(f"the run ended with {finished[0]!r}")
    records = trainer.run_dir.read_metrics()
    return {"loop_wall_s": ended[0] - started[0], "train_s": float(records[-1]["elapsed_s"]),
            "steps": trainer.step, "final_loss": float(records[-1]["train_loss"]),
            "gui_cpu_s": cpu.main_s, "other_cpu_s": cpu.others_s}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns (the first column left-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
