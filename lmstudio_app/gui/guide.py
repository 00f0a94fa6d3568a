"""The first-run guide: five steps (load → tokenize → model → train → probe), skippable, reopenable.

The launcher (``gui.app.main``) shows it once, on the first start; "seen" is stored in the
settings (``"guide_seen"``), and ``LMSTUDIO_GUIDE=0`` keeps it from opening on its own (scripted
and virtual-screen runs). Help › First-run guide opens it any time. It is not modal: each step's
"Show me" raises the panel it talks about, and the window stays usable behind it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QApplication, QDialog, QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..settings import load_settings, save_settings

if TYPE_CHECKING:
    from .explain import MainWindow

SEEN_KEY = "guide_seen"
GUIDE_ENV = "LMSTUDIO_GUIDE"  # "0": never open on its own


@dataclass(frozen=True)
class Step:
    title: str
    dock: str  # the DOCKS key of the panel it shows
    text: str


STEPS: tuple[Step, ...] = (
    Step("Load text", "data",
         "The <b>Data</b> panel holds what the model learns from. The demo corpus is loaded already; "
         "add your own .txt or .md files with <i>File › Open files…</i> (Ctrl+O) or by dropping them on the window."),
    Step("Tokenize", "tokenizer",
         "The <b>Tokenizer</b> panel cuts the text into tokens and numbers them. Pick characters, bytes, words "
         "or BPE sub-words; the chips show how your prompt is cut."),
    Step("Size the model", "model",
         "The <b>Model</b> panel sets the network: layers, heads, width, context length. It shows the number "
         "of parameters and about how long a step takes before you start."),
    Step("Train", "training",
         "Press <b>Start</b> (Ctrl+R) in the <b>Training</b> panel and watch the loss fall. Pause with Ctrl+P; "
         "a checkpoint is saved when you stop."),
    Step("Probe", "predictions",
         "Type a prompt in the <b>Predictions</b> panel: the table and the bars show the next-token probabilities "
         "as the model learns. The <b>Pipeline</b> panel follows one token from text to loss; every panel's "
         "<b>?</b> button explains what you are looking at, with the live numbers."),
)


def guide_seen() -> bool:
    return load_settings().get(SEEN_KEY) is True


def mark_seen() -> None:
    values = load_settings()
    if values.get(SEEN_KEY) is not True:
        values[SEEN_KEY] = True
        save_settings(values)


def should_show_on_start() -> bool:
    """Only on the first start, and never when ``LMSTUDIO_GUIDE=0``."""
    return os.environ.get(GUIDE_ENV, "").strip() != "0" and not guide_seen()


class GuideDialog(QDialog):
    """One step at a time: Back / Next / Show me, Skip guide (or Done at the end)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window_ = window
        self.setObjectName("guideDialog")
        self.setWindowTitle("Welcome to lmstudio")
        self.setModal(False)
        self.index = 0
        self.counter = QLabel()
        self.counter.setObjectName("guideCounter")
        self.counter.setTextFormat(Qt.TextFormat.RichText)
        self.heading = QLabel()
        self.heading.setObjectName("guideHeading")
        self.body = QLabel()
        self.body.setObjectName("guideText")
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.skip_button = QPushButton("Skip guide")
        self.skip_button.setObjectName("guideSkip")
        self.back_button = QPushButton("Back")
        self.show_button = QPushButton("Show me")
        self.show_button.setObjectName("guideShowMe")
        self.next_button = QPushButton("Next")
        self.next_button.setObjectName("guideNext")
        self.next_button.setDefault(True)
        for button in (self.skip_button, self.back_button, self.show_button):
            button.setAutoDefault(False)  # Enter always means Next, whichever button has the focus
        self.skip_button.clicked.connect(self.close)
        self.back_button.clicked.connect(lambda: self.go(self.index - 1))
        self.next_button.clicked.connect(self._next)
        self.show_button.clicked.connect(self.show_panel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.skip_button)
        buttons.addStretch(1)
        for button in (self.back_button, self.show_button, self.next_button):
            buttons.addWidget(button)
        line = self.fontMetrics().height()  # in text lines, not pixels: the same look at 2×
        icon = QLabel()
        icon.setPixmap(QApplication.windowIcon().pixmap(line * 3, line * 3))
        top = QHBoxLayout()
        top.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        words = QVBoxLayout()
        words.addWidget(self.counter)
        words.addWidget(self.heading)
        words.addWidget(self.body, 1)
        top.addLayout(words, 1)
        # A frame of its own: the guide sits over the panels and must not blend into them.
        frame = QFrame()
        frame.setObjectName("guideFrame")
        frame.setFrameShape(QFrame.Shape.StyledPanel)
        inner = QVBoxLayout(frame)
        inner.addLayout(top, 1)
        inner.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(frame)
        self.setMinimumWidth(line * 26)
        self.body.setMinimumHeight(line * 5)
        self.go(0)

    def step(self) -> Step:
        return STEPS[self.index]

    def go(self, index: int) -> None:
        self.index = max(0, min(index, len(STEPS) - 1))
        step = self.step()
        self.counter.setText(f"Step {self.index + 1} of {len(STEPS)}: " + " → ".join(
            f"<b>{s.title}</b>" if i == self.index else s.title for i, s in enumerate(STEPS)))
        self.heading.setText(f"<h3>{step.title}</h3>")
        self.body.setText(step.text)
        self.back_button.setEnabled(self.index > 0)
        last = self.index == len(STEPS) - 1
        self.next_button.setText("Done" if last else "Next")
        self.skip_button.setVisible(not last)
        self.show_panel()

    def _next(self) -> None:
        if self.index == len(STEPS) - 1:
            self.close()
        else:
            self.go(self.index + 1)

    def show_panel(self) -> None:
        dock = self.window_.docks.get(self.step().dock)
        if dock is not None:
            dock.show()
            dock.raise_()

    def closeEvent(self, event: QCloseEvent) -> None:
        mark_seen()  # skipped, done or closed: it does not open on its own again
        super().closeEvent(event)

    def done(self, result: int) -> None:  # Esc ends up here, not in closeEvent
        mark_seen()
        super().done(result)


def show_guide(window: MainWindow) -> GuideDialog:
    """Open the guide at its first step (one per window), next to the window's right edge."""
    dialog: GuideDialog | None = getattr(window, "_guide_dialog", None)
    if dialog is None:
        dialog = GuideDialog(window)
        window._guide_dialog = dialog  # type: ignore[attr-defined]
    dialog.go(0)
    dialog.show()
    dialog.adjustSize()
    frame = window.frameGeometry()
    dialog.move(frame.right() - dialog.width() - frame.width() // 20, frame.top() + frame.height() // 6)
    dialog.raise_()
    dialog.activateWindow()  # the keyboard goes to the guide: Enter goes on, Esc skips
    dialog.next_button.setFocus()
    return dialog
