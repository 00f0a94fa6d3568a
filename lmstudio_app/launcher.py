"""The ``lmstudio`` entry point: the desktop app without a command, the headless CLI with one.

This is the only module outside ``gui/`` that imports the GUI, and it does so only when the app
is asked for: ``lmstudio train`` and the other commands (cli.py, Qt-free by contract) start
fast and work on machines without Qt or a display.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .cli import commands as cli

# The shared libraries Qt's xcb platform plugin (libqxcb.so and libQt6XcbQpa) loads, with the
# package that provides each on Debian/Ubuntu, Fedora and Arch. A bare Linux machine lacks some of
# them and Qt then aborts naming only one ("xcb-cursor0 is needed"), so all are checked up front.
QT_XCB_LIBRARIES: dict[str, tuple[str, str, str]] = {
    "libxcb.so.1": ("libxcb1", "libxcb", "libxcb"),
    "libX11.so.6": ("libx11-6", "libX11", "libx11"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb", "libx11"),
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image", "xcb-util-image"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util", "xcb-util"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb", "libxcb"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl", "libglvnd"),
    "libGL.so.1": ("libgl1", "libglvnd-glx", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype", "freetype2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs", "dbus"),
}
# (package manager, the install command before the package names); the first found is shown first.
INSTALLERS: tuple[tuple[str, str], ...] = (
    ("apt-get", "apt-get install -y"),
    ("dnf", "dnf install -y"),
    ("pacman", "pacman -S --needed"),
)
SKIP_CHECK_ENV = "LMSTUDIO_SKIP_QT_CHECK"  # set to 1 where the check is wrong (an unusual Qt build)


def library_loads(soname: str) -> bool:
    """True when the dynamic loader finds ``soname`` (the search Qt's own loading goes through)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def uses_xcb(environ: Mapping[str, str] | None = None) -> bool:
    """Whether Qt would start on X11 (xcb): Linux, xcb asked for, or an X display and no Wayland one.

    Without any display Qt cannot start whatever is installed, and says so itself.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return False
    platform = env.get("QT_QPA_PLATFORM", "").strip()
    if platform:
        return platform.split(";")[0].split(":")[0] == "xcb"
    return bool(env.get("DISPLAY")) and not env.get("WAYLAND_DISPLAY")


def missing_qt_libraries(loads: Callable[[str], bool] = library_loads) -> list[str]:
    """The libraries of :data:`QT_XCB_LIBRARIES` the loader cannot find, in that order."""
    return [soname for soname in QT_XCB_LIBRARIES if not loads(soname)]


def xcb_plugin_path() -> Path | None:
    """PySide6's xcb platform plugin, found without importing PySide6 (Qt must not load yet)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        plugin = Path(folder) / "Qt" / "plugins" / "platforms" / "libqxcb.so"
        if plugin.is_file():
            return plugin
    return None


def ldd_missing(plugin: Path | None = None) -> list[str]:
    """Every library ``ldd`` reports "not found" for the xcb plugin (a newer Qt may need more than
    :data:`QT_XCB_LIBRARIES` lists); [] where ldd or the plugin is not there."""
    plugin = plugin or xcb_plugin_path()
    ldd = shutil.which("ldd")
    if plugin is None or ldd is None:
        return []
    try:
        done = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    found = re.findall(r"^\s*(\S+)\s+=>\s+not found", done.stdout, flags=re.MULTILINE)
    return list(dict.fromkeys(found))


def install_commands(missing: Sequence[str], which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """The command that installs ``missing`` with each package manager, this machine's first."""
    sudo = "" if getattr(os, "geteuid", lambda: 1)() == 0 else "sudo "
    commands: list[tuple[bool, str]] = []
    for position, (manager, prefix) in enumerate(INSTALLERS):
        packages = list(dict.fromkeys(QT_XCB_LIBRARIES[soname][position] for soname in missing))
        commands.append((which(manager) is None, f"{sudo}{prefix} {' '.join(packages)}"))
    return [command for _, command in sorted(commands, key=lambda item: item[0])]


def x_display_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why Qt's xcb plugin could not reach the X server, or None (also when that cannot be told).

    Qt reports an unreachable display as "xcb-cursor0 is needed", which sends people installing
    libraries that are there; libxcb's own ``xcb_connect`` says what is really wrong.
    """
    env = os.environ if environ is None else environ
    display = env.get("DISPLAY", "")
    if not display:
        return "no X display to open the window on: DISPLAY is not set (or set QT_QPA_PLATFORM=wayland)"
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return None  # the missing libraries are the problem, reported on their own
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    connection = xcb.xcb_connect(display.encode(), None)
    try:
        failed = not connection or xcb.xcb_connection_has_error(connection) != 0
    finally:
        if connection:
            xcb.xcb_disconnect(connection)
    if failed:
        return (f"cannot connect to the X display DISPLAY={display}: is the X server running, and may "
                "this user open windows on it (xhost, XAUTHORITY)?")
    return None


def qt_libraries_problem(loads: Callable[[str], bool] | None = None,
                         which: Callable[[str], str | None] | None = None,
                         environ: Mapping[str, str] | None = None,
                         unlisted: Callable[[], list[str]] | None = None) -> list[str]:
    """What to print instead of starting Qt when its system libraries are missing, else [].

    The first line is the error with the one command for this machine's package manager; the
    others give the other distributions' commands and the way around the check.
    """
    env = os.environ if environ is None else environ
    if env.get(SKIP_CHECK_ENV, "") not in ("", "0") or not uses_xcb(env):
        return []
    missing = missing_qt_libraries(loads or library_loads)
    others_missing = [name for name in (unlisted or ldd_missing)() if name not in QT_XCB_LIBRARIES]
    if not missing and not others_missing:
        return []
    names = ", ".join([*missing, *others_missing])
    if not missing:  # only libraries this table does not know: name them, no package to offer
        return [f"the desktop app needs system libraries that are missing ({names}): install the packages "
                "that provide them", f"  ({SKIP_CHECK_ENV}=1 starts it anyway; the CLI commands work without them)"]
    first, *others = install_commands(missing, which or shutil.which)
    also = f" (and the packages providing {', '.join(others_missing)})" if others_missing else ""
    return [f"the desktop app needs system libraries that are missing ({names}): {first}{also}",
            *(f"  or: {command}" for command in others),
            f"  ({SKIP_CHECK_ENV}=1 starts it anyway; the CLI commands work without them)"]


def launch_gui(plugins_dirs: Sequence[str]) -> int:
    """Open the desktop app (``--plugins-dir`` folders already parsed); its exit status."""
    problem = qt_libraries_problem()
    if problem:  # before Qt loads: it would abort the process naming one library only
        cli.print_error(problem[0])
        sys.stderr.write("".join(f"{line}\n" for line in problem[1:]))
        return cli.EXIT_ERROR
    if uses_xcb() and os.environ.get(SKIP_CHECK_ENV, "") in ("", "0") and (no_display := x_display_problem()):
        cli.print_error(no_display)  # Qt would blame a library ("xcb-cursor0 is needed") and abort
        return cli.EXIT_ERROR
    try:
        from .gui.app import main as gui_main
    except ImportError as exc:  # e.g. PySide6 missing, or no Qt platform libraries
        cli.print_error(f"the desktop app cannot start ({type(exc).__name__}: {exc})")
        return cli.EXIT_ERROR
    return int(gui_main([], plugins_dirs=list(plugins_dirs)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """``lmstudio [--plugins-dir DIR] [COMMAND ...]``; returns the exit status."""
    return cli.main(sys.argv[1:] if argv is None else argv, gui=launch_gui)
