"""The Compare dock: several runs side by side.

- their curves on one plot: validation (and, optionally, train) loss against the step, the tokens
  seen, the wall time or the training FLOPs (tokens seen × the run's FLOPs per token, recorded or
  6 × non-embedding parameters: :mod:`lmstudio_app.runs.flops`; the axis label says which), as loss (nats per token) or bits per UTF-8 byte of the validation text
  (the one axis on which runs with different tokenizers compare). A train curve in bits per byte
  uses its run's validation ratio bpb/loss (tokens per byte of the validation text);
- a config diff table: only the keys whose values differ (:func:`~lmstudio_app.runs.index.config_diff`);
- one prompt's top next-token predictions per run (a :class:`Predictor` per run, loaded once and
  asked off the GUI thread through :class:`~lmstudio_app.gui.queries.LatestQuery`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...errors import LMStudioError
from ...inference.predictor import Predictor, load_predictor
from ...runs.flops import flops_per_token
from ...runs.folder import RunDir
from ...runs.index import RunSummary, config_diff, read_summary
from ...session import Session
from ..events import AppEvents
from ..queries import LatestQuery

X_AXES = {"step": ("step", "step"), "tokens": ("tokens_seen", "tokens seen"), "time": ("elapsed_s", "wall time (s)"),
          "flops": ("flops", "training FLOPs")}  # "flops": tokens_seen × the run's FLOPs per token
Y_AXES = {"loss": "loss (nats/token)", "bpb": "bits per byte"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
TOP_K = 5


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def run_series(records: list[dict[str, Any]], x_key: str, y: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{"val": (xs, ys), "train": (xs, ys)}`` from a run's metrics records (see the module docstring)."""
    ratio = None  # bits per byte per nat per token, from the run's validation records
    for record in records:
        loss, bpb = _finite(record.get("val_loss")), _finite(record.get("val_bpb"))
        if loss and bpb is not None:
            ratio = bpb / loss
    out: dict[str, tuple[list[float], list[float]]] = {"val": ([], []), "train": ([], [])}
    for record in records:
        x = _finite(record.get(x_key))
        if x is None:
            continue
        if y == "bpb":
            val = _finite(record.get("val_bpb"))
            train = _finite(record.get("train_loss"))
            train = train * ratio if train is not None and ratio is not None else None
        else:
            val, train = _finite(record.get("val_loss")), _finite(record.get("train_loss"))
        for name, value in (("val", val), ("train", train)):
            if value is not None:
                out[name][0].append(x)
                out[name][1].append(value)
    return out


def _short(value: Any) -> str:
    text = "—" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


