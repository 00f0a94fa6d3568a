"""Start the desktop app: ``lmstudio`` with no arguments (or ``python -m lmstudio_app``).

Opens the main window on the bundled demo corpus with settings that train in about a minute on
a CPU, so the first launch is one click away from watching a model learn. With
``LMSTUDIO_PLUGINS=none`` (safe mode) no third-party plugin is even imported and a banner across
the top of the window says so; plugins that failed to load are named in the status bar. The
first start shows the first-run guide (``LMSTUDIO_GUIDE=0`` skips it) and the View › Theme
choice is applied before the window is built.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QToolBar

from .. import __version__
from ..errors import LMStudioError
from ..registry import PluginRegistry, safe_mode_active
from ..resources import resource_path
from ..session import Session
from ..settings import disabled_plugins
from . import dialogs, gc_guard, guide, qt_refcounts, theme
from .plugins_dialog import safe_mode_banner

if TYPE_CHECKING:
    from .main_window import MainWindow

APP_NAME = "lmstudio"
ORGANIZATION = "lmstudio_app"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmstudio", description="Open the lmstudio desktop app.")
    parser.add_argument("--plugins-dir", action="append", default=[], metavar="DIR",
                        help="also load plugins from this folder (repeatable)")
    # Qt's own options (-platform, -style, ...) pass through untouched.
    args, _ = parser.parse_known_args(list(argv))
    return args


def create_application(argv: Sequence[str]) -> QApplication:
    """The QApplication with its name, icon and theme (reuses a running one, e.g. in tests)."""
    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication([sys.argv[0] if sys.argv else APP_NAME, *argv])
    gc_guard.install()  # from the start, cycles are freed in the GUI thread only
    QCoreApplication.setApplicationName(APP_NAME)
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationVersion(__version__)
    QGuiApplication.setDesktopFileName("lmstudio")  # packaging/lmstudio.desktop: Wayland's icon and grouping
    icon_path = resource_path("lmstudio.png")
    if icon_path.exists():
        app.setWindowIcon(QIcon(str(icon_path)))
    theme.apply_theme()
    if (choice := theme.theme_choice()) != "system":  # View › Theme, remembered
        theme.set_theme(choice, save=False)
    return app  # type: ignore[return-value]


def open_main_window(plugins_dirs: Sequence[str] = ()) -> MainWindow:
    """Discover the plugins, open a session on the demo corpus and show the main window.

    Raises :class:`LMStudioError` for a bad ``--plugins-dir``; a broken plugin never stops it.
    """
    registry = PluginRegistry.discover(list(plugins_dirs), disabled=disabled_plugins())
    session = Session(registry)
    from .main_window import MainWindow  # after the QApplication: panels build widgets on import

    window = MainWindow(session)
    add_startup_notices(window, registry)
    window.show()
    return window


def add_startup_notices(window: MainWindow, registry: PluginRegistry) -> None:
    """The safe-mode banner (a fixed bar above the docks) and a note naming plugins that failed."""
    if safe_mode_active():
        bar = QToolBar("Safe mode", window)
        bar.setObjectName("safeModeBar")  # saveState needs a name; a later normal start ignores it
        bar.setMovable(False)
        bar.setFloatable(False)
        bar.toggleViewAction().setVisible(False)  # it cannot be hidden while safe mode is on
        bar.addWidget(safe_mode_banner(bar))
        window.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
    failed = sorted({error.name for error in registry.errors})
    if failed:
        window.statusBar().showMessage(
            f"{len(failed)} plugin(s) failed to load ({', '.join(failed)}): see Plugins → Manage plugins…", 30_000)


def main(argv: Sequence[str] | None = None, plugins_dirs: Sequence[str] = ()) -> int:
    """Run the app until its window closes; returns the exit status.

    ``argv`` are command-line arguments (``--plugins-dir DIR``); ``plugins_dirs`` lets the CLI
    pass folders it already parsed.
    """
    if argv is None:  # the CLI already parsed (and passes) its own --plugins-dir options
        argv = [] if plugins_dirs else sys.argv[1:]
    arguments = list(argv)
    args = _parse(arguments)
    app = create_application(arguments)
    hook = dialogs.ExceptionHook(lambda: QApplication.activeWindow()).install()
    if (note := qt_refcounts.warning()) is not None:
        sys.stderr.write(f"lmstudio: warning: {note}\n")
    try:
        window = open_main_window([*plugins_dirs, *args.plugins_dir])
    except LMStudioError as exc:  # e.g. a --plugins-dir that does not exist
        dialogs.show_exception(None, exc)
        hook.uninstall()
        return 1
    if guide.should_show_on_start():  # here, not in MainWindow: tests and scripts get no guide
        QTimer.singleShot(0, lambda: guide.show_guide(window))
    # Ctrl+C / SIGTERM in the terminal close the window properly (training stops, checkpoint
    # saved). Python only runs signal handlers between bytecodes, so a timer wakes it up.
    previous = {sig: signal.signal(sig, lambda *_: window.close()) for sig in (signal.SIGINT, signal.SIGTERM)}
    wake_up = QTimer()
    wake_up.timeout.connect(lambda: None)
    wake_up.start(250)
    try:
        return int(app.exec())
    finally:
        wake_up.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        hook.uninstall()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
