"""Which prompts the next run watches: one per line; none lets the run choose.

The session's ``[watch]`` config (``session.set_watch``); a run records their predictions at
step 0 and at every evaluation, which the Timeline panel draws.
"""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from ..errors import LMStudioError
from ..session import Session
from . import theme

HINT = ("One prompt per line. Leave it empty and the run chooses: on the demo corpus the grammar's own "
        "prompts, on other text a few stretches of the validation text (with what really follows them). "
        "Applies to the next run.")


class WatchDialog(QDialog):
    """Edit ``session.config.watch.prompts``."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Watched prompts")
        self.editor = QPlainTextEdit("\n".join(session.config.watch.prompts))
        self.editor.setPlaceholderText("the cat sat on the\nthe dog chased the")
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setStyleSheet(theme.ERROR_STYLE)
        self.error_label.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.apply)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addWidget(self.editor, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self.resize(520, 320)

    def prompts(self) -> list[str]:
        """The non-blank lines, as typed (a prompt's trailing space matters to a tokenizer)."""
        return [line for line in self.editor.toPlainText().split("\n") if line.strip()]

    def apply(self) -> None:
        try:
            self.session.set_watch({"prompts": self.prompts()})
        except LMStudioError as exc:  # e.g. a run in progress, or a bad value
            self.error_label.setText(str(exc))
            self.error_label.show()
            return
        self.accept()
