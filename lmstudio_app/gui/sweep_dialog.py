"""Training › Sweep…: a grid editor, Start/Stop, a results table and a chart (training/sweep.py).

Each grid row is ``section.key`` and comma-separated values (as ``lmstudio sweep --grid`` reads
them). Start checks every row and every point's config with the core's own checks and shows the
first problem inline (one line); then :meth:`Sweep.run` runs on Qt's thread pool over a copy of the
session's config, one point after another, in a new sweep folder under the runs folder. Each
finished point refreshes the table from :meth:`Sweep.results` (values, final validation loss,
bits per byte, steps: what each run's own files say) and the chart of the final validation loss
against the first swept key. Stop asks the sweep to stop after the current step (resumable with
``lmstudio sweep --out FOLDER``); closing the dialog stops it too.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..config import validate_plugins
from ..errors import LMStudioError
from ..runs.folder import new_run_path
from ..session import Session
from ..training.sweep import PointResult, Sweep, parse_grid
from .worker import BackgroundTask, run_in_thread

__all__ = ["SweepDialog"]

RESULT_COLUMNS = ["final val loss", "val bits/byte", "steps", "status"]


class _PointSignals(QObject):
    point = Signal(int, str)  # (index, what), queued to the GUI thread


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


class SweepDialog(QDialog):
    """Edit a grid, run the sweep off the GUI thread, watch its results (see the module docstring)."""

    def __init__(self, session: Session, parent: QWidget | None = None, folder: str | Path | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.setWindowTitle("Sweep")
        self.sweep: Sweep | None = None
        self.task: BackgroundTask[list[int]] | None = None
        self.folder_choice = Path(folder) if folder is not None else None  # None: a new one in the runs folder
        self._signals = _PointSignals(self)
        self._signals.point.connect(self._on_point)

        self.grid = QTableWidget(2, 2)
        self.grid.setHorizontalHeaderLabels(["key", "values (comma-separated)"])
        self.grid.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.grid.setColumnWidth(0, 220)
        self.grid.setMaximumHeight(150)  # a few rows; the results below get the room
        self.grid.setItem(0, 0, QTableWidgetItem("train.learning_rate"))
        lr = session.config.train.learning_rate
        self.grid.setItem(0, 1, QTableWidgetItem(f"{lr / 3:.3g}, {lr:.3g}, {lr * 3:.3g}"))
        add_row, remove_row = QPushButton("Add row"), QPushButton("Remove row")
        add_row.clicked.connect(lambda: self.grid.insertRow(self.grid.rowCount()))
        remove_row.clicked.connect(self._remove_row)
        grid_buttons = QHBoxLayout()
        grid_buttons.addWidget(add_row)
        grid_buttons.addWidget(remove_row)
        grid_buttons.addStretch(1)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setObjectName("sweepMessage")
        self.results = QTableWidget(0, 0)
        self.results.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.results.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.chart = pg.PlotWidget()
        self.chart.setLabel("left", "final validation loss")
        self.points = pg.ScatterPlotItem(size=9, brush=pg.mkBrush(31, 119, 180))
        self.chart.addItem(self.points)

        self.start_button, self.stop_button = QPushButton("Start"), QPushButton("Stop")
        self.close_button = QPushButton("Close")
        self.stop_button.setEnabled(False)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Grid: one key per row, its values separated by commas"))
        layout.addWidget(self.grid)
        layout.addLayout(grid_buttons)
        layout.addWidget(self.message)
        results_row = QHBoxLayout()
        results_row.addWidget(self.results, 3)
        results_row.addWidget(self.chart, 2)
        layout.addLayout(results_row, 1)
        layout.addLayout(buttons)
        self.resize(820, 600)

    # ---- the grid --------------------------------------------------------------------------

    def _remove_row(self) -> None:
        row = self.grid.currentRow()
        self.grid.removeRow(row if row >= 0 else self.grid.rowCount() - 1)

    def set_grid(self, rows: list[tuple[str, str]]) -> None:
        """Replace the grid's rows with (key, "v1, v2") pairs."""
        self.grid.setRowCount(len(rows))
        for i, (key, values) in enumerate(rows):
            self.grid.setItem(i, 0, QTableWidgetItem(key))
            self.grid.setItem(i, 1, QTableWidgetItem(values))

    def grids(self) -> list[tuple[str, list[str]]]:
        """The rows as the core's grids (empty rows skipped); ConfigError naming the row at fault."""
        out = []
        for row in range(self.grid.rowCount()):
            key, values = (self.grid.item(row, col) for col in (0, 1))
            key_text, values_text = (key.text().strip() if key else ""), (values.text().strip() if values else "")
            if not key_text and not values_text:
                continue
            out.append(parse_grid(f"{key_text}={values_text}"))
        return out

    # ---- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.finished

    def start(self) -> None:
        if self.running:
            return
        registry = self.session.registry
        folder = self.folder_choice if self.folder_choice is not None else new_run_path(prefix="sweep")
        try:
            grids = self.grids()
            config = copy.deepcopy(self.session.config)
            validate_plugins(config, registry)
            self.sweep = Sweep.open_or_create(folder, config, grids, check=lambda c: validate_plugins(c, registry))
        except (LMStudioError, OSError) as exc:
            self.message.setText(str(exc).splitlines()[0])
            return
        self._show_results()
        self.message.setText(f"Sweep of {len(self.sweep.data['points'])} point(s) in {folder}")
        sweep, signals = self.sweep, self._signals
        self.task = run_in_thread(
            lambda _report, _cancelled: sweep.run(registry, on_point=lambda i, _v, what: signals.point.emit(i, what)),
            self._on_done, self._on_error)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)

    def stop(self) -> None:
        if self.sweep is not None and self.running:
            self.sweep.stop()
            self.message.setText("Stopping after the current step…")

    def _on_point(self, index: int, what: str) -> None:
        self._show_results()
        total = len(self.sweep.data["points"]) if self.sweep is not None else 0
        self.message.setText(f"Point {index + 1} of {total}: {what}")

    def _finish(self) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._show_results()

    def _on_done(self, trained: list[int]) -> None:
        self._finish()
        stopped = self.sweep is not None and self.sweep.stopped
        self.message.setText(f"Sweep {'stopped' if stopped else 'done'}: {len(trained)} point(s) trained now"
                             + (f" in {self.sweep.folder}" if self.sweep is not None else ""))

    def _on_error(self, exc: BaseException, _trace: str) -> None:
        self._finish()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.message.setText(text if isinstance(exc, LMStudioError) else f"sweep failed: {type(exc).__name__}: {text}")

    # ---- results ---------------------------------------------------------------------------

    def point_results(self) -> list[PointResult]:
        return self.sweep.results() if self.sweep is not None else []

    def _show_results(self) -> None:
        if self.sweep is None:
            return
        keys = self.sweep.keys
        results = self.point_results()
        self.results.setColumnCount(len(keys) + len(RESULT_COLUMNS))
        self.results.setHorizontalHeaderLabels(keys + RESULT_COLUMNS)
        self.results.setRowCount(len(results))
        xs: list[float] = []
        ys: list[float] = []
        for row, point in enumerate(results):
            s = point.summary
            cells = [point.values.get(k, "") for k in keys] + [
                _number(s.final_val_loss if s else None), _number(s.final_val_bpb if s else None),
                str(s.step) if s else "", point.status]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.results.setItem(row, col, item)
            x = _as_float(point.values.get(keys[0], ""))
            if s is not None and s.final_val_loss is not None and x is not None and point.status == "finished":
                xs.append(x)
                ys.append(s.final_val_loss)
        # Rates spread over decades read better on a log axis; plotted as log10 by hand, said in the label.
        log_x = bool(xs) and all(x > 0 for x in xs) and max(xs) / min(xs) >= 10
        self.chart.setLabel("bottom", (f"log10 {keys[0]}" if log_x else keys[0]) if keys else "")
        self.points.setData([math.log10(x) for x in xs] if log_x else xs, ys)

    def done(self, code: int) -> None:  # closing stops a running sweep (it stays resumable)
        self.stop()
        super().done(code)


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
