"""The Training dock's progress bar and the line under it: loss · tokens/s · time left.

A small model logging every step reports hundreds of times a second; repainting a progress bar
and re-laying out a label for each report would keep the GUI thread (and through the GIL, the
training thread) busy. So :meth:`ProgressStrip.report` only remembers the latest report, and the
widgets follow at most every :data:`STATUS_INTERVAL_MS`.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from lmstudio_app.training.control import StepMetrics

STATUS_INTERVAL_MS = 250  # progress texts (here and in the status bar) update at most this often
PAUSED_POLL_MS = 200  # while paused: how often the step shown is re-read from the trainer


def format_duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class ProgressStrip(QWidget):
    """``progress`` (step n / max) and ``rate_label``; the ETA is measured from this session's
    first report, so a resumed run's estimate is not skewed by the steps trained before."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        self.progress.setFormat("step %v / %m")
        self.rate_label = QLabel("Not started")
        self.rate_label.setObjectName("rateLabel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.progress)
        layout.addWidget(self.rate_label)
        self._first: tuple[int, float] | None = None  # (step, elapsed) of this session's first report
        self._latest: StepMetrics | None = None
        self._timer = QTimer(self, singleShot=True, interval=STATUS_INTERVAL_MS)
        self._timer.timeout.connect(self._show)
        # While paused the numbers are not frozen "running" ones: the strip says paused and shows
        # the trainer's own step (the last report can lag it by up to log_interval steps, and
        # the step in flight when Pause was pressed still finishes).
        self._paused_step: Callable[[], int | None] | None = None
        self._paused_timer = QTimer(self, interval=PAUSED_POLL_MS)
        self._paused_timer.timeout.connect(self._show_paused)

    def is_paused(self) -> bool:
        return self._paused_step is not None

    def pause(self, step: Callable[[], int | None]) -> None:
        """Say "paused" (no ETA, no tokens/s) at the step ``step()`` returns, re-read until resumed."""
        self._paused_step = step
        self._timer.stop()
        self._show_paused()
        self._paused_timer.start()

    def resume(self) -> None:
        """Back to the running numbers (the ETA excludes the paused time: elapsed_s does)."""
        if self._paused_step is None:
            return
        self._paused_step = None
        self._paused_timer.stop()
        self.rate_label.setText("Resuming…")
        self._show()

    def paused_step(self) -> int | None:
        return self._paused_step() if self._paused_step is not None else None

    def _show_paused(self) -> None:
        step = self.paused_step()
        if step is None:
            return
        self.progress.setValue(min(step, self.progress.maximum()))
        loss = ""
        if self._latest is not None and self._latest.train_loss is not None:
            loss = f" · last loss {self._latest.train_loss:.4f}"
        self.rate_label.setText(f"Paused at step {step:,}{loss} · ETA and tokens/s resume with training")

    def busy(self, message: str) -> None:
        """A busy indicator and a message, while a run is being prepared."""
        self.progress.setRange(0, 0)
        self.rate_label.setText(message)

    def idle(self, message: str) -> None:
        """Leave the busy indicator (preparing failed or was cancelled)."""
        self._end_pause()
        self.progress.setRange(0, 1)
        self.rate_label.setText(message)

    def show_run(self, step: int, max_steps: int, message: str) -> None:
        """A run opened from disk: its progress as it was saved, and ``message``."""
        self._end_pause()
        self._timer.stop()
        self._first = self._latest = None
        self.progress.setRange(0, max(max_steps, 1))
        self.progress.setValue(min(step, max(max_steps, 1)))
        self.rate_label.setText(message)

    def _end_pause(self) -> None:
        self._paused_step = None
        self._paused_timer.stop()

    def begin(self, max_steps: int) -> None:
        self._end_pause()
        self._first = self._latest = None
        self.progress.setRange(0, max_steps)

    def report(self, metrics: StepMetrics) -> None:
        if self._first is None:
            self._first = (metrics.step, metrics.elapsed_s)
        self._latest = metrics
        if self._paused_step is not None:
            return  # the step finishing after Pause: the paused line shows it
        if not self._timer.isActive():
            self._timer.start()

    def finish(self, message: str) -> None:
        """Show the last report at once, then ``message`` (the run ended)."""
        self._timer.stop()
        self._end_pause()
        self._show()
        self.rate_label.setText(message)

    def _show(self) -> None:
        metrics, first = self._latest, self._first
        if metrics is None or first is None or self._paused_step is not None:
            return
        # QProgressBar.setValue repaints at once, inside the call and so holding the GIL the
        # training thread needs; with updates off it is painted later by the event loop.
        self.progress.setUpdatesEnabled(False)
        self.progress.setMaximum(metrics.max_steps)
        self.progress.setValue(metrics.step)
        self.progress.setUpdatesEnabled(True)
        eta = ""
        done = metrics.step - first[0]
        if done > 0 and metrics.elapsed_s > first[1]:
            per_step = (metrics.elapsed_s - first[1]) / done
            eta = f" · ETA {format_duration(per_step * (metrics.max_steps - metrics.step))}"
        loss = f"loss {metrics.train_loss:.4f}" if metrics.train_loss is not None else ""
        self.rate_label.setText(f"{loss} · {metrics.tokens_per_s:,.0f} tokens/s{eta}")
