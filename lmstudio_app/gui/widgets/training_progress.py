"""The Training dock's progress bar and the line under it: loss · tokens/s · time left.

A small model logging every step reports hundreds of times a second; repainting a progress bar
and re-laying out a label for each report would keep the GUI thread (and through the GIL, the
training thread) busy. So :meth:`ProgressStrip.report` only remembers the latest report, and the
widgets follow at most every :data:`STATUS_INTERVAL_MS`.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from lmstudio_app.training.control import StepMetrics

STATUS_INTERVAL_MS = 250  # progress texts (here and in the status bar) update at most this often


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

    def busy(self, message: str) -> None:
        """A busy indicator and a message, while a run is being prepared."""
        self.progress.setRange(0, 0)
        self.rate_label.setText(message)

    def idle(self, message: str) -> None:
        """Leave the busy indicator (preparing failed or was cancelled)."""
        self.progress.setRange(0, 1)
        self.rate_label.setText(message)

    def begin(self, max_steps: int) -> None:
        self._first = self._latest = None
        self.progress.setRange(0, max_steps)

    def report(self, metrics: StepMetrics) -> None:
        if self._first is None:
            self._first = (metrics.step, metrics.elapsed_s)
        self._latest = metrics
        if not self._timer.isActive():
            self._timer.start()

    def finish(self, message: str) -> None:
        """Show the last report at once, then ``message`` (the run ended)."""
        self._timer.stop()
        self._show()
        self.rate_label.setText(message)

    def _show(self) -> None:
        metrics, first = self._latest, self._first
        if metrics is None or first is None:
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
