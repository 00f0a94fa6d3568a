"""Issue 12, items 2 and 3: the Runs panel (table, filter, sort, open, resume, rename, train again,
delete, reveal) and the Compare panel (curves, config diff, predictions side by side).

Every run here is really trained: three tiny runs (1-layer GPT, 6 steps) into the app's runs folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from lmstudio_app.config import config_from_dict
from lmstudio_app.gui.panels.compare import ComparePanel, run_series
from lmstudio_app.gui.panels.runs import COLUMNS, NAME_COLUMN, RunsPanel
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.index import RunsIndex, read_summary, runs_folder
from lmstudio_app.training.trainer import Trainer

WAIT_MS = 20_000


def _config(corpus: Path, lr: float, n_embd: int = 16, tokenizer: str = "char"):
    train = {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 8, "max_steps": 6, "eval_interval": 3,
             "log_interval": 1, "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 1, "learning_rate": lr}
    model = {"plugin": "gpt", "n_layer": 1, "n_embd": n_embd, "n_head": 2, "context_length": 8}
    return config_from_dict({"data": {"files": [str(corpus)]}, "tokenizer": {"plugin": tokenizer}, "model": model,
                             "train": train}, "test")


@pytest.fixture
def runs(registry, tiny_text_file) -> list[Path]:
    """Three finished runs with different settings, in the app's runs folder."""
    threads = torch.get_num_threads()
    paths = []
    for name, lr, width, tok in (("run-a", 3e-3, 16, "char"), ("run-b", 1e-2, 16, "char"),
                                 ("run-c", 3e-3, 32, "byte")):
        path = runs_folder() / name
        Trainer(_config(tiny_text_file, lr, width, tok), registry, path).run()
        paths.append(path)
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide
    return paths


@pytest.fixture
def panel(qtbot, session, events, runs) -> RunsPanel:
    widget = RunsPanel(session, events)
    qtbot.addWidget(widget)
    return widget


def _cell(panel: RunsPanel, row: int, column: int) -> str:
    return panel.proxy.index(row, column).data()


def _column(header: str) -> int:
    return [c[0] for c in COLUMNS].index(header)


def test_table_lists_runs_and_sorts_and_filters(panel, runs):
    assert panel.proxy.rowCount() == 3
    summaries = {read_summary(p).name: read_summary(p) for p in runs}
    names = [_cell(panel, r, NAME_COLUMN) for r in range(3)]
    assert set(names) == set(summaries)
    row = names.index(read_summary(runs[0]).name)
    final = summaries[names[row]].final_val_loss
    assert final is not None and _cell(panel, row, _column("Final val")) == f"{final:.4f}"
    assert _cell(panel, row, _column("Status")) == "finished"
    # sort by final validation loss: numbers as numbers, not text
    panel.table.sortByColumn(_column("Final val"), Qt.SortOrder.AscendingOrder)
    shown = [summaries[_cell(panel, r, NAME_COLUMN)].final_val_loss for r in range(3)]
    assert shown == sorted(shown)
    # filter by any column: the byte tokenizer run alone
    panel.filter_edit.setText("BYTE")
    assert panel.proxy.rowCount() == 1 and "byte" in _cell(panel, 0, _column("Tokenizer"))
    panel.filter_edit.clear()
    assert panel.proxy.rowCount() == 3


def test_rename_inline_updates_run_json_and_the_table(panel, runs):
    panel.select_paths([runs[1]])
    index = panel.table.selectionModel().selectedRows()[0]
    assert panel.proxy.setData(index.siblingAtColumn(NAME_COLUMN), "high lr")
    assert read_summary(runs[1]).name == "high lr" and read_summary(runs[1]).named
    panel.refresh()
    names = [_cell(panel, r, NAME_COLUMN) for r in range(3)]
    assert "high lr" in names
    assert [r.path for r in panel.selected_runs()] == [runs[1]]  # the selection survives a refresh


def test_delete_asks_and_a_no_keeps_the_run(panel, runs, modals):
    panel.select_paths([runs[2]])
    panel.delete_selected()  # default answer: No
    assert runs[2].exists() and panel.proxy.rowCount() == 3
    modals.answers.append(QMessageBox.StandardButton.Yes)
    panel.select_paths([runs[2]])
    panel.delete_selected()
    assert not runs[2].exists() and panel.proxy.rowCount() == 2
    assert runs[2] not in [r.path for r in RunsIndex().runs]


def test_delete_is_refused_for_a_running_run(panel, runs, modals, monkeypatch):
    import lmstudio_app.runs.index as index_module

    monkeypatch.setattr(index_module, "_lock_held", lambda path: Path(path) == runs[0])
    panel.refresh()
    panel.select_paths([runs[0]])
    assert panel.selected_runs()[0].status == "running"
    modals.answers.append(QMessageBox.StandardButton.Yes)
    panel.delete_selected()
    assert runs[0].exists()
    assert any("training" in d.text for d in modals.shown)


def test_reveal_shows_the_path_when_no_file_manager_opens_it(panel, runs, modals, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: False))
    panel.select_paths([runs[0]])
    panel.reveal_selected()
    assert modals.shown and str(runs[0]) in modals.shown[-1].text + modals.shown[-1].details


