"""The ``lmstudio`` entry point: the desktop app without a command, the headless CLI with one.

This is the only module outside ``gui/`` that imports the GUI, and it does so only when the app
is asked for: ``lmstudio train`` and the other commands (cli.py, Qt-free by contract) start
fast and work on machines without Qt or a display.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import commands as cli


def launch_gui(plugins_dirs: Sequence[str]) -> int:
    """Open the desktop app (``--plugins-dir`` folders already parsed); its exit status."""
    try:
        from .gui.app import main as gui_main
    except ImportError as exc:  # e.g. PySide6 missing, or no Qt platform libraries
        cli.print_error(f"the desktop app cannot start ({type(exc).__name__}: {exc})")
        return cli.EXIT_ERROR
    return int(gui_main([], plugins_dirs=list(plugins_dirs)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``lmstudio [--plugins-dir DIR] [COMMAND ...]``; returns the exit status."""
    return cli.main(sys.argv[1:] if argv is None else argv, gui=launch_gui)