class ComparePanel(QWidget):
    """The Compare dock (see the module docstring)."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("comparePanel")
        self.session = session
        self.runs: list[RunSummary] = []
        self.records: dict[Path, list[dict[str, Any]]] = {}
        self.problems: list[str] = []
        self._flops: dict[Path, tuple[float | None, str]] = {}  # run -> (FLOPs per token, where from)
        self._predictors: dict[Path, Predictor] = {}  # loaded once per run, only in the query thread
        self.predictions: dict[Path, list[tuple[str, float]] | str] = {}  # run -> top tokens, or a problem

        self.x_combo = QComboBox(objectName="compareX")
        for key, (_, label) in X_AXES.items():
            self.x_combo.addItem(label, key)
        self.y_combo = QComboBox(objectName="compareY")
        for key, label in Y_AXES.items():
            self.y_combo.addItem(label, key)
        self.train_check = QCheckBox("train curves", objectName="compareTrain")
        self.train_check.setChecked(True)
        for widget in (self.x_combo, self.y_combo):
            widget.currentIndexChanged.connect(self.redraw)
        self.train_check.toggled.connect(self.redraw)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("comparePlot")
        self.plot.showGrid(x=True, y=True, alpha=0.3)
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.hint = QLabel("Select runs in the Runs panel and press Compare.", wordWrap=True)
        self.hint.setObjectName("compareHint")

        self.diff_table = QTableWidget(objectName="compareDiff")
        self.diff_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.diff_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.diff_table.horizontalHeader().setStretchLastSection(True)
        self.prompt_edit = QLineEdit(objectName="comparePrompt", placeholderText="A prompt for every run")
        self.prompt_edit.setText(session.prompt or "the ")
        self.prompt_edit.textChanged.connect(self.predict)
        self.predict_table = QTableWidget(objectName="comparePredictions")
        self.predict_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.predict_table.horizontalHeader().setStretchLastSection(True)
        self._query = LatestQuery(self, debounce_ms=150)
        self._query.answered.connect(self._show_predictions)
        self._query.failed.connect(lambda exc, _details: self._show_predictions({p: str(exc) for p in self.paths()}))

        controls = QHBoxLayout()
        controls.addWidget(QLabel("x:"))
        controls.addWidget(self.x_combo)
        controls.addWidget(QLabel("y:"))
        controls.addWidget(self.y_combo)
        controls.addWidget(self.train_check)
        controls.addStretch(1)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addLayout(controls)
        top_layout.addWidget(self.hint)
        top_layout.addWidget(self.plot, 1)
        bottom = QWidget()
        bottom_layout = QHBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        diff_box, predict_box = QVBoxLayout(), QVBoxLayout()
        diff_box.addWidget(QLabel("Settings that differ"))
        diff_box.addWidget(self.diff_table)
        predict_box.addWidget(QLabel(f"Top {TOP_K} next tokens"))
        predict_box.addWidget(self.prompt_edit)
        predict_box.addWidget(self.predict_table)
        bottom_layout.addLayout(diff_box, 1)
        bottom_layout.addLayout(predict_box, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.setMinimumHeight(420)

    def labels(self) -> list[str]:
        """Each run's name, with its folder where two runs share a name (default names often do)."""
        names = [r.name for r in self.runs]
        return [n if names.count(n) == 1 else f"{n} [{r.path.name}]" for n, r in zip(names, self.runs)]

    def paths(self) -> list[Path]:
        return [r.path for r in self.runs]

    def set_runs(self, paths: list[Path]) -> None:
        """Compare these runs (a folder that cannot be read is left out, said in the hint)."""
        self.runs, self.records, self.problems, self._flops = [], {}, [], {}
        for path in paths:
            try:
                summary = read_summary(path)
                records = RunDir.open(path).read_metrics()
            except (LMStudioError, OSError) as exc:
                self.problems.append(str(exc))
                continue
            self.runs.append(summary)
            self.records[summary.path] = records
            self._flops[summary.path] = flops_per_token(summary.path, records)
        self._predictors = {p: v for p, v in self._predictors.items() if p in self.records}
        self.redraw()
        self._fill_diff()
        self.predict()

    # ---- the curves --------------------------------------------------------------------------

    def redraw(self, *_args: object) -> None:
        self.plot.clear()
        self.legend.clear()
        x_key, x_label = X_AXES[self.x_combo.currentData()]
        y = self.y_combo.currentData()
        if x_key == "flops":
            sources = sorted({self._flops[r.path][1] for r in self.runs if self._flops[r.path][1]})
            x_label += f" (FLOPs/token: {' or '.join(sources) or 'unknown'}, × tokens seen)"
        self.plot.setLabel("bottom", x_label)
        self.plot.setLabel("left", Y_AXES[y])
        self.curves: dict[tuple[Path, str], pg.PlotDataItem] = {}
        for i, (run, label) in enumerate(zip(self.runs, self.labels())):
            colour = COLOURS[i % len(COLOURS)]
            series = run_series(self._x_records(run.path, x_key), x_key, y)
            xs, ys = series["val"]
            self.curves[(run.path, "val")] = self.plot.plot(
                xs, ys, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=5, symbolBrush=colour,
                name=f"{label} (val)")
            if self.train_check.isChecked():
                xs, ys = series["train"]
                self.curves[(run.path, "train")] = self.plot.plot(
                    xs, ys, pen=pg.mkPen(colour, width=1, style=Qt.PenStyle.DashLine), name=f"{label} (train)")
        missing = [r.name for r in self.runs
                   if y == "bpb" and not run_series(self._x_records(r.path, x_key), x_key, y)["val"][0]]
        notes = list(self.problems)
        if x_key == "flops" and (unknown := [r.name for r in self.runs if self._flops[r.path][0] is None]):
            notes.append("no FLOPs per token (no checkpoint): " + ", ".join(unknown))
        if missing:
            notes.append("no bits per byte recorded: " + ", ".join(missing))
        if not self.runs:
            notes.insert(0, "Select runs in the Runs panel and press Compare.")
        self.hint.setText("; ".join(notes))
        self.hint.setVisible(bool(notes))

    def _x_records(self, path: Path, x_key: str) -> list[dict[str, Any]]:
        """The run's records, with ``flops`` (tokens seen × FLOPs per token) added for that axis."""
        records = self.records[path]
        if x_key != "flops":
            return records
        per_token = self._flops[path][0]
        if per_token is None:
            return []
        return [{**r, "flops": r["tokens_seen"] * per_token} if _finite(r.get("tokens_seen")) is not None else r
                for r in records]

    # ---- the config diff ---------------------------------------------------------------------

    def _fill_diff(self) -> None:
        diff = config_diff([r.config for r in self.runs]) if len(self.runs) > 1 else {}
        self.diff = diff
        self.diff_table.clear()
        self.diff_table.setColumnCount(len(self.runs))
        self.diff_table.setRowCount(len(diff))
        self.diff_table.setHorizontalHeaderLabels(self.labels())
        self.diff_table.setVerticalHeaderLabels(list(diff))
        for row, values in enumerate(diff.values()):
            for column, value in enumerate(values):
                self.diff_table.setItem(row, column, QTableWidgetItem(_short(value)))

    # ---- next-token predictions --------------------------------------------------------------

    def predict(self, *_args: object) -> None:
        paths, prompt = self.paths(), self.prompt_edit.text()
        registry, predictors = self.session.registry, self._predictors

        def job() -> dict[Path, list[tuple[str, float]] | str]:
            answers: dict[Path, list[tuple[str, float]] | str] = {}
            for path in paths:
                try:
                    if path not in predictors:
                        predictors[path] = load_predictor(path, registry, "cpu")  # small; leaves the GPU to training
                    prediction = predictors[path].next_token(prompt, k=TOP_K)
                    answers[path] = [(c.text, c.prob) for c in prediction.candidates[:TOP_K]]
                except LMStudioError as exc:
                    answers[path] = str(exc)
            return answers

        if not paths:
            self._show_predictions({})
            return
        self._query.request(job)

    def is_busy(self) -> bool:
        return self._query.is_busy()

    def _show_predictions(self, answers: dict[Path, list[tuple[str, float]] | str]) -> None:
        self.predictions = answers
        shown = [(r, label) for r, label in zip(self.runs, self.labels()) if r.path in answers]
        runs = [r for r, _ in shown]
        self.predict_table.clear()
        self.predict_table.setColumnCount(len(runs))
        self.predict_table.setRowCount(TOP_K)
        self.predict_table.setHorizontalHeaderLabels([label for _, label in shown])
        for column, run in enumerate(runs):
            answer = answers[run.path]
            if isinstance(answer, str):
                item = QTableWidgetItem(answer)
                item.setToolTip(answer)
                self.predict_table.setItem(0, column, item)
                continue
            for row, (text, prob) in enumerate(answer):
                self.predict_table.setItem(row, column, QTableWidgetItem(f"{text!r}  {prob:.1%}"))
