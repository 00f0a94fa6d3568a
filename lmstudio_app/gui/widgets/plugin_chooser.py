"""The plugin picker of the tokenizer and model panels.

The installed plugins of one kind in a combo box, the chosen plugin's description, its settings
form (generated from its params dataclass, see :class:`~lmstudio_app.gui.widgets.param_form.ParamForm`)
and a line for what is wrong. The panel decides what a choice means (``session.set_model``,
``session.set_tokenizer``); this widget only shows and edits it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

from lmstudio_app.errors import LMStudioError

from .. import theme
from .param_form import ParamForm


class PluginChooser(QWidget):
    """``plugin_chosen``: the person picked another plugin (its form then holds the defaults);
    ``edited``: a value in the form changed (check ``form.error()`` before using it)."""

    plugin_chosen = Signal()
    edited = Signal()

    def __init__(self, specs: Mapping[str, Any], where: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.specs = dict(specs)
        self.where = where  # "model" or "tokenizer": how the form names its keys in messages
        self.form: ParamForm | None = None
        self.locked = False

        self.combo = QComboBox()
        for name, spec in self.specs.items():
            self.combo.addItem(name, name)
            self.combo.setItemData(self.combo.count() - 1, spec.description, Qt.ItemDataRole.ToolTipRole)
        self.description_label = QLabel()
        self.description_label.setWordWrap(True)
        self.form_box = QVBoxLayout()
        self.error_label = QLabel()
        self.error_label.setStyleSheet(theme.ERROR_STYLE)
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.lock_label = QLabel()
        self.lock_label.setObjectName("lockLabel")
        self.lock_label.setWordWrap(True)
        self.lock_label.setStyleSheet("font-weight: bold;")
        self.lock_label.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.lock_label)
        layout.addWidget(self.combo)
        layout.addWidget(self.description_label)
        layout.addLayout(self.form_box)
        layout.addWidget(self.error_label)
        self.combo.currentIndexChanged.connect(self._on_plugin_chosen)

    def plugin(self) -> str:
        return str(self.combo.currentData())

    def spec(self) -> Any:
        return self.specs[self.plugin()]

    def set_choice(self, plugin: str, params: Mapping[str, Any]) -> None:
        """Show ``plugin`` with ``params`` (an unknown plugin: the first one, with its defaults),
        without emitting ``plugin_chosen``."""
        index = self.combo.findData(plugin)
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(max(index, 0))
        self.combo.blockSignals(False)
        self._build_form(params if index >= 0 else {})

    def set_locked(self, locked: bool, note: str = "") -> None:
        """Disable the choice and its form, with ``note`` saying why (e.g. while a run trains)."""
        self.locked = locked
        self.combo.setEnabled(not locked)
        if self.form is not None:
            self.form.setEnabled(not locked)
        self.lock_label.setText(note if locked else "")
        self.lock_label.setVisible(locked and bool(note))

    def show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))

    def _build_form(self, values: Mapping[str, Any]) -> None:
        spec = self.spec()
        self.description_label.setText(spec.description)
        if self.form is not None:
            self.form.setParent(None)
            self.form.deleteLater()
        try:
            self.form = ParamForm(spec.params, dict(values), where=self.where)
        except LMStudioError as exc:  # e.g. a config naming a key this plugin lacks: start from defaults
            self.form = ParamForm(spec.params, where=self.where)
            self.show_error(str(exc))
        self.form.changed.connect(self.edited)
        self.form.setEnabled(not self.locked)
        self.form_box.addWidget(self.form)

    def _on_plugin_chosen(self) -> None:
        self._build_form({})
        self.plugin_chosen.emit()


class ChooserPanel:
    """Mixin for a panel built around a :class:`PluginChooser` in ``self.chooser``: the chooser's
    parts under the panel's own names (``panel.form``, ``panel.plugin_combo``, ...)."""

    chooser: PluginChooser

    def plugin(self) -> str:
        return self.chooser.plugin()

    @property
    def form(self) -> ParamForm | None:
        return self.chooser.form

    @property
    def plugin_combo(self) -> QComboBox:
        return self.chooser.combo

    @property
    def error_label(self) -> QLabel:
        return self.chooser.error_label

    def _show_error(self, text: str) -> None:
        self.chooser.show_error(text)
