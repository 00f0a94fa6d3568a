"""Plugins → Manage plugins…: what is installed, what failed and why, and switching plugins off.

Switching a plugin off is saved in the settings and applied at the next start (a plugin's code
is already imported; unloading Python modules safely is not possible).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..registry import BUILTIN_PLUGIN, PluginRegistry, safe_mode_active
from ..settings import disabled_plugins, set_disabled_plugins, user_plugin_dir
from ..specs import PluginInfo
from . import dialogs

COLUMNS = ("Enabled", "Name", "Version", "Source", "Provides", "Status")
_BANNER_STYLE = "background: #fff3cd; color: #664d03; padding: 6px; border-radius: 4px;"
SAFE_MODE_TEXT = ("Safe mode (LMSTUDIO_PLUGINS=none): only the built-in plugin is loaded; third-party plugins "
                  "are off until lmstudio starts without it.")
TRUST_TEXT = "Plugins are Python code and run with your permissions: install only plugins you trust."


def safe_mode_banner(parent: QWidget | None = None) -> QLabel:
    """The yellow line that says safe mode is on (shown by this dialog and the main window)."""
    banner = QLabel(SAFE_MODE_TEXT, parent)
    banner.setObjectName("safeModeBanner")
    banner.setStyleSheet(_BANNER_STYLE)
    banner.setWordWrap(True)
    return banner


def open_plugin_folder() -> Path:
    """Create the user plugin folder if needed and show it in the file manager."""
    folder = user_plugin_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))) or not dialogs.file_manager_available():
        dialogs.show_path(QApplication.activeWindow(), "No file manager could open the plugin folder: "
                          "drop plugin files (.py) into this folder.", str(folder))
    return folder


def describe_provides(info: PluginInfo) -> str:
    parts = [f"{kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in info.provides.items() if names]
    return "; ".join(parts) or "—"


class PluginsDialog(QDialog):
    def __init__(self, registry: PluginRegistry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Plugins")
        self.setObjectName("pluginsDialog")
        self.resize(820, 520)
        self.registry = registry
        self.infos = list(registry.plugins)
        self._disabled = set(disabled_plugins())

        self.safe_mode_banner = safe_mode_banner()
        self.safe_mode_banner.setVisible(safe_mode_active())
        warning = QLabel(f"{TRUST_TEXT} Drop plugin files into {user_plugin_dir()}.")
        warning.setObjectName("pluginTrustWarning")
        warning.setWordWrap(True)
        warning.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(len(self.infos), len(COLUMNS))
        self.table.setObjectName("pluginTable")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        for column in range(len(COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Provides"), QHeaderView.ResizeMode.Stretch)
        self._fill_table()
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._show_selected_errors)

        self.restart_note = QLabel("Changes take effect the next time lmstudio starts.")
        self.restart_note.setObjectName("restartNote")
        self.restart_note.hide()
        self.details = QPlainTextEdit()
        self.details.setObjectName("pluginDetails")
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setPlaceholderText("Select a plugin to see where it comes from and any errors.")

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        self.open_folder_button = QPushButton("Open plugin folder")
        self.open_folder_button.setObjectName("openPluginFolder")
        self.open_folder_button.clicked.connect(open_plugin_folder)
        buttons.addButton(self.open_folder_button, QDialogButtonBox.ButtonRole.ActionRole)

        layout = QVBoxLayout(self)
        layout.addWidget(self.safe_mode_banner)
        layout.addWidget(warning)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.restart_note)
        layout.addWidget(self.details, 1)
        layout.addWidget(buttons)
        if any(info.errors for info in self.infos):  # show the first failure straight away
            self.table.selectRow(next(i for i, info in enumerate(self.infos) if info.errors))

    def _fill_table(self) -> None:
        for row, info in enumerate(self.infos):
            check = QTableWidgetItem()
            flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
            if info.name != BUILTIN_PLUGIN:  # the app needs its built-ins
                flags |= Qt.ItemFlag.ItemIsUserCheckable
            check.setFlags(flags)
            enabled = info.name not in self._disabled
            check.setCheckState(Qt.CheckState.Checked if enabled else Qt.CheckState.Unchecked)
            self.table.setItem(row, 0, check)
            status = f"{len(info.errors)} error(s)" if info.errors else ("loaded" if info.enabled else "off")
            cells = [info.name, info.version, info.source, describe_provides(info), status]
            for column, text in enumerate(cells, start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(info.location or text)
                if info.errors:
                    item.setForeground(Qt.GlobalColor.red)
                self.table.setItem(row, column, item)

    def enabled_states(self) -> dict[str, bool]:
        return {
            info.name: self.table.item(row, 0).checkState() == Qt.CheckState.Checked
            for row, info in enumerate(self.infos)
        }

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() != 0:
            return
        states = self.enabled_states()
        # Keep names the settings list but this run did not load (e.g. a folder that moved).
        shown = set(states)
        off = {name for name in self._disabled if name not in shown}
        off |= {name for name, on in states.items() if not on}
        set_disabled_plugins(sorted(off))
        self._disabled = off
        self.restart_note.show()

    def _show_selected_errors(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        if not rows:
            self.details.clear()
            return
        info = self.infos[min(rows)]
        lines = [f"{info.name} {info.version} — {info.source}", f"Location: {info.location or 'unknown'}", ""]
        if not info.errors:
            lines.append("No errors.")
        for error in info.errors:
            lines += [error.message, "", error.traceback.rstrip(), ""]
        self.details.setPlainText("\n".join(lines))
