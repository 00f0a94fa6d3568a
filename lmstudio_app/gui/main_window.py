"""The main window: menus, dockable panels over one Session, the status bar, drag and drop.

Every panel gets the same :class:`Session` and :class:`AppEvents` (the session's events,
re-delivered on the GUI thread); panels never call each other. The dock layout and window geometry are saved in the user settings when the window
closes and restored when it opens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, QObject, QSize, Qt, QTimer
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
    QResizeEvent,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QFrame,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QWidget,
)

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
from .help_menu import install as install_help
from .lr_finder_dialog import LrFinderDialog
from .panels.compare import ComparePanel
from .panels.data import DataPanel
from .panels.inside import InsidePanel
from .panels.model import ModelPanel
from .panels.pipeline import PipelineView
from .panels.predictions import PredictionsPanel
from .panels.runs import RunsPanel
from .panels.timeline import TimelinePanel
from .panels.tokenizer import TokenizerPanel
from .panels.training import TrainingPanel
from .plugins_dialog import PluginsDialog, open_plugin_folder
from .sweep_dialog import SweepDialog
from .widgets.training_progress import STATUS_INTERVAL_MS
from .worker import run_in_thread

DEFAULT_SIZE = (1400, 900)  # the first window, where the screen allows
STATE_VERSION = 4  # bump when the set of docks changes, so an old saved layout is ignored
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
    ("inside", "Inside", InsidePanel, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+8"),
    ("runs", "Runs", RunsPanel, Qt.DockWidgetArea.LeftDockWidgetArea, "Alt+9"),
    ("compare", "Compare", ComparePanel, Qt.DockWidgetArea.RightDockWidgetArea, "Alt+0"),
)


def _scrolled(panel: QWidget) -> QScrollArea:
    return PanelScroll(panel)


class PanelScroll(QScrollArea):
    """A panel in a scroll area without a frame: a short screen scrolls a panel down instead of
    making the window taller than the screen (the docks' minimum heights add up).

    The panel fills the view and is only made taller (never wider) than it when its minimum
    needs more. QScrollArea's own resizing would size a panel holding a height-for-width widget
    (token chips) to its preferred height instead, and scroll where everything fits.
    """

    def __init__(self, panel: QWidget) -> None:
        super().__init__()
        self.setObjectName(f"{panel.objectName() or type(panel).__name__}Scroll")
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidgetResizable(False)
        # Only ever scrolled down: the dock keeps the panel's own minimum width (side by side the
        # panels fit a 1366 px screen), so nothing is cut off or scrolled sideways.
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(panel)
        self.setMinimumWidth(panel.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width())
        panel.installEventFilter(self)
        self.viewport().installEventFilter(self)

    def fit(self) -> None:
        panel = self.widget()
        if panel is None:
            return
        # A panel's minimum width can grow after construction (a legend entry such as "KL to
        # truth" appears with the run): pass it on to the dock, or the panel would be laid out
        # narrower than its minimum and its right edge cut off.
        needed = panel.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        if self.minimumWidth() != needed:
            self.setMinimumWidth(needed)
        view = self.viewport().size()
        size = QSize(view.width(), max(view.height(), panel.minimumSizeHint().height()))
        if panel.size() != size:
            panel.resize(size)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if (watched is self.viewport() and event.type() == QEvent.Type.Resize) or (
                watched is self.widget() and event.type() == QEvent.Type.LayoutRequest):
            self.fit()  # the view changed size, or the panel's minimum may have
        return False

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.fit()


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
            dock.setWidget(_scrolled(panel))
            self.addDockWidget(area, dock)
            self.docks[key], self.panels[key] = dock, panel
        self.tabifyDockWidget(self.docks["data"], self.docks["tokenizer"])
        self.tabifyDockWidget(self.docks["tokenizer"], self.docks["model"])
        self.tabifyDockWidget(self.docks["model"], self.docks["runs"])
        self.docks["data"].raise_()
        self.splitDockWidget(self.docks["training"], self.docks["predictions"], Qt.Orientation.Vertical)
        self.tabifyDockWidget(self.docks["predictions"], self.docks["pipeline"])  # a laptop screen is short
        self.tabifyDockWidget(self.docks["pipeline"], self.docks["timeline"])
        self.tabifyDockWidget(self.docks["timeline"], self.docks["inside"])
        self.tabifyDockWidget(self.docks["inside"], self.docks["compare"])
        self.docks["predictions"].raise_()
        self.resize(self._default_size())
        self.data_panel: DataPanel = self.panels["data"]  # type: ignore[assignment]
        self.training_panel: TrainingPanel = self.panels["training"]  # type: ignore[assignment]
        self.panels["runs"].resume_requested.connect(self.training_panel.resume_run)  # the same Resume flow
        self.panels["runs"].compare_requested.connect(lambda paths: (self.panels["compare"].set_runs(paths),
                                                                     self.docks["compare"].raise_()))
        self._default_state = self.saveState(STATE_VERSION)

        self.exports = ExportActions(self, session, self.training_panel.loss_plot)
        # Start refuses what a form shows as invalid: the session still holds the last valid value.
        for key in ("tokenizer", "model"):
            self.training_panel.start_checks.append(lambda key=key: self._form_problem(key))
        self._build_status_bar()
        self._build_menus()
        install_help(self)  # Help's guides, View › Theme, each dock's "?" (gui/help_menu.py)
        self.events.error.connect(lambda message, details: dialogs.show_error(self, message, details))
        self.events.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.events.training_step.connect(self._on_training_step)
        self.events.training_started.connect(self._on_training_started)
        self.events.training_finished.connect(self._on_training_finished)
        self.events.run_state_changed.connect(self._update_actions)
        self.events.run_loaded.connect(self._on_run_loaded)
        self.events.run_state_changed.connect(self._on_run_state)
        self.training_panel.loss_plot.has_data_changed.connect(self._update_exports)
        self.events.train_config_changed.connect(self._update_device_label)
        self.events.corpus_changed.connect(self._update_title)
        self.panels["model"].preview_ready.connect(
            lambda preview: self.params_label.setText(f"{preview.parameters:,} parameters"))
        model_panel = self.panels["model"]
        for changed in (model_panel.preview_ready, self.events.train_config_changed):  # after the panel's own slot
            changed.connect(lambda *_: self.training_panel.show_estimate(model_panel.total_time_label.text()))
        self._update_title()
        self._update_actions()
        self._update_exports()
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
        export_menu.setToolTipsVisible(True)  # a disabled export says why
        self.export_csv_action = self._action(export_menu, "Loss curves as &CSV…", self.exports.export_csv)
        self.export_png_action = self._action(export_menu, "Loss curves as &PNG…", self.exports.export_png)
        self._action(export_menu, "&Setup as config + torchrun command…", self.exports.export_setup)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)

        panel = self.training_panel
        training = bar.addMenu("&Training")
        self.start_action = self._action(training, "&Start", panel.start_training, "Ctrl+R")
        # Space also pauses, but as a key the focused widget did not use (keyPressEvent), never
        # as a shortcut: a shortcut would take it from a table, a button or a check box first.
        self.pause_action = self._action(training, "&Pause / resume   (Space)", panel.toggle_pause, "Ctrl+P")
        self.stop_action = self._action(training, "S&top", panel.stop_training, "Ctrl+.")
        training.addSeparator()
        self.save_checkpoint_action = self._action(training, "Save &checkpoint", panel.save_checkpoint, "Ctrl+S")
        self._action(training, "&Resume run…", panel.choose_run_to_resume)
        training.addSeparator()
        self._action(training, "&Learning-rate finder…", lambda: LrFinderDialog(self.session, self).show())
        self._action(training, "S&weep…", lambda: SweepDialog(self.session, self).show())

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
        self._latest_step = None
        self._status_timer.stop()
        progress = self.training_panel.progress
        self.step_label.setText(f"{run_dir.name}: step {progress.value():,} / {progress.maximum():,}")
        self.speed_label.setText("")
        self._update_title()
        self._update_exports()

    def _form_problem(self, key: str) -> str | None:
        """What the model's or tokenizer's form shows as invalid (None: nothing)."""
        form = getattr(self.panels[key], "form", None)
        error = form.error() if form is not None else None
        return f"{error} (fix it in the {key.capitalize()} panel)" if error else None

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Space pauses or resumes: only when no focused widget took the key for itself."""
        if (event.key() == Qt.Key.Key_Space and event.modifiers() == Qt.KeyboardModifier.NoModifier
                and self.pause_action.isEnabled()):
            self.pause_action.trigger()
            event.accept()
            return
        super().keyPressEvent(event)

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
        # Each of the two gets what its panel needs without scrolling where the window is tall
        # enough, the room left over mostly to the loss plot; a short window shares the shortfall.
        docks = (self.docks["training"], self.docks["predictions"])
        total = sum(dock.height() for dock in docks) or height
        needs = [self.panels[key].minimumSizeHint().height() + 28 for key in ("training", "predictions")]
        if sum(needs) <= total:
            training = needs[0] + (total - sum(needs)) * 6 // 10
        elif total - needs[0] >= needs[1] * 3 // 4:  # a little short: the predictions scroll, not both
            training = needs[0]
        else:
            training = total * needs[0] // sum(needs)
        self.resizeDocks(list(docks), [training, total - training], vertical)

    def _default_size(self) -> QSize:
        """1400 × 900, or the screen's available area where that is smaller (a 1366 × 768 laptop)."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        available = screen.availableGeometry().size() if screen is not None else QSize(*DEFAULT_SIZE)
        frame = QSize(8, 32)  # the window manager's title bar and borders, roughly
        return QSize(min(DEFAULT_SIZE[0], available.width() - frame.width()),
                     min(DEFAULT_SIZE[1], available.height() - frame.height()))

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._sized_once:
            self._sized_once = True
            gc_guard.freeze_long_lived()  # the window and its panels live as long as the app
            if not self._layout_restored:
                # Again now that the layout is active: the docks, added one below the other before
                # they were tabbed, had grown the window past the screen.
                self.resize(self._default_size())
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
        self._update_title()
        self._update_exports()

    def _on_training_step(self, metrics: StepMetrics) -> None:
        """Reports can come hundreds of times a second: the labels follow at most every STATUS_INTERVAL_MS."""
        self._latest_step = metrics
        if not self._status_timer.isActive():
            self._status_timer.start()
        if metrics.warning:
            self.statusBar().showMessage(metrics.warning, 15000)

    def _show_training_step(self) -> None:
        metrics = self._latest_step
        if self.session.run.state == RunState.PAUSED:
            return  # the paused labels stay until the run goes on
        if metrics is not None:
            self.step_label.setText(f"step {metrics.step:,} / {metrics.max_steps:,}")
            self.speed_label.setText(f"{metrics.tokens_per_s:,.0f} tokens/s")

    def _on_training_finished(self, _reason: str) -> None:
        self._status_timer.stop()
        self._show_training_step()
        self._update_actions()
        self._update_exports()

    def _update_actions(self, *_args: object) -> None:
        state = self.session.run.state
        self.start_action.setEnabled(not state.active)
        self.pause_action.setEnabled(state in (RunState.TRAINING, RunState.PAUSED))
        self.stop_action.setEnabled(state in (RunState.TRAINING, RunState.PAUSED))
        self.save_checkpoint_action.setEnabled(self.session.trainer is not None)
        self.open_run_action.setEnabled(not state.active)

    def _on_run_state(self, state: RunState) -> None:
        """Paused: the status bar says so at the trainer's own step, not frozen running numbers."""
        trainer = self.session.trainer
        if state == RunState.PAUSED and trainer is not None:
            self._status_timer.stop()
            self._show_paused()
            QTimer.singleShot(500, self._show_paused)  # the step in flight when Pause was pressed
        elif state == RunState.TRAINING and self.speed_label.text() == "paused":
            self.speed_label.setText("resuming…")
        self._update_title()

    def _show_paused(self) -> None:
        trainer = self.session.trainer
        if self.session.run.state == RunState.PAUSED and trainer is not None:
            self.step_label.setText(f"paused at step {trainer.step:,} / {trainer.config.train.max_steps:,}")
            self.speed_label.setText("paused")

    def _update_exports(self, *_args: object) -> None:
        """The loss-curve exports are enabled only when there is a curve (a tooltip says why not)."""
        has = self.exports.has_curves()
        for action in (self.export_csv_action, self.export_png_action):
            action.setEnabled(has)
            action.setToolTip("" if has else "Nothing to export yet: train a run or open one (File › Open run…)")

    def _update_title(self, *_args: object) -> None:
        infos = self.session.file_infos
        if self.session.using_demo:
            what = "demo corpus"
        else:
            what = Path(infos[0].path).name + (f" + {len(infos) - 1} more" if len(infos) > 1 else "")
        trainer, loaded = self.session.trainer, self.session.loaded_run
        if trainer is not None and trainer.run_dir is not None:
            what += f" — run {trainer.run_dir.path.name}"
        elif loaded is not None:
            what = f"run {loaded.name} (opened)"
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
        """While training, ask first (Stop and save / Cancel); then stop the trainer and wait for
        it (it saves a final checkpoint), then close."""
        if self.training_panel.is_training():
            if not self._confirm_quit():
                event.ignore()
                return
            self.statusBar().showMessage("Stopping the training and saving a checkpoint…")
            self.training_panel.stop_and_wait()
        self.save_layout()
        self.events.detach()  # the session may outlive this window
        for panel in self.panels.values():
            shutdown = getattr(panel, "shutdown", None)
            if callable(shutdown):
                shutdown()
        super().closeEvent(event)

    def _confirm_quit(self) -> bool:
        """Ask whether to stop the run (a checkpoint is saved) and quit; only Cancel keeps it."""
        trainer = self.session.trainer
        where = f" in {trainer.run_dir.path}" if trainer is not None and trainer.run_dir is not None else ""
        step = f" at step {trainer.step:,}" if trainer is not None else ""
        box = QMessageBox(QMessageBox.Icon.Question, "Quit while training?",
                          f"A run is training{step}. Quitting stops it and saves a checkpoint{where}: "
                          "Training › Resume run… continues it later.",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("quitWhileTraining")
        box.button(QMessageBox.StandardButton.Save).setText("Stop and save")
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        box.setEscapeButton(QMessageBox.StandardButton.Cancel)
        return box.exec() != QMessageBox.StandardButton.Cancel.value
