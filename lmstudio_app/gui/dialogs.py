"""The error dialog (one line for the person, the traceback behind "Details"), the About box,
a yes/no question, the encoding question (a combo box of encodings), a path to copy, and the
exception hook that turns any uncaught error into a dialog.

Every modal here goes through ``exec()`` on an instance (never the static helpers such as
``QMessageBox.question``), so tests can replace ``exec`` and never block on a modal.
"""

from __future__ import annotations

import shutil
import subprocess
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
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
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
        self.details_box.setMinimumHeight(self.fontMetrics().height() * 10)  # in lines: the same at any DPI
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
        self.setMinimumWidth(self.fontMetrics().height() * 26)


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


# Offered when a file is not UTF-8 (editable: any Python codec name works).
COMMON_ENCODINGS = ("utf-8", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "iso-8859-15", "cp1251",
                    "koi8-r", "shift_jis", "euc-jp", "gb18030", "big5", "euc-kr", "mac-roman", "cp437")


def encoding_box(parent: QWidget | None, message: str, suggested: str) -> QMessageBox:
    """The question "read the file(s) as …?" with the encoding in an editable combo (``encodingCombo``).

    A plain QMessageBox with the combo added under its text (so tests answer it like any other).
    """
    box = QMessageBox(QMessageBox.Icon.Question, "Not UTF-8", "",
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, parent)
    combo = QComboBox(box)
    combo.setObjectName("encodingCombo")
    combo.setEditable(True)  # any codec Python knows, not only the listed ones
    combo.addItems([suggested, *(name for name in COMMON_ENCODINGS if name != suggested)])
    combo.setCurrentIndex(0)

    def update_text(name: str) -> None:
        box.setText(f"{message}\n\nRead the file(s) as {name.strip() or '…'}?")

    combo.currentTextChanged.connect(update_text)
    box.button(QMessageBox.StandardButton.Yes).setText("Read")
    box.button(QMessageBox.StandardButton.No).setText("Cancel")
    box.setDefaultButton(QMessageBox.StandardButton.Yes)
    row = QWidget(box)
    row_layout = QHBoxLayout(row)
    row_layout.setContentsMargins(0, 0, 0, 0)
    row_layout.addWidget(QLabel("Encoding:"))
    row_layout.addWidget(combo, 1)
    grid = box.layout()
    if isinstance(grid, QGridLayout):  # under the text, the buttons moved below it
        below = grid.rowCount()
        grid.addWidget(row, below, 1, 1, max(grid.columnCount() - 1, 1))
        buttons = box.findChild(QDialogButtonBox)
        if buttons is not None:
            grid.addWidget(buttons, below + 1, 0, 1, grid.columnCount())
    update_text(suggested)
    return box


def ask_encoding(parent: QWidget | None, message: str, suggested: str) -> str | None:
    """The encoding the person chose to read a file that is not UTF-8 (``suggested`` first), or None."""
    box = encoding_box(parent, message, suggested)
    if QMessageBox.StandardButton(box.exec()) != QMessageBox.StandardButton.Yes:
        return None
    combo = box.findChild(QComboBox, "encodingCombo")
    return combo.currentText().strip() or None if combo is not None else suggested


class PathDialog(QDialog):
    """A message and a path to copy, for when the file manager cannot be opened."""

    def __init__(self, parent: QWidget | None, message: str, path: str) -> None:
        super().__init__(parent)
        self.message, self.details = message, path
        self.setWindowTitle("lmstudio")
        self.setObjectName("pathDialog")
        text = QLabel(message)
        text.setWordWrap(True)
        self.path_edit = QLineEdit(path)
        self.path_edit.setObjectName("pathEdit")
        self.path_edit.setReadOnly(True)
        self.path_edit.selectAll()
        self.path_edit.setMinimumWidth(self.fontMetrics().horizontalAdvance(path) + self.fontMetrics().height() * 2)
        copy = QPushButton("Copy path")
        copy.setObjectName("copyPathButton")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(path))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        buttons.addButton(copy, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(self.path_edit)
        layout.addWidget(buttons)


def show_path(parent: QWidget | None, message: str, path: str) -> None:
    PathDialog(parent, message, path).exec()


def file_manager_available() -> bool:
    """False where opening a folder is known to do nothing: Linux with xdg-open but no folder handler.

    (Qt's ``openUrl`` returns False by itself when there is no launcher at all; with xdg-open it
    returns True even when xdg-open then finds nothing to open folders with.)
    """
    if not sys.platform.startswith("linux") or shutil.which("xdg-mime") is None:
        return True
    try:
        done = subprocess.run(["xdg-mime", "query", "default", "inode/directory"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: trust openUrl
    return bool(done.stdout.strip())


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
