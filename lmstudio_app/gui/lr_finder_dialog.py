"""Training › Learning-rate finder…: the range test (training/lr_finder.py) on the session's config.

The test runs on Qt's thread pool (:func:`~lmstudio_app.gui.worker.run_in_thread`) on a copy of the
session's config, its tokenizer and token arrays (tokenized first if needed); each step comes back
as a queued signal and is plotted (loss against rate, log x). When it ends the suggestion is marked
and "Apply" sets ``train.learning_rate`` in the session, which the Training form follows. Cancel
(or closing the dialog) stops it between steps. Errors are shown inline, one line.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import Cancelled, LMStudioError
from ..session import Session
from ..training.lr_finder import LrFinderResult, find_lr
from .worker import BackgroundTask, run_in_thread

__all__ = ["LrFinderDialog"]


class _StepSignals(QObject):
    step = Signal(int, float, float)  # (step, lr, loss), queued to the GUI thread


class LrFinderDialog(QDialog):
    """Run the range test, plot it, apply its suggestion (see the module docstring)."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Learning-rate finder")
        self.result: LrFinderResult | None = None
        self.task: BackgroundTask[LrFinderResult] | None = None
        self._lrs: list[float] = []
        self._losses: list[float] = []
        self._signals = _StepSignals(self)
        self._signals.step.connect(self._on_step)

        self.start_lr = QDoubleSpinBox(decimals=7, minimum=1e-7, maximum=1.0, value=1e-5)
        self.end_lr = QDoubleSpinBox(decimals=4, minimum=1e-4, maximum=100.0, value=1.0)
        self.steps = QSpinBox(minimum=8, maximum=10_000, value=100)
        form = QFormLayout()
        form.addRow("Start rate", self.start_lr)
        form.addRow("End rate", self.end_lr)
        form.addRow("Steps", self.steps)

        self.plot = pg.PlotWidget()
        self.plot.setLogMode(x=True, y=False)
        self.plot.setLabel("bottom", "learning rate (log)")
        self.plot.setLabel("left", "training loss")
        self.raw_curve = self.plot.plot([], [], pen=pg.mkPen((150, 150, 150), width=1), name="loss")
        self.smooth_curve = self.plot.plot([], [], pen=pg.mkPen((31, 119, 180), width=2), name="smoothed")
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen((214, 39, 40), width=2))
        self.marker.setVisible(False)
        self.plot.addItem(self.marker)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setObjectName("lrFinderMessage")
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.apply_button = QPushButton("Apply")
        self.close_button = QPushButton("Close")
        self.cancel_button.setEnabled(False)
        self.apply_button.setEnabled(False)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.apply_button.clicked.connect(self.apply)
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.cancel_button, self.apply_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        self.resize(640, 480)

    # ---- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.finished

    def start(self) -> None:
        if self.running:
            return
        start_lr, end_lr, steps = self.start_lr.value(), self.end_lr.value(), self.steps.value()
        if not start_lr < end_lr:  # the core says so too, but before any tokenizing
            self.message.setText(f"lr-find: the range must rise from a positive start, got {start_lr:g} → {end_lr:g}")
            return
        self.result = None
        self._lrs, self._losses = [], []
        self.raw_curve.setData([], [])
        self.smooth_curve.setData([], [])
        self.marker.setVisible(False)
        self.apply_button.setEnabled(False)
        self.message.setText("Running…")
        session, signals = self.session, self._signals
        config = copy.deepcopy(session.config)

        def job(_report: Any, cancelled: Any) -> LrFinderResult:
            corpus = session.tokenize(cancel=cancelled)  # reuses the session's arrays when current
            return find_lr(config, session.registry, start_lr=start_lr, end_lr=end_lr, steps=steps,
                           tokenizer=session.tokenizer, corpus=corpus,
                           on_step=lambda step, lr, loss: signals.step.emit(step, lr, loss),
                           should_stop=cancelled)

        self.task = run_in_thread(job, self._on_done, self._on_error)
        self._set_running(True)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_step(self, _step: int, lr: float, loss: float) -> None:
        if math.isfinite(loss):
            self._lrs.append(lr)
            self._losses.append(loss)
            self.raw_curve.setData(self._lrs, self._losses)

    def _on_done(self, result: LrFinderResult) -> None:
        self._set_running(False)
        self.result = result
        self.raw_curve.setData(result.lrs, result.losses)
        self.smooth_curve.setData(result.lrs, result.smoothed)
        if result.suggestion is None:
            self.message.setText(f"No suggestion ({result.stop_reason}): the smoothed loss never fell; "
                                 "start lower or run more steps")
            return
        self.marker.setPos(math.log10(result.suggestion))  # the plot's x is log10 in log mode
        self.marker.setVisible(True)
        self.apply_button.setEnabled(True)
        self.message.setText(f"Suggested learning rate {result.suggestion:.3g} (steepest descent; "
                             f"loss lowest at {result.min_lr:.3g}; {result.stop_reason}).")

    def _on_error(self, exc: BaseException, trace: str) -> None:
        self._set_running(False)
        if isinstance(exc, Cancelled):
            self.message.setText("Cancelled.")
        elif isinstance(exc, LMStudioError):
            self.message.setText(str(exc).splitlines()[0])
        else:
            self.message.setText(f"lr-find failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    def apply(self) -> None:
        """Set the session's train.learning_rate to the suggestion (the Training form follows)."""
        if self.result is None or self.result.suggestion is None:
            return
        try:
            self.session.set_train({"learning_rate": self.result.suggestion})
        except LMStudioError as exc:
            self.message.setText(str(exc).splitlines()[0])
            return
        self.message.setText(f"train.learning_rate set to {self.session.config.train.learning_rate:g}.")

    def done(self, code: int) -> None:  # closing stops a running test (between steps)
        self.cancel()
        super().done(code)
