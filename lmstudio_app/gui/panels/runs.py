"""The Runs dock: every run the runs index knows, in a sortable, filterable table.

Built on :class:`lmstudio_app.runs.index.RunsIndex` (the folder scan is the truth; nothing is
cached, so a crash of the app loses nothing). Actions on the selected run: open it for probing
(``session.load_run``, off the GUI thread), resume it (the Training panel's own Resume flow, asked
for through :attr:`RunsPanel.resume_requested`), rename it (inline edit of the Name cell or the
button), "train again with…" (its config.toml applied to the editors like a preset), delete it
(confirmed; refused while it trains), reveal it in the file manager (the path is shown when no
file manager opens it). Select several runs and press Compare: :attr:`compare_requested` carries
their folders to the Compare dock. "Runs folder…" chooses where new runs go (and the first folder
the index scans); "Add folder…"/"Remove folder" change the further folders it scans (both stored in
the settings through ``runs.location``; a panel built on the settings' index follows at once).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QUrl,
    Signal,
)
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGridLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ...errors import CheckpointError, LMStudioError
from ...runs import location
from ...runs.index import RunsIndex, RunSummary
from ...session import Session
from .. import dialogs
from ..events import AppEvents
from ..widgets.training_progress import format_duration
from ..worker import run_in_thread

SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # the raw value a column sorts by (numbers as numbers)
# (header, how the cell reads, what it sorts by)
COLUMNS: tuple[tuple[str, Any, Any], ...] = (
    ("Name", lambda r: r.name, lambda r: r.name.lower()),
    ("Status", lambda r: r.status, lambda r: r.status),
    ("Steps", lambda r: f"{r.step:,}" + (f" / {r.max_steps:,}" if r.max_steps else ""), lambda r: r.step),
    ("Best val", lambda r: _num(r.best_val_loss), lambda r: _key(r.best_val_loss)),
    ("Final val", lambda r: _num(r.final_val_loss), lambda r: _key(r.final_val_loss)),
    ("Bits/byte", lambda r: _num(r.final_val_bpb), lambda r: _key(r.final_val_bpb)),
    ("Tokenizer", lambda r: r.tokenizer, lambda r: r.tokenizer),
    ("Model", lambda r: r.model + (f" · {r.parameters:,} params" if r.parameters else ""),
     lambda r: r.parameters or 0),
    ("Wall time", lambda r: format_duration(r.wall_time_s) if r.wall_time_s is not None else "—",
     lambda r: _key(r.wall_time_s)),
)
NAME_COLUMN, STATUS_COLUMN = 0, 1
_ROOT = QModelIndex()  # the table's (invalid) root index, the default parent


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _key(value: float | None) -> float:
    return math.inf if value is None else value  # runs without the number sort last


class RunsTableModel(QAbstractTableModel):
    """The index's runs as rows; editing a Name cell renames the run (run.json)."""

    rename_failed = Signal(object)  # the LMStudioError of a refused rename

    def __init__(self, index: RunsIndex, parent: Any = None) -> None:
        super().__init__(parent)
        self.runs_index = index
        self.runs: list[RunSummary] = list(index.runs)

    def reload(self) -> None:
        self.beginResetModel()
        self.runs_index.refresh()
        self.runs = list(self.runs_index.runs)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(self.runs)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][0]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        run = self.runs[index.row()]
        _, shown, sort = COLUMNS[index.column()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return shown(run)
        if role == SORT_ROLE:
            return sort(run)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{run.path}\n{run.reason}" if index.column() == STATUS_COLUMN else str(run.path)
        if role == Qt.ItemDataRole.TextAlignmentRole and 2 <= index.column() <= 5:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        flags = super().flags(index)
        return flags | Qt.ItemFlag.ItemIsEditable if index.column() == NAME_COLUMN else flags

    def setData(self, index: QModelIndex | QPersistentModelIndex, value: Any,
                role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or index.column() != NAME_COLUMN:
            return False
        run = self.runs[index.row()]
        if str(value) == run.name:
            return False
        try:
            self.runs[index.row()] = self.runs_index.rename(str(run.path), str(value))
        except LMStudioError as exc:
            self.rename_failed.emit(exc)
            return False
        self.dataChanged.emit(index, index)
        return True


class RunsPanel(QWidget):
    """The Runs dock (see the module docstring)."""

    resume_requested = Signal(object)  # Path: the main window hands it to the Training panel
    compare_requested = Signal(list)  # [Path, ...] of the selected runs

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None,
                 index: RunsIndex | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("runsPanel")
        self.session, self.events = session, events
        # Built on the settings' folders: a change of the runs folder or added folders rebuilds it.
        self._follows_settings = index is None
        self.model = RunsTableModel(index if index is not None else RunsIndex(), self)
        self.model.rename_failed.connect(lambda exc: dialogs.show_exception(self, exc))
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(-1)  # the filter matches any column
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

        self.filter_edit = QLineEdit(placeholderText="Filter runs (name, status, tokenizer, model…)")
        self.filter_edit.setObjectName("runsFilter")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setObjectName("runsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(NAME_COLUMN, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self.problems_label = QLabel(wordWrap=True)
        self.problems_label.setObjectName("runsProblems")

        self.buttons: dict[str, QPushButton] = {}
        # Two rows of four: in one row the dock would be wider than a laptop screen's left half.
        rows = QGridLayout()
        for i, (key, text, slot) in enumerate( (("refresh", "Refresh", self.refresh), ("open", "Open", self.open_selected),
                                ("resume", "Resume", self.resume_selected), ("rename", "Rename", self.rename_selected),
                                ("again", "Train again with…", self.train_again_selected),
                                ("delete", "Delete…", self.delete_selected),
                                ("reveal", "Reveal", self.reveal_selected),
                                ("compare", "Compare", self.compare_selected))):
            button = QPushButton(text)
            button.setObjectName(f"runs_{key}Button")
            button.clicked.connect(slot)
            rows.addWidget(button, i // 4, i % 4)
            self.buttons[key] = button
        for i, (key, text, slot) in enumerate((("folder", "Runs folder…", self.choose_runs_folder),
                                               ("addFolder", "Add folder…", self.add_folder),
                                               ("removeFolder", "Remove folder", self.remove_folder))):
            button = QPushButton(text)
            button.setObjectName(f"runs_{key}Button")
            button.clicked.connect(lambda _checked=False, slot=slot: slot())
            rows.addWidget(button, 2, i)
            self.buttons[key] = button
        self.buttons["folder"].setToolTip("Choose the folder new runs go into")
        self.folder_label = QLabel(wordWrap=True)
        self.folder_label.setObjectName("runsFolderLabel")
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons["again"].setToolTip("Copy this run's settings into the editors (the data stays)")
        self.buttons["compare"].setToolTip("Select several runs (Ctrl+click) to compare their curves")
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.problems_label)
        layout.addWidget(self.folder_label)
        layout.addLayout(rows)

        # A run appears when it starts and its status changes when it ends or is opened.
        for signal in (events.training_started, events.training_finished, events.run_loaded):
            signal.connect(lambda *_: self.refresh())
        self._show_problems()
        self._show_folders()
        self._update_buttons()

    # ---- selection ---------------------------------------------------------------------------

    def selected_runs(self) -> list[RunSummary]:
        rows = sorted({self.proxy.mapToSource(i).row() for i in self.table.selectionModel().selectedRows()})
        return [self.model.runs[r] for r in rows]

    def select_paths(self, paths: list[Path]) -> None:
        """Select the runs in these folders (tests, and after a refresh)."""
        wanted = {Path(p).absolute() for p in paths}
        selection = self.table.selectionModel()
        selection.clearSelection()
        for row, run in enumerate(self.model.runs):
            if run.path.absolute() in wanted:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                if index.isValid():
                    selection.select(index, selection.SelectionFlag.Select | selection.SelectionFlag.Rows)

    def _one(self) -> RunSummary | None:
        runs = self.selected_runs()
        return runs[0] if len(runs) == 1 else None

    def _update_buttons(self, *_args: object) -> None:
        count = len(self.selected_runs())
        for key in ("open", "resume", "rename", "again", "delete", "reveal"):
            self.buttons[key].setEnabled(count == 1)
        self.buttons["compare"].setEnabled(count >= 1)
        self.buttons["removeFolder"].setEnabled(bool(location.added_folders()))

    # ---- actions -----------------------------------------------------------------------------

    def refresh(self) -> None:
        selected = [r.path for r in self.selected_runs()]
        self.model.reload()
        self.select_paths(selected)
        self._show_problems()
        self._update_buttons()

    def _show_problems(self) -> None:
        problems = self.model.runs_index.problems
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        self.problems_label.setText(shown)
        self.problems_label.setVisible(bool(problems))

    def open_selected(self) -> None:
        run = self._one()
        if run is None:
            return
        path = run.path
        self.events.status_message.emit(f"Opening {run.name}…")
        run_in_thread(lambda report, cancelled: self.session.load_run(path),
                      on_error=lambda exc, details: dialogs.show_exception(
                          self, exc, None if isinstance(exc, LMStudioError) else details))

    def resume_selected(self) -> None:
        run = self._one()
        if run is None:
            return
        if run.status == "running":
            dialogs.show_error(self, f"{run.path}: the run is already training")
            return
        self.resume_requested.emit(run.path)

    def rename_selected(self) -> None:
        selection = self.table.selectionModel().selectedRows()
        if len(selection) == 1:
            self.table.edit(selection[0].siblingAtColumn(NAME_COLUMN))

    def train_again_selected(self) -> None:
        run = self._one()
        if run is None:
            return
        try:
            # A run's config.toml is a complete preset: applying it sets every editor at once.
            self.session.apply_preset(run.path / "config.toml")
        except LMStudioError as exc:
            dialogs.show_exception(self, exc)
            return
        self.events.status_message.emit(f"Settings of {run.name} copied into the editors: press Start to train")

    def delete_selected(self) -> None:
        run = self._one()
        if run is None:
            return
        trainer = self.session.trainer
        live = trainer is not None and self.session.run.state.active and trainer.run_dir is not None \
            and trainer.run_dir.path.absolute() == run.path.absolute()
        if run.status == "running" or live:
            dialogs.show_error(self, f"{run.path}: the run is training; stop it before deleting it")
            return
        if not dialogs.ask_yes_no(self, "Delete run", f"Delete the run “{run.name}” and its folder?",
                                  str(run.path)):
            return
        try:
            self.model.runs_index.delete(str(run.path))
        except CheckpointError as exc:
            dialogs.show_exception(self, exc)
        self.refresh()

    def reveal_selected(self) -> None:
        run = self._one()
        if run is None:
            return
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(run.path))) or not dialogs.file_manager_available():
            dialogs.show_path(self, "No file manager could open the run folder; it is here:", str(run.path))

    def compare_selected(self) -> None:
        runs = self.selected_runs()
        if runs:
            self.compare_requested.emit([r.path for r in runs])

    # ---- folders -----------------------------------------------------------------------------

    def _show_folders(self) -> None:
        added = location.added_folders()
        text = f"New runs go into {location.runs_folder()}"
        if added:
            text += " · also listed: " + ", ".join(str(p) for p in added)
        self.folder_label.setText(text)

    def _folders_changed(self) -> None:
        if self._follows_settings:
            self.model.runs_index = RunsIndex()
        self._show_folders()
        self.refresh()

    def choose_runs_folder(self, folder: str | Path | None = None) -> None:
        """Set where new runs go (asks with a folder dialog unless given one)."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Runs folder: where new runs go",
                                                      str(location.runs_folder()))
            if not folder:
                return
        path = Path(folder).expanduser()
        if path.exists() and not path.is_dir():
            dialogs.show_error(self, f"{path}: not a folder; the runs folder stays {location.runs_folder()}")
            return
        location.set_runs_folder(path)
        self._folders_changed()
        self.events.status_message.emit(f"New runs go into {location.runs_folder()}")

    def add_folder(self, folder: str | Path | None = None) -> None:
        """Add a folder of runs (or one run folder) to the index."""
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Add a folder of runs", str(location.runs_folder()))
            if not folder:
                return
        path = Path(folder).expanduser()
        if not path.is_dir():
            dialogs.show_error(self, f"{path}: not a folder; nothing added to the runs index")
            return
        location.add_folder(path)
        self._folders_changed()

    def remove_folder(self, folder: str | Path | None = None) -> None:
        """Take an added folder out of the index (its runs stay on disk)."""
        added = [str(p) for p in location.added_folders()]
        if not added:
            return
        if folder is None:
            folder, ok = QInputDialog.getItem(self, "Remove folder", "Stop listing the runs in:", added, 0, False)
            if not ok or not folder:
                return
        location.remove_folder(folder)
        self._folders_changed()