def test_train_again_copies_the_runs_config_into_the_session(panel, runs, session):
    panel.select_paths([runs[2]])
    panel.train_again_selected()
    assert session.config.tokenizer.plugin == "byte"
    assert session.config.model.params["n_embd"] == 32
    assert session.config.train.learning_rate == pytest.approx(3e-3)


def test_open_loads_the_run_for_probing(qtbot, panel, runs, session, events):
    loaded = []
    events.run_loaded.connect(loaded.append)
    panel.select_paths([runs[0]])
    panel.open_selected()
    qtbot.waitUntil(lambda: bool(loaded), timeout=WAIT_MS)
    assert Path(loaded[0]) == runs[0] and session.loaded_run == runs[0]


def test_compare_curves_diff_and_predictions(qtbot, session, events, runs):
    compare = ComparePanel(session, events)
    qtbot.addWidget(compare)
    compare.set_runs(runs)
    # only the keys that differ: learning rate, width, tokenizer; never the shared batch size
    assert "train.learning_rate" in compare.diff and "model.n_embd" in compare.diff
    assert "tokenizer.plugin" in compare.diff and "train.batch_size" not in compare.diff
    assert compare.diff_table.rowCount() == len(compare.diff) and compare.diff_table.columnCount() == 3
    # the validation curve of each run is its metrics' val_loss, against the step
    for run in runs:
        records = [r for r in RunDir.open(run).read_metrics() if "val_loss" in r]
        xs, ys = compare.curves[(run, "val")].getData()
        assert list(xs) == [r["step"] for r in records]
        assert list(ys) == pytest.approx([r["val_loss"] for r in records])
    # bits per byte: the char and the byte run on one axis (values from val_bpb)
    compare.y_combo.setCurrentIndex(compare.y_combo.findData("bpb"))
    xs, ys = compare.curves[(runs[2], "val")].getData()
    assert len(ys) == 2 and all(0 < y < 20 for y in ys)
    compare.x_combo.setCurrentIndex(compare.x_combo.findData("tokens"))
    xs, _ = compare.curves[(runs[0], "val")].getData()
    assert list(xs) == sorted(xs) and xs[0] > 0
    # predictions: each run's top tokens, probabilities descending
    qtbot.waitUntil(lambda: len(compare.predictions) == 3 and not compare.is_busy(), timeout=WAIT_MS)
    for answer in compare.predictions.values():
        assert not isinstance(answer, str), answer
        probs = [p for _, p in answer]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert compare.predict_table.columnCount() == 3


def test_run_series_train_bpb_uses_the_validation_ratio():
    records = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.0, "val_loss": 1.0, "val_bpb": 0.5}]
    series = run_series(records, "step", "bpb")
    assert series["val"] == ([2.0], [0.5]) and series["train"] == ([1.0, 2.0], [1.0, 0.5])


def test_main_window_wires_resume_and_compare(qtbot, main_window, runs):
    runs_panel = main_window.panels["runs"]
    runs_panel.refresh()
    runs_panel.select_paths(runs[:2])
    runs_panel.compare_selected()
    assert sorted(main_window.panels["compare"].paths()) == runs[:2]
    # Open: the run's own curve replaces what the loss plot showed
    loaded = []
    main_window.events.run_loaded.connect(loaded.append)
    runs_panel.select_paths([runs[1]])
    runs_panel.open_selected()
    qtbot.waitUntil(lambda: bool(loaded), timeout=WAIT_MS)
    val_x, _ = main_window.training_panel.loss_plot.val_curve.getData()
    assert list(val_x) == [r["step"] for r in RunDir.open(runs[1]).read_metrics() if "val_loss" in r]
    finished = []
    main_window.events.training_finished.connect(finished.append)
    main_window.training_panel.form.set_values({"max_steps": 10})
    runs_panel.select_paths([runs[0]])
    runs_panel.resume_selected()  # the Training panel's Resume flow: a higher max_steps from its form
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert finished == ["finished"]
    summary = read_summary(runs[0])
    assert summary.step == 10 and summary.status == "finished"


def test_a_corrupted_folder_is_skipped_with_a_message(qtbot, session, events, runs, modals):
    broken = runs_folder() / "run-broken"
    broken.mkdir()
    (broken / "config.toml").write_text("[model\nnot toml", encoding="utf-8")
    panel = RunsPanel(session, events)
    qtbot.addWidget(panel)
    assert panel.proxy.rowCount() == 3  # the good runs still listed
    assert "run-broken" in panel.problems_label.text() and "\n" not in panel.problems_label.text()
    compare = ComparePanel(session, events)
    qtbot.addWidget(compare)
    compare.set_runs([runs[0], broken])
    assert compare.paths() == [runs[0]] and "run-broken" in compare.hint.text()
    # a refused rename (too long) is a dialog, and the name stays
    panel.select_paths([runs[0]])
    before = read_summary(runs[0]).name
    index = panel.table.selectionModel().selectedRows()[0]
    assert not panel.proxy.setData(index.siblingAtColumn(NAME_COLUMN), "x" * 500)
    assert read_summary(runs[0]).name == before and modals.shown and "at most" in modals.shown[-1].text
