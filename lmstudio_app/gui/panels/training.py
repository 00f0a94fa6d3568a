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
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.config import TrainConfig, load_config
from lmstudio_app.devices import available_devices, describe_device, resolve_device
from lmstudio_app.errors import Cancelled, ConfigError, LMStudioError
from lmstudio_app.params import params_to_dict
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.session import Session
from lmstudio_app.settings import default_runs_dir
from lmstudio_app.training.control import StepMetrics
from lmstudio_app.training.controller import RunState

from .. import dialogs
from ..events import AppEvents
from ..preset_state import CUSTOM_LABEL, PresetTracker
from ..preset_state import apply_preset as apply_preset_to
from ..watch_dialog import WatchDialog
from ..widgets.loss_plot import LossPlot
from ..widgets.param_form import ParamForm
from ..widgets.training_progress import ProgressStrip
from ..worker import run_in_thread

# The training settings in tabs, the ones a first run changes first; a field not named here
# (a setting added later) lands in the last tab by itself.
SETTING_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Basic", ("max_steps", "batch_size", "learning_rate", "optimizer", "eval_interval", "sample_tokens")),
    ("Schedule", ("schedule", "warmup_steps", "min_lr", "warmdown_fraction", "log_interval", "checkpoint_interval")),
    ("Optimiser", ("muon_lr", "muon_momentum", "weight_decay", "beta1", "beta2", "grad_clip")),
    ("Advanced", ()),  # dtype, grad_accum, eval_batches, seed, compile, threads: six rows a tab
)


