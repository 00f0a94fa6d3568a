"""The Runs panel's folder buttons: "Runs folder…" (where new runs go, the first folder listed),
"Add folder…"/"Remove folder" (further folders), the table following each change; bad input refused
with a message and the settings unchanged; the Compare panel's training-FLOPs x axis. Runs are really
trained (1-layer GPT, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PySide6.QtWidgets import QFileDialog, QInputDialog

from lmstudio_app.config import config_from_dict
from lmstudio_app.gui.panels.compare import ComparePanel
from lmstudio_app.gui.panels.runs import NAME_COLUMN, RunsPanel
from lmstudio_app.runs import location
from lmstudio_app.runs.flops import ESTIMATED, RECORDED, flops_per_token
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.index import read_summary
from lmstudio_app.settings import default_runs_dir
from lmstudio_app.training.trainer import Trainer


@pytest.fixture
def two_folders(tmp_path, registry, tiny_text_file) -> tuple[Path, Path]:
    """Folders A and B, each with one finished tiny run."""
    train = {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": 3, "eval_interval": 3,
             "log_interval": 1, "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 1}
    model = {"plugin": "gpt", "n_layer": 1, "n_embd": 16, "n_head": 2, "context_length": 8}
    config = config_from_dict({"data": {"files": [str(tiny_text_file)]}, "tokenizer": {"plugin": "char"},
                               "model": model, "train": train}, "test")
    threads = torch.get_num_threads()
    folders = (tmp_path / "A", tmp_path / "B")
    for folder in folders:
        Trainer(config, registry, folder / "run-1").run()
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide
    return folders


def _listed(panel: RunsPanel) -> set[Path]:
    return {panel.model.runs[r].path.absolute() for r in range(panel.model.rowCount())}


def test_folder_buttons_change_the_settings_and_the_table_follows(qtbot, session, events, two_folders,
                                                                 monkeypatch):
    a, b = two_folders
    panel = RunsPanel(session, events)
    qtbot.addWidget(panel)
    assert _listed(panel) == set()
    assert not panel.buttons["removeFolder"].isEnabled()

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *args, **kw: str(a)))
    panel.buttons["folder"].click()
    assert location.runs_folder() == a.absolute()
    assert _listed(panel) == {(a / "run-1").absolute()}
    assert str(a) in panel.folder_label.text()

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *args, **kw: str(b)))
    panel.buttons["addFolder"].click()
    assert location.added_folders() == [b.absolute()]
    assert _listed(panel) == {(a / "run-1").absolute(), (b / "run-1").absolute()}
    assert read_summary(b / "run-1").name in {panel.proxy.index(r, NAME_COLUMN).data() for r in range(2)}
    assert panel.buttons["removeFolder"].isEnabled()

    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(lambda *args, **kw: (str(b.absolute()), True)))
    panel.buttons["removeFolder"].click()
    assert location.added_folders() == []
    assert _listed(panel) == {(a / "run-1").absolute()}


def test_cancelled_dialog_and_a_file_change_nothing(qtbot, session, events, tmp_path, modals, monkeypatch):
    panel = RunsPanel(session, events)
    qtbot.addWidget(panel)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *args, **kw: ""))
    panel.buttons["folder"].click()
    panel.buttons["addFolder"].click()
    assert modals.shown == [] and location.runs_folder() == default_runs_dir() and location.added_folders() == []

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x", encoding="utf-8")
    panel.choose_runs_folder(a_file)
    panel.add_folder(tmp_path / "missing")
    assert location.runs_folder() == default_runs_dir() and location.added_folders() == []
    texts = [d.text for d in modals.shown]
    assert len(texts) == 2 and "notes.txt: not a folder" in texts[0] and "missing: not a folder" in texts[1]


def test_compare_flops_axis_is_tokens_seen_times_flops_per_token(qtbot, session, events, registry, tiny_text_file,
                                                                tmp_path):
    train = {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": 4, "eval_interval": 2,
             "log_interval": 1, "eval_batches": 1, "sample_tokens": 0, "warmup_steps": 1}
    threads = torch.get_num_threads()
    paths, per_token = [], []
    for width in (16, 32):
        model = {"plugin": "gpt", "n_layer": 1, "n_embd": width, "n_head": 2, "context_length": 8}
        config = config_from_dict({"data": {"files": [str(tiny_text_file)]}, "tokenizer": {"plugin": "char"},
                                   "model": model, "train": train}, "test")
        trainer = Trainer(config, registry, tmp_path / f"w{width}")
        trainer.run()
        paths.append(trainer.run_dir.path)
        # the model's own count: the standard 6 × non-embedding parameters
        per_token.append(6.0 * trainer.model.num_parameters(non_embedding=True))
    torch.set_num_threads(threads)
    assert flops_per_token(paths[0]) == (per_token[0], ESTIMATED) and per_token[1] > per_token[0]

    panel = ComparePanel(session, events)
    qtbot.addWidget(panel)
    panel.set_runs(paths)
    panel.x_combo.setCurrentIndex(panel.x_combo.findData("flops"))
    assert "6 × non-embedding parameters" in panel.plot.getAxis("bottom").labelText
    for path, fpt in zip(paths, per_token, strict=True):
        xs, _ys = panel.curves[(path, "val")].getData()
        tokens = [r["tokens_seen"] for r in RunDir.open(path).read_metrics()
                  if r.get("val_loss") is not None and r.get("tokens_seen") is not None]
        assert len(xs) == len(tokens) >= 2 and list(xs) == pytest.approx([t * fpt for t in tokens])

    # a run that recorded its FLOPs per token: that number, and the label says so
    run_json = paths[1] / "run.json"
    info = json.loads(run_json.read_text(encoding="utf-8")) if run_json.exists() else {}
    run_json.write_text(json.dumps({**info, "flops_per_token": 1234.0}), encoding="utf-8")
    assert flops_per_token(paths[1]) == (1234.0, RECORDED)
    panel.set_runs(paths)
    assert "recorded" in panel.plot.getAxis("bottom").labelText
    xs, _ys = panel.curves[(paths[1], "val")].getData()
    assert xs[-1] == pytest.approx(1234.0 * RunDir.open(paths[1]).read_metrics()[-1]["tokens_seen"])
