"""The Help menu's guides and the View › Theme switch, added to a main window by :func:`install`.

Help: "What you are looking at…" (the explained pipeline, :mod:`.explain`), the first-run guide
(:mod:`.guide`), the plugin guide (docs/plugins.md, shown in a dialog: no browser needed) and the
keyboard shortcuts (read from the window's own actions, so the list is never out of date).
View › Theme: System / Light / Dark (:func:`.theme.set_theme`, stored in the settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QActionGroup, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QMenu,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..resources import installed_data_dir
from . import explain, guide, theme

if TYPE_CHECKING:
    from .explain import MainWindow

THEME_LABELS = (("system", "&System"), ("light", "&Light"), ("dark", "&Dark"))


def plugin_guide_path() -> Path:
    """docs/plugins.md: in the checkout, or where the wheel installed it."""
    return installed_data_dir("docs") / "plugins.md"


class PluginGuideDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Writing plugins — lmstudio")
        self.setObjectName("pluginGuideDialog")
        self.path = plugin_guide_path()
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        try:
            self.browser.setMarkdown(self.path.read_text(encoding="utf-8"))
            self.message = f"The plugin guide ({self.path})"
        except (OSError, UnicodeDecodeError) as exc:
            self.message = f"{self.path}: cannot read the plugin guide ({exc.strerror or exc})"
            self.browser.setPlainText(self.message)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        if self.path.is_file():
            browser_button = QPushButton("Open in browser")
            browser_button.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path))))
            buttons.addButton(browser_button, QDialogButtonBox.ButtonRole.ActionRole)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser, 1)
        layout.addWidget(buttons)
        line = self.fontMetrics().height()
        self.resize(line * 48, line * 36)


def shortcut_rows(window: MainWindow) -> list[tuple[str, str, str]]:
    """(menu, action, shortcuts) for every menu action of ``window`` that has a shortcut."""
    rows: list[tuple[str, str, str]] = []

    def walk(menu: QMenu, path: str) -> None:
        for action in menu.actions():
            sub = action.menu()
            if isinstance(sub, QMenu):
                walk(sub, f"{path} › {sub.title().replace('&', '')}")
            elif action.shortcuts():
                keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts())
                rows.append((path, action.text().replace("&", ""), keys))

    for top in window.menuBar().actions():
        menu = top.menu()
        if isinstance(menu, QMenu):
            walk(menu, menu.title().replace("&", ""))
    return rows


class ShortcutsDialog(QDialog):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.setWindowTitle("Keyboard shortcuts — lmstudio")
        self.setObjectName("shortcutsDialog")
        rows = shortcut_rows(window)
        self.message = "; ".join(f"{action}: {keys}" for _, action, keys in rows)
        self.table = QTableWidget(len(rows), 3)
        self.table.setObjectName("shortcutsTable")
        self.table.setHorizontalHeaderLabels(["Menu", "Action", "Keys"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(value))
        self.table.resizeColumnsToContents()
        self.table.resizeRowsToContents()
        self.table.horizontalHeader().setStretchLastSection(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        line = self.fontMetrics().height()
        self.resize(line * 34, line * 26)


def _find_menu(window: MainWindow, title: str) -> QMenu:
    for top in window.menuBar().actions():
        menu = top.menu()
        if isinstance(menu, QMenu) and menu.title().replace("&", "") == title:
            return menu
    return window.menuBar().addMenu(f"&{title}")


def _focused_topic(window: MainWindow) -> str:
    """The dock holding the keyboard focus, else the pipeline (all stages)."""
    focus = window.focusWidget()
    for key, dock in window.docks.items():
        if focus is not None and dock.isAncestorOf(focus):
            return key
    return "pipeline"


def install(window: MainWindow) -> None:
    """Add View › Theme, the Help entries and every dock's "?" button to ``window``."""
    explain.install(window)
    view = _find_menu(window, "View")
    view.addSeparator()
    theme_menu = view.addMenu("&Theme")
    theme_menu.setObjectName("themeMenu")
    group = QActionGroup(window)
    group.setExclusive(True)
    current = theme.applied_choice()
    window.theme_actions = {}  # type: ignore[attr-defined]
    for choice, label in THEME_LABELS:
        action = QAction(label, window, checkable=True)
        action.setChecked(choice == current)
        action.triggered.connect(lambda *_, c=choice: theme.set_theme(c))
        group.addAction(action)
        theme_menu.addAction(action)
        window.theme_actions[choice] = action  # type: ignore[attr-defined]

    help_menu = _find_menu(window, "Help")
    first = help_menu.actions()[0] if help_menu.actions() else None
    entries = (
        ("What you are &looking at…", lambda: explain.show_explanation(window, _focused_topic(window)), "Shift+F1"),
        ("First-run &guide", lambda: guide.show_guide(window), None),
        ("&Plugin guide", lambda: PluginGuideDialog(window).exec(), None),
        ("&Keyboard shortcuts", lambda: ShortcutsDialog(window).exec(), "Ctrl+/"),
    )
    window.help_actions = {}  # type: ignore[attr-defined]
    for text, slot, keys in entries:
        action = QAction(text, window)
        if keys:
            action.setShortcut(QKeySequence(keys))
        action.triggered.connect(lambda *_, s=slot: s())
        help_menu.insertAction(first, action)
        window.help_actions[text.replace("&", "").rstrip("…")] = action  # type: ignore[attr-defined]
    if first is not None:
        help_menu.insertSeparator(first)