class TrainingPanel(QWidget):
    """Start, watch and steer one training run at a time (see the module docstring)."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.run = session.run
        self._shown_state = RunState.IDLE
        # Checks Start runs first, each returning the message that refuses it (or None): the
        # window adds the model's and tokenizer's forms, so Start never trains with the last
        # valid settings while a form shows an error.
        self.start_checks: list[Callable[[], str | None]] = []

        self.device_combo = QComboBox()
        self.device_combo.setObjectName("deviceCombo")
        for name in available_devices():
            label = name if name == "auto" else f"{name} — {describe_device(resolve_device(name))}"
            self.device_combo.addItem(label, name)
        self.device_combo.currentIndexChanged.connect(self._on_device_chosen)
        self.presets = PresetTracker(session)
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("presetCombo")
        for name in self.presets.names:
            self.preset_combo.addItem(name, name)
            self.preset_combo.setItemData(self.preset_combo.count() - 1, self.presets.description(name),
                                          Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.addItem(CUSTOM_LABEL, None)
        self.preset_combo.setItemData(self.preset_combo.count() - 1,
                                      "The settings differ from every preset (the line below says how)",
                                      Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.activated.connect(self._on_preset_chosen)
        self.preset_note = QLabel()
        self.preset_note.setObjectName("presetNote")
        self.preset_note.setWordWrap(True)
        self.preset_note.setStyleSheet("color: palette(placeholder-text);")

        self.form = ParamForm(TrainConfig, params_to_dict(session.config.train), where="train", groups=SETTING_GROUPS)
        self.form.setObjectName("trainForm")
        # The device combo above replaces the form's own device row (it also describes devices).
        self.form.set_field_visible("device", False)
        self.form.changed.connect(self._on_form_changed)
        if self.form.tabs is not None:
            self.form.tabs.setUsesScrollButtons(False)  # all four group names in view

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
        self.loss_plot.setMinimumHeight(180)  # the plot is the point of this panel (the window gives it more)
        self.samples = QPlainTextEdit()
        self.samples.setObjectName("samplesBox")
        self.samples.setReadOnly(True)
        self.samples.setMaximumBlockCount(2000)
        self.samples.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.samples.setPlaceholderText("A sample of generated text appears at each evaluation.")
        self.samples.setMinimumHeight(self.samples.fontMetrics().lineSpacing() * 2 + 12)  # the plot gets the room
        self._build_layout()

        events.run_state_changed.connect(self._set_state)
        events.training_started.connect(self._on_started)
        events.training_step.connect(self._on_step)
        events.training_finished.connect(self._on_finished)
        events.training_failed.connect(self._on_failed)
        events.train_config_changed.connect(self.refresh_from_session)
        for changed in (events.tokenizer_changed, events.model_config_changed, events.train_config_changed):
            changed.connect(self._show_active_preset)
        events.run_loaded.connect(self._on_run_loaded)
        self.refresh_from_session()
        self._show_active_preset()
        self._set_state(self.run.state)

    # ---- public actions (buttons and menu) --------------------------------------------------

    @property
    def state(self) -> RunState:
        """The run's state as this panel shows it (the controller's, once its event arrived)."""
        return self._shown_state

    def start_training(self) -> None:
        """Commit the settings, then tokenize and build the run in the background and start it."""
        if self.run.state.active:
            return
        for check in self.start_checks:
            problem = check()
            if problem:
                self.status.idle(f"Not started: {problem}")
                dialogs.show_error(self, problem)
                return
        if self._commit_settings():
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
        self.show_records(self.run.history, trainer.config.train.max_steps)  # a resumed run: its earlier curve too
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
        """Apply a bundled preset (by name) or a preset file over the defaults: every setting it
        decides changes (see :mod:`..preset_state`); every panel follows the session."""
        apply_preset_to(self.session, name_or_path)  # refused while a run is active
        self.events.status_message.emit(f"Preset {Path(name_or_path).stem!r} applied")
        self._show_active_preset()

    def _on_preset_chosen(self, index: int) -> None:
        name = self.preset_combo.itemData(index)
        if name is not None:
            try:
                self.apply_preset(name)
            except LMStudioError as exc:
                dialogs.show_exception(self, exc)
        self._show_active_preset()

    def active_preset(self) -> str | None:
        """The preset the settings are exactly, or None ("custom (edited)")."""
        return self.presets.active()

    def _show_active_preset(self) -> None:
        active = self.presets.active()
        index = self.preset_combo.findData(active) if active is not None else self.preset_combo.count() - 1
        with QSignalBlocker(self.preset_combo):
            self.preset_combo.setCurrentIndex(index)
        if active is not None:
            self.preset_note.setText(f"Active preset: {active}")
            self.preset_combo.setToolTip(self.presets.description(active))
            return
        closest = self.presets.edited_from()
        if closest is None:
            self.preset_note.setText("Custom settings.")
        else:
            name, diff = closest
            shown = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
            self.preset_note.setText(f"Custom: differs from {name!r} in {shown}." if diff else "Custom settings.")
        self.preset_combo.setToolTip("Choose a preset to set the tokenizer, model and training settings at once "
                                     "(hover an entry to see what it sets)")

    def show_estimate(self, estimate: str) -> None:
        """Before any run: what the whole run should take (the Model panel's estimate)."""
        text = self.rate_label.text()
        if not self.run.state.active and self.session.trainer is None and text.startswith("Not started"):
            self.rate_label.setText(f"Not started · estimated total: {estimate}" if estimate and estimate != "—"
                                    else "Not started")

    # ---- a run opened for probing ------------------------------------------------------------

    def _on_run_loaded(self, run_dir: Path) -> None:
        """Show the opened run's curve and progress (its metrics.jsonl), not the previous run's."""
        try:
            records = RunDir.open(run_dir).read_metrics()
        except (LMStudioError, OSError) as exc:
            records = []
            self.events.status_message.emit(f"{run_dir}: cannot read its metrics ({exc})")
        self.show_records(records, self.session.config.train.max_steps)
        last = max((int(r.get("step", 0)) for r in records), default=0)
        self.status.show_run(last, self.session.config.train.max_steps,
                             f"Opened run {Path(run_dir).name}: step {last:,} of {self.session.config.train.max_steps:,}")
        self.samples.clear()

    def show_records(self, records: list[dict], max_steps: int) -> None:
        """Draw metrics records (a run's history) as the loss plot's curves."""
        self.loss_plot.clear()
        for record in records:
            self.loss_plot.add_point(record.get("step", 0), record.get("train_loss"), record.get("lr"),
                                     record.get("val_loss"), record.get("kl_to_truth"), record.get("val_bpb"))
        self.loss_plot.set_step_range(max_steps)
        self.loss_plot.redraw()

    # ---- widgets ----------------------------------------------------------------------------

    def _build_layout(self) -> None:
        """Settings on the left (grouped in tabs: nothing to scroll, nothing clipped); buttons,
        progress, the loss plot and samples on the right."""
        settings_box = QGroupBox("Settings")
        settings = QFormLayout(settings_box)
        settings.addRow("Device", self.device_combo)
        settings.addRow("Preset", self.preset_combo)
        settings.addRow(self.preset_note)
        settings.addRow(self.form)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.resume_button, self.stop_button):
            buttons.addWidget(button)
        run_buttons = QHBoxLayout()  # under Start…Stop: the settings column stays short
        for button in (self.save_button, self.resume_run_button, self.watch_button):
            run_buttons.addWidget(button)
        run_buttons.addStretch(1)
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.samples)
        plots.setSizes([300, 100])
        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(buttons)
        column.addLayout(run_buttons)
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
        trainer = self.session.trainer
        if state == RunState.PAUSED and trainer is not None:
            self.status.pause(lambda: trainer.step)
        elif self.status.is_paused():
            self.status.resume()
        self._shown_state = state

    def _button(self, text: str, name: str, slot: Callable[[], object]) -> QPushButton:
        button = QPushButton(text, objectName=name)
        button.clicked.connect(slot)
        return button
