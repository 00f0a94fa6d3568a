"""Plugins → Manage plugins…: every plugin, its errors and traceback, switching plugins off."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QDesktopServices

from lmstudio_app.gui.plugins_dialog import COLUMNS, PluginsDialog
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.settings import disabled_plugins, user_plugin_dir


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken_plugin.py").write_text("import no_such_module_anywhere\n", encoding="utf-8")
    good = Path(__file__).parent.parent / "plugins" / "good_plugin.py"
    (folder / "good_plugin.py").write_text(good.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def rows(dialog: PluginsDialog) -> dict[str, list[str]]:
    col = COLUMNS.index
    return {
        dialog.table.item(r, col("Name")).text(): [dialog.table.item(r, c).text() for c in range(1, len(COLUMNS))]
        for r in range(dialog.table.rowCount())
    }


def test_lists_built_in_and_folder_plugins_with_errors(qtbot, plugin_folder):
    registry = PluginRegistry.discover([plugin_folder], use_user_dir=False)
    dialog = PluginsDialog(registry)
    qtbot.addWidget(dialog)
    table = rows(dialog)
    assert set(table) == {"builtins", "broken_plugin", "good_plugin"}
    builtins = table["builtins"]
    assert "gpt" in builtins[COLUMNS.index("Provides") - 1] and builtins[-1] == "loaded"
    assert table["good_plugin"][1] == "1.2.3"
    assert table["broken_plugin"][-1] == "1 error(s)"
    # the first failing plugin is selected, its traceback shown
    details = dialog.details.toPlainText()
    assert "ModuleNotFoundError" in details and "no_such_module_anywhere" in details
    assert "Traceback" in details or "File " in details
    good_row = [dialog.infos[r].name for r in range(len(dialog.infos))].index("good_plugin")
    dialog.table.selectRow(good_row)
    assert "No errors." in dialog.details.toPlainText()
    assert not dialog.safe_mode_banner.isVisibleTo(dialog)


def test_switching_a_plugin_off_is_saved_for_the_next_start(qtbot, plugin_folder):
    registry = PluginRegistry.discover([plugin_folder], use_user_dir=False)
    dialog = PluginsDialog(registry)
    qtbot.addWidget(dialog)
    names = [info.name for info in dialog.infos]
    builtin_check = dialog.table.item(names.index("builtins"), 0)
    assert not builtin_check.flags() & Qt.ItemFlag.ItemIsUserCheckable  # the built-ins stay on
    good = dialog.table.item(names.index("good_plugin"), 0)
    assert good.checkState() == Qt.CheckState.Checked
    good.setCheckState(Qt.CheckState.Unchecked)
    assert disabled_plugins() == ["good_plugin"]
    assert dialog.restart_note.isVisibleTo(dialog)
    again = PluginRegistry.discover([plugin_folder], use_user_dir=False, disabled=disabled_plugins())
    assert "test-tiny" not in again.models()
    reopened = PluginsDialog(again)
    qtbot.addWidget(reopened)
    names = [info.name for info in reopened.infos]
    assert reopened.table.item(names.index("good_plugin"), 0).checkState() == Qt.CheckState.Unchecked
    reopened.table.item(names.index("good_plugin"), 0).setCheckState(Qt.CheckState.Checked)
    assert disabled_plugins() == []


def test_safe_mode_banner(qtbot, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_PLUGINS", "none")
    dialog = PluginsDialog(PluginRegistry.discover(use_user_dir=False))
    qtbot.addWidget(dialog)
    assert dialog.safe_mode_banner.isVisibleTo(dialog)
    assert "LMSTUDIO_PLUGINS=none" in dialog.safe_mode_banner.text()


def test_open_plugin_folder_creates_and_opens_it(qtbot, monkeypatch):
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url) or True))
    dialog = PluginsDialog(PluginRegistry.discover(use_user_dir=False))
    qtbot.addWidget(dialog)
    assert not user_plugin_dir().exists()
    qtbot.mouseClick(dialog.open_folder_button, Qt.MouseButton.LeftButton)
    assert user_plugin_dir().is_dir()
    assert [Path(url.toLocalFile()) for url in opened] == [user_plugin_dir()]
