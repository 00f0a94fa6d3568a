"""A run keeps its weights at a few log-spaced steps; any of them can be probed again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmstudio_app.cli import commands as cli
from lmstudio_app.errors import CheckpointError
from lmstudio_app.inference.predictor import load_predictor
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.snapshots import available_steps, is_snapshot_step, snapshot_path
from lmstudio_app.training.trainer import Trainer


def test_snapshot_steps_are_log_spaced():
    kept = [s for s in range(0, 10_001) if is_snapshot_step(s)]
    assert kept == [0, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


@pytest.fixture
def run(home, registry, tiny_config, text_file, tmp_path):
    tiny_config.data.files = [str(text_file)]
    tiny_config.watch.prompts = ["the cat sat on the", "the dog"]
    trainer = Trainer(tiny_config, registry, tmp_path / "run")
    for _ in trainer.steps():
        pass
    return tmp_path / "run"


def test_the_recorded_predictions_are_what_the_kept_weights_predict(run, registry, capsys):
    kept = available_steps(RunDir.open(run))
    assert {0, 10, 12} <= set(kept)  # snapshots at 0 and 10, the final checkpoint at 12
    records = {r["step"]: r for r in RunDir.open(run).timeline.read()}
    for step in (0, 12):  # both recorded in the timeline and kept as weights
        for prompt, entry in zip(["the cat sat on the", "the dog"], records[step]["prompts"]):
            assert cli.main(["predict", str(run), prompt, "--step", str(step), "--json", "--top-k", "5",
                             "--device", "cpu"]) == 0
            shown = json.loads(capsys.readouterr().out)["next"]
            assert [c["id"] for c in shown] == [i for i, _ in entry["top"]]
            assert [c["prob"] for c in shown] == pytest.approx([p for _, p in entry["top"]], abs=1e-6)
    early = load_predictor(run, registry, "cpu", step=0).next_token("the cat").probs
    late = load_predictor(run, registry, "cpu").next_token("the cat").probs
    assert not torch.allclose(torch.tensor(early), torch.tensor(late))  # two moments, two models


def test_a_step_without_weights_is_refused_naming_the_kept_ones(run, registry, capsys):
    with pytest.raises(CheckpointError, match=r"no weights kept for step 7 \(kept: 0, .*10.*12\)"):
        load_predictor(run, registry, "cpu", step=7)
    assert cli.main(["predict", str(run), "the", "--step", "7"]) == 1
    assert "no weights kept for step 7" in capsys.readouterr().err


def test_a_resume_replaces_the_snapshots_of_a_lost_future(run, registry):
    runs = RunDir.open(run)
    lost = snapshot_path(runs, 20)
    shutil.copy(snapshot_path(runs, 10), lost)  # as if a crashed run had got to step 20 before
    resumed = Trainer(None, registry, run, resume=True)  # from the checkpoint at step 12
    assert not lost.exists()  # dropped: it belongs to a history this run will not have
    resumed.config.train.max_steps = 24
    for _ in resumed.steps():
        pass
    at_10 = load_predictor(run, registry, "cpu", step=10).next_token("the cat").probs
    at_20 = load_predictor(run, registry, "cpu", step=20).next_token("the cat").probs
    assert lost.exists() and not torch.allclose(torch.tensor(at_10), torch.tensor(at_20))
