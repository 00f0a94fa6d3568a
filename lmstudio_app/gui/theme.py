"""Light and dark colours that follow the system (or the user's choice), for widgets and plots alike.

Qt 6.5+ reports the system colour scheme (``QStyleHints.colorScheme()``) and switches its own
palette; pyqtgraph draws with its own colours, so plots ask :func:`plot_palette` and restyle
themselves when :func:`on_scheme_changed` fires. View › Theme (System / Light / Dark) is stored in
the settings under ``"theme"``: :func:`set_theme` applies a choice (Fusion with an explicit palette
for Light and Dark, the system's palette back for System), repaints every plot's background and
axes (:func:`restyle_plots`) and fires the same callbacks as a system switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

from ..settings import load_settings, save_settings


@dataclass(frozen=True)
class PlotPalette:
    background: str
    foreground: str
    train: str  # smoothed training loss
    train_raw: str  # the raw training loss, drawn faint behind the smoothed curve
    val: str
    lr: str
    grid_alpha: float


ERROR_COLOR = "#d0312d"  # what is wrong: readable on light and dark backgrounds
ERROR_STYLE = f"color: {ERROR_COLOR};"  # inline messages saying what is wrong

LIGHT = PlotPalette("#ffffff", "#303030", "#1f77b4", "#1f77b440", "#d62728", "#2ca02c", 0.25)
DARK = PlotPalette("#1e1e1e", "#d0d0d0", "#5aa9e6", "#5aa9e650", "#ff6b6b", "#7bd88f", 0.2)


THEME_KEY = "theme"
CHOICES = ("system", "light", "dark")
_applied = {"choice": "system"}  # what set_theme last applied (module state: one app per process)
_system_palette: list[QPalette] = []  # the palette before the first explicit choice
_system_style: list[str] = []


def theme_choice() -> str:
    """The stored choice, ``"system"`` when missing or unknown."""
    value = load_settings().get(THEME_KEY)
    return value if value in CHOICES else "system"


def applied_choice() -> str:
    return _applied["choice"]


def dark_palette() -> QPalette:
    """A Fusion-style dark palette (the look of most dark desktops)."""
    window, base, text, disabled = QColor("#2b2b2b"), QColor("#1e1e1e"), QColor("#e0e0e0"), QColor("#7f7f7f")
    palette = QPalette()
    role, group = QPalette.ColorRole, QPalette.ColorGroup
    for r, color in ((role.Window, window), (role.WindowText, text), (role.Base, base),
                     (role.AlternateBase, QColor("#262626")), (role.ToolTipBase, QColor("#3a3a3a")),
                     (role.ToolTipText, text), (role.PlaceholderText, disabled), (role.Text, text),
                     (role.Button, QColor("#353535")), (role.ButtonText, text), (role.BrightText, QColor("#ff6b6b")),
                     (role.Light, QColor("#4a4a4a")), (role.Midlight, QColor("#3e3e3e")),
                     (role.Mid, QColor("#2f2f2f")), (role.Dark, QColor("#1a1a1a")), (role.Shadow, QColor("#000000")),
                     (role.Highlight, QColor("#3d7fc4")), (role.HighlightedText, QColor("#ffffff")),
                     (role.Link, QColor("#6cb4ff")), (role.LinkVisited, QColor("#b59cff"))):
        palette.setColor(r, color)
    for r in (role.WindowText, role.Text, role.ButtonText, role.HighlightedText):
        palette.setColor(group.Disabled, r, disabled)
    return palette


def light_palette() -> QPalette:
    style = QStyleFactory.create("Fusion")
    return style.standardPalette() if style is not None else QPalette()


class _Notifier(QObject):
    changed = Signal()


_notifier: list[_Notifier] = []


def _theme_notifier() -> _Notifier:
    if not _notifier:
        _notifier.append(_Notifier())
    return _notifier[0]


def set_theme(choice: str, *, save: bool = True) -> str:
    """Apply ``choice`` (System / Light / Dark) to the running app and store it; returns it.

    An unknown choice falls back to ``"system"``. Plots repaint now, not at the next restart.
    """
    choice = choice if choice in CHOICES else "system"
    if save:
        values = load_settings()
        values[THEME_KEY] = choice
        save_settings(values)
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        _applied["choice"] = choice
        return choice
    if not _system_palette:  # remember what "System" looks like before replacing it
        _system_palette.append(QPalette(app.palette()))
        _system_style.append(app.style().name())
    hints = QGuiApplication.styleHints()
    wanted = {"dark": Qt.ColorScheme.Dark, "light": Qt.ColorScheme.Light}.get(choice, Qt.ColorScheme.Unknown)
    if hasattr(hints, "setColorScheme"):  # Qt 6.8+: native styles (Windows, macOS) follow this
        hints.setColorScheme(wanted)
    if choice == "system":
        if _applied["choice"] != "system":
            app.setStyle(_system_style[0])
            app.setPalette(_system_palette[0])
    else:
        app.setStyle("Fusion")  # a style that draws with the palette on every platform
        app.setPalette(dark_palette() if choice == "dark" else light_palette())
    _applied["choice"] = choice
    apply_theme()
    restyle_plots()
    _theme_notifier().changed.emit()
    return choice


def restyle_plots() -> None:
    """The background and axes of every plot in the app in the current palette's colours.

    Curve colours are each plot's own (they listen with :func:`on_scheme_changed`).
    """
    palette = plot_palette()
    for widget in QApplication.allWidgets():
        if isinstance(widget, pg.PlotWidget):
            if widget.backgroundBrush().color().alpha():  # background=None shows the panel: keep it
                widget.setBackground(palette.background)
            for name in ("left", "bottom", "right", "top"):
                axis = widget.getPlotItem().getAxis(name)
                axis.setPen(pg.mkPen(palette.foreground))
                axis.setTextPen(pg.mkPen(palette.foreground))


def is_dark() -> bool:
    """True for the Dark choice; for System, when the system (or its palette) is in dark mode."""
    if _applied["choice"] != "system":
        return _applied["choice"] == "dark"
    app = QGuiApplication.instance()
    if app is None:
        return False
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is not None:
        value = scheme()
        if value == Qt.ColorScheme.Dark:
            return True
        if value == Qt.ColorScheme.Light:
            return False
    # Unknown scheme (some Linux desktops): judge by the window colour's lightness.
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def plot_palette() -> PlotPalette:
    return DARK if is_dark() else LIGHT


def apply_theme() -> PlotPalette:
    """Set pyqtgraph's global colours (for plots created from now on) and return the palette."""
    palette = plot_palette()
    pg.setConfigOptions(background=palette.background, foreground=palette.foreground, antialias=False)
    return palette


def on_scheme_changed(receiver: QObject, callback: Callable[[], None]) -> None:
    """Call ``callback`` (bound to ``receiver``'s lifetime) when the system switches light/dark."""
    relay = _Relay(receiver, callback)
    _theme_notifier().changed.connect(relay.fire_now)  # View › Theme
    hints = QGuiApplication.styleHints()
    signal = getattr(hints, "colorSchemeChanged", None)
    if signal is not None:
        signal.connect(relay.fire)


class _Relay(QObject):
    """A child of ``receiver`` so the connection dies with it (no calls into deleted widgets)."""

    def __init__(self, receiver: QObject, callback: Callable[[], None]) -> None:
        super().__init__(receiver)
        self._callback = callback

    def fire(self, *_args: object) -> None:
        if _applied["choice"] != "system":
            return  # the user chose Light or Dark: a system switch changes nothing
        apply_theme()
        restyle_plots()
        self._callback()

    def fire_now(self) -> None:
        self._callback()
