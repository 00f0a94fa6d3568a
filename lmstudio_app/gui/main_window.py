"""The main window: menus, dockable panels over one Session, the status bar, drag and drop.

Every panel gets the same :class:`Session` and :class:`AppEvents` (the session's events,
re-delivered on the GUI thread); panels never call each other. The dock layout and window geometry are saved in the user settings when the window
closes and restored when it opens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QByteArray, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence, QShowEvent
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QMenu, QWidget

from ..config import save_config
from ..devices import describe_device, resolve_device, training_threads
from ..errors import ConfigError, LMStudioError
from ..resources import resource_path
from ..session import Session
from ..settings import default_runs_dir, load_settings, recent_files, save_settings
from ..training.control import StepMetrics
from ..training.controller import RunState
from . import dialogs, gc_guard
from .events import AppEvents
from .export_actions import ExportActions
from .panels.data import DataPanel
from .panels.model import ModelPanel
from .panels.pipeline import PipelineView
from .panels.predictions import PredictionsPanel
from .panels.timeline import TimelinePanel
from .panels.tokenizer import TokenizerPanel
from .panels.training import TrainingPanel
from .plugins_dialog import PluginsDialog, open_plugin_folder
from .widgets.training_progress import STATUS_INTERVAL_MS
from .worker import run_in_thread

STATE_VERSION = 2  # bump when the set of docks changes, so an old saved layout is ignored
GEOMETRY_KEY, STATE_KEY = "window_geometry", "window_state"
# (key, title, panel class, dock area, shortcut to toggle it)
DOCKS: tuple[tuple[str, str, type, Qt.DockWidgetArea, str], ...] = (
    ("data", "Data", DataPanel, Qt.DockWidgetArea.LeftDockWidgetArea, "Alt+1"),
    ("tokenizer", "Tokenizer", TokenizerPanel, Qt.DockWidgetArea.LeftDockWidgetArea, "Alt+2"),
    ("model", "Model", ModelPanel, Qt.DockWidgetArea.LeftDockWidgetArea, "Alt+3"),
    ("training", "Training", TrainingPanel, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+4"),
    ("predictions", "Predictions", PredictionsPanel, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+5"),
    ("pipeline", "Pipeline", PipelineView, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+6"),
    ("timeline", "Timeline", TimelinePanel, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+7"),
)


class MainWindow(QMainWindow):
    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        gc_guard.install()  # cycles are freed in this thread, never in the training thread
        self.session = session
        self.events = AppEvents(session, self)
        self.setObjectName("mainWindow")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks
                            | QMainWindow.DockOption.AllowNestedDocks)

        self.docks: dict[str, QDockWidget] = {}
        self.panels: dict[str, QWidget] = {}
        for key, title, panel_cls, area, _ in DOCKS:
            panel = panel_cls(session, self.events)
            dock = QDockWidget(title, self)
            dock.setObjectName(f"{key}Dock")  # saveState/restoreState match docks by objectName
            dock.setWidget(panel)
            self.addDockWidget(area, dock)
            self.docks[key], self.panels[key] = dock, panel
        self.tabifyDockWidget(self.docks["data"], self.docks["tokenizer"])
        self.tabifyDockWidget(self.docks["tokenizer"], self.docks["model"])
        self.docks["data"].raise_()
        self.splitDockWidget(self.docks["training"], self.docks["predictions"], Qt.Orientation.Vertical)
        self.tabifyDockWidget(self.docks["predictions"], self.docks["pipeline"])  # a laptop screen is short
        self.tabifyDockWidget(self.docks["pipeline"], self.docks["timeline"])
        self.docks["predictions"].raise_()
        self.resize(1400, 900)
        self.data_panel: DataPanel = self.panels["data"]  # type: ignore[assignment]
        self.training_panel: TrainingPanel = self.panels["training"]  # type: ignore[assignment]
        self._default_state = self.saveState(STATE_VERSION)

        self.exports = ExportActions(self, session, self.training_panel.loss_plot)
        self._build_status_bar()
        self._build_menus()
        self.events.error.connect(lambda message, details: dialogs.show_error(self, message, details))
        self.events.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.events.training_step.connect(self._on_training_step)
        self.events.training_started.connect(self._on_training_started)
        self.events.training_finished.connect(self._on_training_finished)
        self.events.run_state_changed.connect(self._update_actions)
        self.events.run_loaded.connect(self._on_run_loaded)
        self.events.train_config_changed.connect(self._update_device_label)
        self.events.corpus_changed.connect(self._update_title)
        self.panels["model"].preview_ready.connect(
            lambda preview: self.params_label.setText(f"{preview.parameters:,} parameters"))
        self._update_title()
        self._update_actions()
        self._sized_once = False
        self._layout_restored = self.restore_layout()

    # ---- menus -------------------------------------------------------------------------------

    def _action(self, menu: QMenu, text: str, slot: Callable[[], object],
                shortcuts: QKeySequence.StandardKey | str | list[str] | None = None) -> QAction:
        action = QAction(text, self)
        if isinstance(shortcuts, list):
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        elif shortcuts is not None:
            action.setShortcut(QKeySequence(shortcuts))
        action.triggered.connect(lambda *_: self._guard(slot))
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open files…", self.open_files, "Ctrl+O")
        self._action(file_menu, "Open &folder…", self.open_folder, "Ctrl+Shift+O")
        self._action(file_menu, "Use &demo corpus", self.data_panel.use_demo)
        self.recent_menu = file_menu.addMenu("&Recent files")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        self.open_run_action = self._action(file_menu, "Open &run…", self.open_run, "Ctrl+Shift+R")
        self._action(file_menu, "&Save config as…", self.save_config_as, "Ctrl+Shift+S")
        self._action(file_menu, "&Load preset…", self.load_preset_file)
        export_menu = file_menu.addMenu("&Export")
        self.export_csv_action = self._action(export_menu, "Loss curves as &CSV…", self.exports.export_csv)
        self.export_png_action = self._action(export_menu, "Loss curves as &PNG…", self.exports.export_png)
        self._action(export_menu, "&Setup as config + torchrun command…", self.exports.export_setup)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        panel = self.training_panel
        training = bar.addMenu("&Training")
        self.start_action = self._action(training, "&Start", panel.start_training, "Ctrl+R")
        self.pause_action = self._action(training, "&Pause / resume", panel.toggle_pause, ["Ctrl+P", "Space"])
        self.stop_action = self._action(training, "S&top", panel.stop_training, "Ctrl+.")
        training.addSeparator()
        self.save_checkpoint_action = self._action(training, "Save &checkpoint", panel.save_checkpoint, "Ctrl+S")
        self._action(training, "&Resume run…", panel.choose_run_to_resume)

        view = bar.addMenu("&View")
        for key, _, _, _, shortcut in DOCKS:
            toggle = self.docks[key].toggleViewAction()
            toggle.setShortcut(QKeySequence(shortcut))
            view.addAction(toggle)
        view.addSeparator()
        self._action(view, "&Reset layout", self.reset_layout)

        plugins = bar.addMenu("&Plugins")
        self._action(plugins, "&Manage plugins…", self.show_plugins)
        self._action(plugins, "Open plugin &folder", open_plugin_folder)

        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&About lmstudio", self.show_about, "F1")

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        entries = recent_files()
        if not entries:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        for entry in entries:
            action = self.recent_menu.addAction(entry)
            action.triggered.connect(lambda *_, p=entry: self.data_panel.load_paths([p], replace=True))

    # ---- actions -----------------------------------------------------------------------------

    def _guard(self, slot: Callable[[], object]) -> None:
        """Run a menu action; our own errors become a dialog (others reach the exception hook)."""
        try:
            slot()
        except LMStudioError as exc:
            dialogs.show_exception(self, exc)

    def open_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open text files", "", "Text files (*.txt *.md);;All files (*)")
        if paths:
            self.data_panel.load_paths(paths, replace=True)

    def open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of text files")
        if folder:
            self.data_panel.load_paths([folder], replace=True)

    def open_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a run to probe", str(default_runs_dir()))
        if folder:
            self.load_run(folder)

    def load_run(self, run_dir: str | Path) -> None:
        """Load a saved run for probing (in the background); the session refuses it while training."""
        self.statusBar().showMessage(f"Loading {run_dir}…")
        run_in_thread(lambda report, cancelled: self.session.load_run(run_dir),
                      on_error=lambda exc, details: dialogs.show_exception(self, exc, None
                                                                           if isinstance(exc, LMStudioError)
                                                                           else details))

    def _on_run_loaded(self, run_dir: Path) -> None:
        self.statusBar().showMessage(f"Loaded run {run_dir.name}: probe it in the Predictions panel", 8000)

    def save_config_as(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save config", "config.toml", "TOML (*.toml)")
        if path:
            save_config(self.session.config, path)
            self.statusBar().showMessage(f"Config saved to {path}", 8000)

    def load_preset_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load preset", str(resource_path("presets")), "TOML (*.toml)")
        if path:
            self.apply_preset(path)

    def apply_preset(self, name_or_path: str | Path) -> None:
        self.training_panel.apply_preset(name_or_path)

    def show_plugins(self) -> None:
        PluginsDialog(self.session.registry, self).exec()

    def show_about(self) -> None:
        dialogs.show_about(self, self.device_label.text())

    # ---- layout persistence ------------------------------------------------------------------

    def save_layout(self) -> None:
        values = load_settings()
        values[GEOMETRY_KEY] = bytes(self.saveGeometry().toBase64()).decode("ascii")
        values[STATE_KEY] = bytes(self.saveState(STATE_VERSION).toBase64()).decode("ascii")
        save_settings(values)

    def restore_layout(self) -> bool:
        """Restore the saved geometry and docks; a missing or stale entry keeps the default."""
        values = load_settings()
        geometry, state = values.get(GEOMETRY_KEY), values.get(STATE_KEY)
        restored = False
        if isinstance(geometry, str):
            restored = self.restoreGeometry(QByteArray.fromBase64(geometry.encode("ascii")))
        if isinstance(state, str):
            restored = self.restoreState(QByteArray.fromBase64(state.encode("ascii")), STATE_VERSION) and restored
        return restored

    def reset_layout(self) -> None:
        self.restoreState(self._default_state, STATE_VERSION)
        for dock in self.docks.values():
            dock.show()
        self._apply_default_sizes()

    def _apply_default_sizes(self) -> None:
        """Give the loss plot and the predictions most of the room (needs the real window size)."""
        width, height = self.width(), self.height()
        horizontal, vertical = Qt.Orientation.Horizontal, Qt.Orientation.Vertical
        self.resizeDocks([self.docks["data"], self.docks["training"]], [width * 34 // 100, width * 66 // 100],
                         horizontal)
        self.resizeDocks([self.docks["training"], self.docks["predictions"]],
                         [height * 55 // 100, height * 45 // 100], vertical)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._sized_once:
            self._sized_once = True
            gc_guard.freeze_long_lived()  # the window and its panels live as long as the app
            if not self._layout_restored:
                # Again now that the layout is active: the docks, added one below the other before
                # they were tabbed, had grown the window past the screen.
                self.resize(1400, 900)
                self._apply_default_sizes()

    # ---- status bar --------------------------------------------------------------------------

    def _build_status_bar(self) -> None:
        self._latest_step: StepMetrics | None = None
        self._status_timer = QTimer(self, singleShot=True, interval=STATUS_INTERVAL_MS)
        self._status_timer.timeout.connect(self._show_training_step)
        self.device_label = QLabel()
        self.params_label = QLabel()
        self.step_label = QLabel()
        self.speed_label = QLabel()
        for label, name in ((self.device_label, "deviceStatus"), (self.params_label, "paramsStatus"),
                            (self.step_label, "stepStatus"), (self.speed_label, "speedStatus")):
            label.setObjectName(name)
            self.statusBar().addPermanentWidget(label)
        self._update_device_label()

    def _update_device_label(self) -> None:
        try:
            train = self.session.config.train
            self.device_label.setText(describe_device(resolve_device(train.device), training_threads(train.threads)))
        except ConfigError as exc:  # e.g. a config asking for CUDA on a machine without it
            self.device_label.setText(str(exc))

    def _on_training_started(self) -> None:
        trainer = self.session.trainer
        if trainer is not None:
            self.device_label.setText(describe_device(trainer.device, training_threads(trainer.config.train.threads)))
            self.params_label.setText(f"{trainer.model.num_parameters():,} parameters")
        self._update_actions()

    def _on_training_step(self, metrics: StepMetrics) -> None:
        """Reports can come hundreds of times a second: the labels follow at most every STATUS_INTERVAL_MS."""
        self._latest_step = metrics
        if not self._status_timer.isActive():
            self._status_timer.start()
        if metrics.warning:
            self.statusBar().showMessage(metrics.warning, 15000)

    def _show_training_step(self) -> None:
        metrics = self._latest_step
        if metrics is not None:
            self.step_label.setText(f"step {metrics.step:,} / {metrics.max_steps:,}")
            self.speed_label.setText(f"{metrics.tokens_per_s:,.0f} tokens/s")

    def _on_training_finished(self, _reason: str) -> None:
        self._status_timer.stop()
        self._show_training_step()
        self._update_actions()

    def _update_actions(self, *_args: object) -> None:
        state = self.session.run.state
        self.start_action.setEnabled(not state.active)
        self.pause_action.setEnabled(state in (RunState.TRAINING, RunState.PAUSED))
        self.stop_action.setEnabled(state in (RunState.TRAINING, RunState.PAUSED))
        self.save_checkpoint_action.setEnabled(self.session.trainer is not None)
        self.open_run_action.setEnabled(not state.active)

    def _update_title(self) -> None:
        infos = self.session.file_infos
        if self.session.using_demo:
            what = "demo corpus"
        else:
            what = Path(infos[0].path).name + (f" + {len(infos) - 1} more" if len(infos) > 1 else "")
        self.setWindowTitle(f"lmstudio — {what}")

    # ---- drag and drop -----------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        urls = event.mimeData().urls()
        if urls and all(url.isLocalFile() for url in urls):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.data_panel.load_paths(paths, replace=False)

    # ---- closing -----------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop a running trainer and wait for it (it saves a final checkpoint), then close."""
        if self.training_panel.is_training():
            self.statusBar().showMessage("Stopping the training and saving a checkpoint…")
            self.training_panel.stop_and_wait()
        self.save_layout()
        self.events.detach()  # the session may outlive this window
        for panel in self.panels.values():
            shutdown = getattr(panel, "shutdown", None)
            if callable(shutdown):
                shutdown()
        super().closeEvent(event)
