"""The "Inside" dock: what the model does with a text, in four tabs.

* **Attention** (:mod:`.inside_attention`): what each head of each layer looks at, for the prompt;
* **Logit lens** (:mod:`.inside_lens`): the prediction the residual stream would give after each block;
* **Embeddings** (:mod:`.inside_embeddings`): the token embeddings on a 2-D map, with neighbours;
* **Loss over text** (:mod:`.inside_loss`): the model's loss on each token of the validation text.

Each follows whatever the app probes (the live model at most once a second while training, the
paused model, a loaded run, the timeline's step) and asks only while it is the tab shown in a
visible dock (:mod:`.inside_base`), so training runs at full speed with the dock open elsewhere.
A model that does not implement the plugin API's optional inspection contract gets a sentence
saying what it does not expose in each tab.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QDockWidget, QTabWidget, QVBoxLayout, QWidget

from lmstudio_app.session import Session

from ..events import AppEvents
from .inside_attention import AttentionView
from .inside_base import InsideView
from .inside_embeddings import EmbeddingView
from .inside_lens import LensView
from .inside_loss import LossView


class InsidePanel(QWidget):
    """The four inspection views as tabs (see the module docstring)."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.attention = AttentionView(session, events)
        self.lens = LensView(session, events)
        self.embeddings = EmbeddingView(session, events)
        self.loss = LossView(session, events)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for view in self.views():
            self.tabs.addTab(view, view.title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)
        self._dock: QDockWidget | None = None

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._dock is None:  # a dock tabbed behind another is moved off-screen, never hidden:
            parent = self.parentWidget()  # its visibilityChanged is the only word that it came to the front
            while parent is not None and not isinstance(parent, QDockWidget):
                parent = parent.parentWidget()
            if isinstance(parent, QDockWidget):
                self._dock = parent
                parent.visibilityChanged.connect(self._on_dock_visibility)

    def _on_dock_visibility(self, visible: bool) -> None:
        if visible:  # once Qt has moved it back on screen
            QTimer.singleShot(0, self, lambda: self.current_view().wake())

    def current_view(self) -> InsideView:
        view = self.tabs.currentWidget()
        assert isinstance(view, InsideView)
        return view

    def views(self) -> list[InsideView]:
        return [self.attention, self.lens, self.embeddings, self.loss]

    def show_view(self, view: InsideView) -> None:
        self.tabs.setCurrentWidget(view)

    def is_busy(self) -> bool:
        return any(view.is_busy() for view in self.views())

    def shutdown(self) -> None:
        for view in self.views():
            view.shutdown()
