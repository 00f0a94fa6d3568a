"""The Training dock: device, settings, presets, start/pause/resume/stop, progress and plots.

A view over the session's Qt-free :class:`~lmstudio_app.training.controller.RunController`
(``session.run``): the buttons (and the main window's Training menu, through the same public
methods) call it, and the panel shows what its events say: the run's state, each step on the
plot, the end. Preparing a run (tokenizing, building the model) happens on the run's thread, so
the window never freezes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.config import TrainConfig, load_config
from lmstudio_app.devices import available_devices, describe_device, resolve_device
from lmstudio_app.errors import Cancelled, ConfigError, LMStudioError
from lmstudio_app.params import params_to_dict
from lmstudio_app.resources import list_presets
from lmstudio_app.session import Session
from lmstudio_app.settings import default_runs_dir
from lmstudio_app.training.control import StepMetrics
from lmstudio_app.training.controller import RunState

from .. import dialogs
from ..events import AppEvents
from ..watch_dialog import WatchDialog
from ..widgets.loss_plot import LossPlot
from ..widgets.param_form import ParamForm
from ..widgets.training_progress import ProgressStrip
from ..worker import run_in_thread


class TrainingPanel(QWidget):
    """Start, watch and steer one training run at a time (see the module docstring)."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.run = session.run
        self._shown_state = RunState.IDLE

        self.device_combo = QComboBox()
        self.device_combo.setObjectName("deviceCombo")
        for name in available_devices():
            label = name if name == "auto" else f"{name} — {describe_device(resolve_device(name))}"
            self.device_combo.addItem(label, name)
        self.device_combo.currentIndexChanged.connect(self._on_device_chosen)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("presetCombo")
        self.preset_combo.addItem("Choose a preset…", None)
        for name in list_presets():
            self.preset_combo.addItem(name, name)
        self.preset_combo.activated.connect(self._on_preset_chosen)

        self.form = ParamForm(TrainConfig, params_to_dict(session.config.train), where="train")
        self.form.setObjectName("trainForm")
        # The device combo above replaces the form's own device row (it also describes devices).
        self.form.findChild(QFormLayout).setRowVisible(self.form.widget_for("device"), False)
        self.form.changed.connect(self._on_form_changed)
        form_scroll = QScrollArea()
        form_scroll.setWidgetResizable(True)
        form_scroll.setWidget(self.form)

        self.start_button = self._button("Start", "startButton", self.start_training)
        self.pause_button = self._button("Pause", "pauseButton", self.pause_training)
        self.resume_button = self._button("Resume", "resumeButton", self.resume_training)
        self.stop_button = self._button("Stop", "stopButton", self.stop_training)
        self.save_button = self._button("Save checkpoint", "saveCheckpointButton", self.save_checkpoint)
        self.resume_run_button = self._button("Resume run…", "resumeRunButton", self.choose_run_to_resume)
        self.watch_button = self._button("Watched prompts…", "watchButton", self.edit_watched_prompts)
        self.watch_button.setToolTip("The prompts whose predictions the next run records (the Timeline panel)")
        self.resume_run_button.setToolTip(
            "Continue a saved run up to the larger of its max steps and the Max steps set here")

        self.status = ProgressStrip()
        self.progress, self.rate_label = self.status.progress, self.status.rate_label
        self.loss_plot = LossPlot()
        self.loss_plot.setMinimumHeight(220)  # the plot is the point of this panel
        self.samples = QPlainTextEdit()
        self.samples.setObjectName("samplesBox")
        self.samples.setReadOnly(True)
        self.samples.setMaximumBlockCount(2000)
        self.samples.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.samples.setPlaceholderText("A sample of generated text appears at each evaluation.")
        self._build_layout(form_scroll)

        events.run_state_changed.connect(self._set_state)
        events.training_started.connect(self._on_started)
        events.training_step.connect(self._on_step)
        events.training_finished.connect(self._on_finished)
        events.training_failed.connect(self._on_failed)
        events.train_config_changed.connect(self.refresh_from_session)
        self.refresh_from_session()
        self._set_state(self.run.state)

    # ---- public actions (buttons and menu) --------------------------------------------------

    @property
    def state(self) -> RunState:
        """The run's state as this panel shows it (the controller's, once its event arrived)."""
        return self._shown_state

    def start_training(self) -> None:
        """Commit the settings, then tokenize and build the run in the background and start it."""
        if not self.run.state.active and self._commit_settings():
            self.status.busy("Preparing: tokenizing the corpus and building the model…")  # until the first step
            self._guard(self.session.start_training)

    def resume_run(self, run_dir: str | Path) -> None:
        """Continue a saved run (its config, weights and optimiser state) in the background."""
        if self.run.state.active:
            return
        run_dir = Path(run_dir)
        try:
            saved = load_config(run_dir / "config.toml")
        except ConfigError as exc:
            dialogs.show_exception(self, exc)
            return
        wanted = self.form.values().get("max_steps") or 0
        overrides = {"max_steps": wanted} if wanted > saved.train.max_steps else {}
        self.status.busy(f"Resuming {run_dir.name}…")
        self._guard(lambda: self.session.resume_training(run_dir, overrides))

    def edit_watched_prompts(self) -> None:
        WatchDialog(self.session, self).exec()

    def choose_run_to_resume(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Resume run", str(default_runs_dir()))
        if folder:
            self.resume_run(folder)

    def pause_training(self) -> None:
        self.run.pause()

    def resume_training(self) -> None:
        self.run.resume()

    def toggle_pause(self) -> None:
        self.run.toggle_pause()

    def stop_training(self) -> None:
        """Ask the trainer to stop after the current step; it saves a final checkpoint."""
        if self.run.state in (RunState.TRAINING, RunState.PAUSED):
            self.run.stop()
            self.rate_label.setText("Stopping after this step…")

    def stop_and_wait(self, timeout_ms: int = -1) -> bool:
        """Stop a running trainer and block until its thread ended (used when closing); a run
        still being prepared is abandoned, not waited for."""
        return self.run.stop_and_wait(None if timeout_ms < 0 else timeout_ms / 1000)

    def is_training(self) -> bool:
        return self._shown_state.active

    def save_checkpoint(self) -> None:
        """Save now, from a pool thread: the trainer takes its lock, so this lands between steps."""
        trainer = self.session.trainer
        if trainer is None:
            return
        run_in_thread(lambda report, cancelled: trainer.save_checkpoint(),
                      on_done=lambda path: self.events.status_message.emit(f"Checkpoint saved: {path}"),
                      on_error=lambda exc, details: dialogs.show_exception(self, exc, details or None))

    def refresh_from_session(self) -> None:
        """Show the session's train settings (after a preset, a loaded run, a resumed run)."""
        train = self.session.config.train
        values = params_to_dict(train)
        if self.form.error() or self.form.values() != {**self.form.values(), **values}:
            self.form.set_values(values)
        with QSignalBlocker(self.device_combo):
            self.device_combo.setCurrentIndex(max(self.device_combo.findData(train.device), 0))

    # ---- the run's events ----------------------------------------------------------------------

    def _guard(self, start: Callable[[], None]) -> None:
        try:
            start()
        except LMStudioError as exc:
            self.status.idle("Could not start")
            dialogs.show_exception(self, exc)

    def _on_started(self) -> None:
        trainer = self.session.trainer
        if trainer is None:
            return
        self.loss_plot.clear()
        for record in self.run.history:  # a resumed run shows its earlier curve too
            self.loss_plot.add_point(record.get("step", 0), record.get("train_loss"), record.get("lr"),
                                     record.get("val_loss"), record.get("kl_to_truth"))
        truth = getattr(trainer, "truth", None)  # a synthetic corpus: how low the loss can go
        self.loss_plot.set_entropy_floor(truth.entropy_rate() if truth is not None else None)
        self.loss_plot.set_step_range(trainer.config.train.max_steps)
        self.samples.clear()
        self.status.begin(trainer.config.train.max_steps)
        if trainer.run_dir is not None:
            self.events.status_message.emit(f"Training in {trainer.run_dir.path}")

    def _on_step(self, metrics: StepMetrics) -> None:
        """Per report only cheap work (reports can come hundreds of times a second): the plot
        and the progress strip buffer it and draw on their own timers."""
        self.loss_plot.add_metrics(metrics)
        self.status.report(metrics)
        if metrics.sample:
            val = f" (val loss {metrics.val_loss:.4f})" if metrics.val_loss is not None else ""
            self.samples.appendPlainText(f"── step {metrics.step}{val} ──\n{metrics.sample}\n")

    def _on_finished(self, reason: str) -> None:
        if self.run.error is not None:
            return  # a failure: _on_failed says so
        self.loss_plot.redraw()
        self.status.finish(f"Training {reason}" if reason in ("finished", "stopped") else reason)

    def _on_failed(self, exc: BaseException, details: str) -> None:
        if isinstance(exc, Cancelled):  # the data changed while preparing: nothing to report but that
            self.status.idle(str(exc))
            return
        if self.run.trainer is None:  # preparing failed: it never started
            self.status.idle("Could not start")
            dialogs.show_exception(self, exc, None if isinstance(exc, LMStudioError) else details)
            return
        self.status.finish("Training failed")
        dialogs.show_error(self, str(exc) if isinstance(exc, LMStudioError) else dialogs.describe_exception(exc),
                           details)

    # ---- settings ---------------------------------------------------------------------------

    def _commit_settings(self) -> bool:
        error = self.form.error()
        if error:
            dialogs.show_error(self, error)
            return False
        try:
            self.session.set_train({**self.form.values(), "device": self.device_combo.currentData()})
        except LMStudioError as exc:
            dialogs.show_exception(self, exc)
            return False
        return True

    def _on_form_changed(self) -> None:
        if not self.run.state.active:
            self._commit_settings()

    def _on_device_chosen(self) -> None:
        self.form.set_values({"device": self.device_combo.currentData()})
        self._on_form_changed()

    def apply_preset(self, name_or_path: str | Path) -> None:
        """Overlay a bundled preset (by name) or a preset file; every panel follows the session."""
        self.session.apply_preset(name_or_path)  # refused while a run is active
        self.events.status_message.emit(f"Preset {Path(name_or_path).stem!r} applied")

    def _on_preset_chosen(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        self.preset_combo.setCurrentIndex(0)
        if name is not None:
            try:
                self.apply_preset(name)
            except LMStudioError as exc:
                dialogs.show_exception(self, exc)

    # ---- widgets ----------------------------------------------------------------------------

    def _build_layout(self, form_scroll: QScrollArea) -> None:
        """Settings on the left; buttons, progress, the loss plot and samples on the right."""
        settings_box = QGroupBox("Settings")
        settings = QFormLayout(settings_box)
        settings.addRow("Device", self.device_combo)
        settings.addRow("Preset", self.preset_combo)
        settings.addRow(form_scroll)
        run_buttons = QHBoxLayout()
        run_buttons.addWidget(self.save_button)
        run_buttons.addWidget(self.resume_run_button)
        settings.addRow(run_buttons)
        settings.addRow(self.watch_button)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.resume_button, self.stop_button):
            buttons.addWidget(button)
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.samples)
        plots.setSizes([300, 100])
        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(buttons)
        for widget in (self.status, plots):
            column.addWidget(widget)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(settings_box)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 3)
        QVBoxLayout(self).addWidget(splitter)

    def _set_state(self, state: RunState) -> None:
        idle = not state.active
        has_trainer = self.session.trainer is not None
        self.start_button.setEnabled(idle)
        self.resume_run_button.setEnabled(idle)
        self.watch_button.setEnabled(idle)
        self.pause_button.setEnabled(state == RunState.TRAINING)
        self.resume_button.setEnabled(state == RunState.PAUSED)
        self.stop_button.setEnabled(state in (RunState.TRAINING, RunState.PAUSED))
        self.save_button.setEnabled(has_trainer and state != RunState.PREPARING)
        for widget in (self.form, self.device_combo, self.preset_combo):
            widget.setEnabled(idle)
        if state == RunState.IDLE and self._shown_state == RunState.PREPARING:
            self.status.idle("Not started")  # a preparation was abandoned (or the data changed meanwhile)
        self._shown_state = state

    def _button(self, text: str, name: str, slot: Callable[[], object]) -> QPushButton:
        button = QPushButton(text, objectName=name)
        button.clicked.connect(slot)
        return button
