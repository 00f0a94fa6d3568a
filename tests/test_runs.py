"""Run folders: atomic writes, metrics lines, creating and opening runs."""

from __future__ import annotations

import errno
import json
import os

import pytest

from lmstudio_app.atomic_files import atomic_write_bytes, atomic_write_text
from lmstudio_app.config import RunConfig, config_from_dict
from lmstudio_app.errors import CheckpointError, ConfigError
from lmstudio_app.runs import folder as runs
from lmstudio_app.runs.folder import RunDir, new_run_path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_failed_atomic_write_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old contents")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"new contents that never land")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_new_run_path_is_unique_and_defaults_to_the_runs_folder(tmp_path):
    first = new_run_path(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("run-") and not first.exists()
    first.mkdir()
    second = new_run_path(tmp_path)
    assert second != first and not second.exists()
    default = new_run_path()
    assert default.parent == tmp_path / "home" / "runs"


def test_create_writes_config_and_open_reads_it_back(tmp_path):
    config = config_from_dict({"train": {"max_steps": 77}, "model": {"plugin": "bigram"}})
    run = RunDir.create(tmp_path / "run", config)
    assert run.checkpoints_dir.is_dir() and run.metrics_path.exists()
    loaded = RunDir.open(tmp_path / "run").load_config()
    assert loaded.train.max_steps == 77 and loaded.model.plugin == "bigram"


def test_create_refuses_an_existing_run_and_a_foreign_folder(tmp_path):
    RunDir.create(tmp_path / "run", RunConfig())
    with pytest.raises(CheckpointError, match="--resume"):
        RunDir.create(tmp_path / "run", RunConfig())
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not empty"):
        RunDir.create(foreign, RunConfig())
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path / "empty", RunConfig())  # an empty folder is fine


def test_open_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="run folder not found"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match=r"plain: not a run folder \(no config.toml\)"):
        RunDir.open(tmp_path / "plain")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a run folder"):
        RunDir.open(tmp_path / "file.txt")


def test_metrics_append_read_and_truncate(tmp_path):
    run = RunDir.create(tmp_path / "run", RunConfig())
    for step in (10, 20, 30, 40):
        run.append_metrics({"step": step, "train_loss": 1.0 / step})
    assert [r["step"] for r in run.read_metrics()] == [10, 20, 30, 40]
    run.truncate_history(after_step=25)
    assert [r["step"] for r in run.read_metrics()] == [10, 20]
    run.append_metrics({"step": 30, "train_loss": 0.5})
    assert [r["step"] for r in RunDir.open(run.path).read_metrics()] == [10, 20, 30]


def test_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    run = RunDir.create(tmp_path / "run", RunConfig())
    run.append_metrics({"step": 1, "train_loss": 2.0})
    with open(run.metrics_path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "train_lo')  # a crash in the middle of a write
    reopened = RunDir.open(run.path)
    assert reopened.read_metrics() == [{"step": 1, "train_loss": 2.0}]
    reopened.append_metrics({"step": 3, "train_loss": 1.5})
    assert [r["step"] for r in reopened.read_metrics()] == [1, 3]
    lines = run.metrics_path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"step": 3, "train_loss": 1.5}


def test_resume_config_applies_only_resumable_keys(tmp_path):
    run = RunDir.create(tmp_path / "run", config_from_dict({"train": {"max_steps": 100, "learning_rate": 0.01}}))
    requested = config_from_dict({"train": {"max_steps": 300, "learning_rate": 0.5}})
    merged, ignored = run.resume_config(requested)
    assert merged.train.max_steps == 300
    assert merged.train.learning_rate == 0.01 and merged.model.plugin == "gpt"
    assert "train.learning_rate" in ignored and "train.max_steps" not in ignored
    with pytest.raises(ConfigError, match="model.plugin cannot change on resume"):  # see test_run_integrity
        run.resume_config(config_from_dict({"model": {"plugin": "bigram"}}))
    assert run.resume_config(None)[0].train.max_steps == 100


def test_no_temp_files_after_many_writes(tmp_path):
    target = tmp_path / "latest"
    for i in range(20):
        atomic_write_text(target, str(i))
    assert os.listdir(tmp_path) == ["latest"] and target.read_text() == "19"


def test_failed_create_leaves_no_half_made_run(tmp_path, monkeypatch):
    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("lmstudio_app.config.atomic_write_text", disk_full)  # config.toml is written first
        with pytest.raises(CheckpointError, match=r"run: cannot create the run folder \(No space left on device\)"):
            RunDir.create(tmp_path / "run", RunConfig())
    assert not (tmp_path / "run").exists()
    RunDir.create(tmp_path / "run", RunConfig())  # the same folder can be used afterwards
