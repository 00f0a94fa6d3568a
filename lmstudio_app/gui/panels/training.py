"""The Training dock: device, settings, presets, start/pause/resume/stop, progress and plots.

The panel owns the :class:`~lmstudio_app.gui.worker.TrainingRunner`; the main window's
Training menu calls the same public methods the buttons do. Preparing a run (tokenizing,
building the model) happens on the thread pool, so the window never freezes.
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
from lmstudio_app.tokenizer import Tokenizer
from lmstudio_app.training.control import StepMetrics
from lmstudio_app.training.trainer import Trainer

from .. import dialogs
from ..events import AppEvents
from ..widgets.loss_plot import LossPlot
from ..widgets.param_form import ParamForm
from ..widgets.training_progress import ProgressStrip
from ..worker import BackgroundTask, TrainingRunner, run_in_thread

IDLE, PREPARING, RUNNING, PAUSED = "idle", "preparing", "running", "paused"


class TrainingPanel(QWidget):
    """Start, watch and steer one training run at a time (see the module docstring)."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.runner = TrainingRunner(self)
        self.state = IDLE
        self._preparing_task: BackgroundTask | None = None
        self._announcing = False

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

        self.runner.step.connect(self._on_step)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.events.train_config_changed.connect(self.refresh_from_session)
        self.refresh_from_session()
        self._set_state(IDLE)

    # ---- public actions (buttons and menu) --------------------------------------------------

    def start_training(self) -> None:
        """Commit the settings, then tokenize and build the run in the background and start it."""
        if self.state == IDLE and self._commit_settings():
            self._prepare("Preparing: tokenizing the corpus and building the model…", self.session.create_trainer)

    def resume_run(self, run_dir: str | Path) -> None:
        """Continue a saved run (its config, weights and optimiser state) in the background."""
        if self.state != IDLE:
            return
        run_dir = Path(run_dir)
        try:
            saved = load_config(run_dir / "config.toml")
        except ConfigError as exc:
            dialogs.show_exception(self, exc)
            return
        wanted = self.form.values().get("max_steps") or 0
        overrides = {"max_steps": wanted} if wanted > saved.train.max_steps else {}
        self._prepare(f"Resuming {run_dir.name}…", lambda: self.session.resume_trainer(run_dir, overrides),
                      resumed=True)

    def choose_run_to_resume(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Resume run", str(default_runs_dir()))
        if folder:
            self.resume_run(folder)

    def pause_training(self) -> None:
        if self.state == RUNNING:
            self.runner.pause()
            self._set_state(PAUSED)
            self.events.training_paused.emit()

    def resume_training(self) -> None:
        if self.state == PAUSED:
            self.runner.resume()
            self._set_state(RUNNING)
            self.events.training_resumed.emit()

    def toggle_pause(self) -> None:
        self.pause_training() if self.state == RUNNING else self.resume_training()

    def stop_training(self) -> None:
        """Ask the trainer to stop after the current step; it saves a final checkpoint."""
        if self.state in (RUNNING, PAUSED):
            self.runner.stop()  # also wakes a paused trainer so it can see the stop
            self.rate_label.setText("Stopping after this step…")

    def stop_and_wait(self, timeout_ms: int = -1) -> bool:
        """Stop a running trainer and block until its thread ended (used when closing)."""
        if self._preparing_task is not None:  # a run still being prepared is never launched
            self._preparing_task.cancel()
            self._preparing_task = None
            self._set_state(IDLE)
        return self.runner.stop_and_wait(timeout_ms)

    def is_training(self) -> bool:
        return self.state in (PREPARING, RUNNING, PAUSED)

    def save_checkpoint(self) -> None:
        """Save now, from a pool thread: the trainer takes its lock, so this lands between steps."""
        trainer = self.session.trainer
        if trainer is None:
            return
        run_in_thread(lambda report, cancelled: trainer.save_checkpoint(), on_done=lambda path: self.events.status_message.emit(f"Checkpoint saved: {path}"),
                      on_error=lambda exc, details: dialogs.show_exception(self, exc, details or None))

    def refresh_from_session(self) -> None:
        """Show the session's train settings (after a preset, a loaded run, a resumed run)."""
        if self._announcing:
            return
        train = self.session.config.train
        self.form.set_values(params_to_dict(train))
        with QSignalBlocker(self.device_combo):
            self.device_combo.setCurrentIndex(max(self.device_combo.findData(train.device), 0))

    # ---- preparing and launching -----------------------------------------------------------

    def _prepare(self, message: str, make_trainer: Callable[[], Trainer], resumed: bool = False) -> None:
        """Build the trainer on the thread pool (tokenizing can take a while), then launch it."""
        tokenizer_before = self.session.tokenizer
        self._set_state(PREPARING)
        self.status.busy(message)  # until the first step
        task = run_in_thread(lambda report, cancelled: make_trainer(),
                             on_done=lambda trainer: self._launch(task, trainer, tokenizer_before, resumed),
                             on_error=lambda exc, details: self._on_prepare_failed(task, exc, details))
        self._preparing_task = task

    def _launch(self, task: BackgroundTask, trainer: Trainer, tokenizer_before: Tokenizer | None,
                resumed: bool = False) -> None:
        if task is not self._preparing_task:  # abandoned (the window is closing)
            return
        self._preparing_task = None
        try:
            if self.session.tokenizer is not tokenizer_before:
                self.events.tokenizer_changed.emit()
            if self.session.corpus is not None:
                self.events.corpus_tokenized.emit()
            if resumed:  # the session switched to the run's data and settings
                self.refresh_from_session()
                for signal in (self.events.corpus_changed, self.events.model_config_changed,
                               self.events.train_config_changed):
                    signal.emit()
            self.loss_plot.clear()
            self._load_history(trainer)
            self.loss_plot.set_step_range(trainer.config.train.max_steps)
            self.samples.clear()
            self.status.begin(trainer.config.train.max_steps)
            self.runner.start(trainer)
        except BaseException:
            self._set_state(IDLE)  # never stay stuck in "preparing"; the exception hook shows it
            raise
        self._set_state(RUNNING)
        self.events.training_started.emit()
        if trainer.run_dir is not None:
            self.events.status_message.emit(f"Training in {trainer.run_dir.path}")

    def _load_history(self, trainer: Trainer) -> None:
        """A resumed run shows its earlier curve too (an unreadable log just starts empty)."""
        try:
            records = trainer.run_dir.read_metrics() if trainer.run_dir is not None else []
        except LMStudioError:
            records = []
        for record in records:
            self.loss_plot.add_point(record.get("step", 0), record.get("train_loss"), record.get("lr"),
                                     record.get("val_loss"))

    def _on_prepare_failed(self, task: BackgroundTask, exc: BaseException, details: str) -> None:
        if task is not self._preparing_task:
            return
        self._preparing_task = None
        self._set_state(IDLE)
        if isinstance(exc, Cancelled):
            self.status.idle(str(exc))
            return
        self.status.idle("Could not start")
        dialogs.show_exception(self, exc, None if isinstance(exc, LMStudioError) else details)

    # ---- worker signals --------------------------------------------------------------------

    def _on_step(self, metrics: StepMetrics) -> None:
        """Per report only cheap work (reports can come hundreds of times a second): the plot
        and the progress strip buffer it and draw on their own timers."""
        self.loss_plot.add_metrics(metrics)
        self.status.report(metrics)
        if metrics.sample:
            val = f" (val loss {metrics.val_loss:.4f})" if metrics.val_loss is not None else ""
            self.samples.appendPlainText(f"── step {metrics.step}{val} ──\n{metrics.sample}\n")
        self.events.training_step.emit(metrics)
        if metrics.val_loss is not None:
            self.events.model_updated.emit()

    def _on_finished(self, reason: str) -> None:
        self.loss_plot.redraw()
        self._set_state(IDLE)
        self.status.finish(f"Training {reason}" if reason in ("finished", "stopped") else reason)
        self.events.training_finished.emit(reason)
        self.events.model_updated.emit()

    def _on_failed(self, message: str, details: str) -> None:
        self._set_state(IDLE)
        self.status.finish("Training failed")
        self.events.training_finished.emit(message)
        dialogs.show_error(self, message, details)

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
        if self.state == IDLE and self._commit_settings():
            self._announcing = True  # our own change: no need to reload the form from the session
            try:
                self.events.train_config_changed.emit()
            finally:
                self._announcing = False

    def _on_device_chosen(self) -> None:
        self.form.set_values({"device": self.device_combo.currentData()})
        self._on_form_changed()

    def apply_preset(self, name_or_path: str | Path) -> None:
        """Overlay a bundled preset (by name) or a preset file; the other panels follow."""
        if self.state != IDLE:
            raise ConfigError(f"{name_or_path}: stop the training before changing the settings")
        self.session.apply_preset(name_or_path)
        self.refresh_from_session()
        for signal in (self.events.train_config_changed, self.events.model_config_changed,
                       self.events.tokenizer_changed):
            signal.emit()
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

    def _set_state(self, state: str) -> None:
        self.state = state
        has_trainer = self.session.trainer is not None
        self.start_button.setEnabled(state == IDLE)
        self.resume_run_button.setEnabled(state == IDLE)
        self.pause_button.setEnabled(state == RUNNING)
        self.resume_button.setEnabled(state == PAUSED)
        self.stop_button.setEnabled(state in (RUNNING, PAUSED))
        self.save_button.setEnabled(has_trainer and state in (IDLE, RUNNING, PAUSED))
        for widget in (self.form, self.device_combo, self.preset_combo):
            widget.setEnabled(state == IDLE)

    def _button(self, text: str, name: str, slot: Callable[[], object]) -> QPushButton:
        button = QPushButton(text, objectName=name)
        button.clicked.connect(slot)
        return button
