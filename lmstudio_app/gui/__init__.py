"""The desktop app: a thin Qt view over the core (``lmstudio_app.session``).

Holds: ``app`` (QApplication set-up), ``main_window`` (menus, docks, status bar), ``events``
(the one adapter that re-delivers the session's events on the GUI thread), ``queries`` (the
"latest answer wins" background query every panel asks the model through), ``worker`` (the
thread pool), ``panels/`` and ``widgets/``, the app explaining itself (``explain``: each stage
with the live numbers and every dock's "?"; ``guide``: the first-run guide; ``help_menu``: the Help
menu and View › Theme), and the Qt-only helpers (``dialogs``, ``theme``, ``export_actions``,
``plugins_dialog``, ``watch_dialog``, ``gc_guard``, ``qt_refcounts``).

May import: Qt, pyqtgraph, the session, the CLI's command strings and the whole core. Only the
launcher imports this package.
"""

from . import qt_refcounts

# Before any widget exists: a PySide6 that leaks references to None/True/False would otherwise
# abort the interpreter hours into a training run (see qt_refcounts.py).
qt_refcounts.protect()
