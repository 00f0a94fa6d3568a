"""Light and dark colours that follow the system, for Qt widgets and pyqtgraph plots alike.

Qt 6.5+ reports the system colour scheme (``QStyleHints.colorScheme()``) and switches its own
palette; pyqtgraph draws with its own colours, so plots ask :func:`plot_palette` and restyle
themselves when :func:`on_scheme_changed` fires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QGuiApplication, QPalette


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


def is_dark() -> bool:
    """True when the system (or, before Qt 6.5, the palette) is in dark mode."""
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
    hints = QGuiApplication.styleHints()
    signal = getattr(hints, "colorSchemeChanged", None)
    if signal is not None:
        signal.connect(_Relay(receiver, callback).fire)


class _Relay(QObject):
    """A child of ``receiver`` so the connection dies with it (no calls into deleted widgets)."""

    def __init__(self, receiver: QObject, callback: Callable[[], None]) -> None:
        super().__init__(receiver)
        self._callback = callback

    def fire(self, *_args: object) -> None:
        apply_theme()
        self._callback()
