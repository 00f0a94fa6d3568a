"""The error dialog (one line for the person, the traceback behind "Details"), the About box,
a yes/no question, and the exception hook that turns any uncaught error into a dialog.

Every modal here goes through ``exec()`` on an instance (never the static helpers such as
``QMessageBox.question``), so tests can replace ``exec`` and never block on a modal.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

import torch
from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from .. import __version__
from ..errors import LMStudioError


def describe_exception(exc: BaseException) -> str:
    """The one line shown to the person: our own errors as they are, others with their type."""
    if isinstance(exc, LMStudioError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"Unexpected error: {type(exc).__name__}" + (f": {text}" if text else "")


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class ErrorDialog(QDialog):
    """A one-line message, with the details (traceback) folded away behind a button."""

    def __init__(self, message: str, details: str = "", parent: QWidget | None = None,
                 title: str = "lmstudio — error") -> None:
        super().__init__(parent)
        self.message = message
        self.details = details
        self.setWindowTitle(title)
        self.setObjectName("errorDialog")
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical).pixmap(32, 32))
        text = QLabel(message)
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text.setObjectName("errorMessage")
        top = QHBoxLayout()
        top.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(text, 1)

        self.details_box = QPlainTextEdit(details)
        self.details_box.setReadOnly(True)
        self.details_box.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details_box.setMinimumHeight(180)
        self.details_box.hide()

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        buttons.accepted.connect(self.accept)
        if details:
            toggle = QPushButton("Show details")
            toggle.setCheckable(True)
            toggle.toggled.connect(self.details_box.setVisible)
            toggle.toggled.connect(lambda on: toggle.setText("Hide details" if on else "Show details"))
            copy = QPushButton("Copy")
            copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(f"{message}\n\n{details}"))
            buttons.addButton(toggle, QDialogButtonBox.ButtonRole.ActionRole)
            buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.details_box)
        layout.addWidget(buttons)
        self.setMinimumWidth(440)


def show_error(parent: QWidget | None, message: str, details: str = "") -> None:
    ErrorDialog(message, details, parent).exec()


def show_exception(parent: QWidget | None, exc: BaseException, details: str | None = None) -> None:
    """An error dialog for ``exc``; our own errors need no traceback, others show theirs."""
    if details is None:
        details = "" if isinstance(exc, LMStudioError) else format_traceback(exc)
    show_error(parent, describe_exception(exc), details)


def ask_yes_no(parent: QWidget | None, title: str, text: str, details: str = "") -> bool:
    box = QMessageBox(QMessageBox.Icon.Question, title, text,
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, parent)
    box.setDefaultButton(QMessageBox.StandardButton.Yes)
    if details:
        box.setDetailedText(details)
    return QMessageBox.StandardButton(box.exec()) == QMessageBox.StandardButton.Yes


def show_about(parent: QWidget | None, device: str = "") -> None:
    box = QMessageBox(parent)
    box.setWindowTitle("About lmstudio")
    box.setIconPixmap(box.style().standardIcon(QStyle.StandardPixmap.SP_ComputerIcon).pixmap(48, 48))
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(
        f"<h3>lmstudio {__version__}</h3>"
        "<p>Train a small transformer language model and watch it learn to predict the next token.</p>"
        f"<p>PyTorch {torch.__version__} · PySide6 {pyside_version} · Python {sys.version.split()[0]}"
        + (f"<br>Device: {device}" if device else "")
        + "</p><p>MIT licence.</p>"
    )
    box.exec()


class _ExceptionRouter(QObject):
    """Carries an exception from any thread to the GUI thread (queued signal)."""

    caught = Signal(str, str)


class ExceptionHook:
    """Route uncaught exceptions (slots, other threads) to an error dialog instead of dying."""

    def __init__(self, parent_widget: Callable[[], QWidget | None]) -> None:
        self._router = _ExceptionRouter()
        self._router.caught.connect(lambda msg, details: show_error(parent_widget(), msg, details))
        self._previous_sys = sys.excepthook
        self._previous_threading = threading.excepthook

    def install(self) -> ExceptionHook:
        sys.excepthook = self._sys_hook
        threading.excepthook = self._thread_hook
        return self

    def uninstall(self) -> None:
        sys.excepthook = self._previous_sys
        threading.excepthook = self._previous_threading

    def _sys_hook(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            self._previous_sys(exc_type, exc, tb)
            return
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(details)  # keep a trace for bug reports even when the dialog is closed
        self._router.caught.emit(describe_exception(exc), details)

    def _thread_hook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        self._sys_hook(args.exc_type, args.exc_value, args.exc_traceback)
