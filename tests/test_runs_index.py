"""Issue 12, items 1 and 6: the runs index (name, status, summary) and ``lmstudio runs/compare/rename``.

Every run here is really trained (a 1-layer GPT, a few steps); the killed one is a child process
SIGKILLed mid-training, the running one a child holding the run's lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_support import ROOT, SENTENCES, tiny_config

from lmstudio_app.cli.commands import main as cli_main
from lmstudio_app.runs.folder import RunDir, new_run_path
from lmstudio_app.runs.index import (
    OUTCOME_FILE,
    RUN_FILE,
    RunsIndex,
    add_folder,
    config_diff,
    read_summary,
    runs_folder,
    set_run_name,
    set_runs_folder,
)
from lmstudio_app.settings import default_runs_dir
from lmstudio_app.training.trainer import Trainer

# tests/conftest.py: an isolated LMSTUDIO_HOME, and torch's thread count put back after the module
# (the Trainer applies train.threads process-wide); ``registry`` comes from there too.
pytestmark = pytest.mark.usefixtures("home", "restore_torch_threads")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "animals.txt"
    path.write_text(SENTENCES * 60, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, registry, corpus) -> tuple[Path, Trainer]:
    """A run trained to its end: 6 steps, evaluations at 3 and 6."""
    path = tmp_path_factory.mktemp("finished") / "run-a"
    trainer = Trainer(tiny_config([corpus]), registry, path)
    trainer.run()
    return path, trainer


def _runs(tmp_path: Path, *sources: Path) -> Path:
    """A fresh folder of runs holding copies of ``sources`` (the module's runs stay untouched)."""
    folder = tmp_path / "runs"
    folder.mkdir(exist_ok=True)
    for source in sources:
        shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns(".lock"))
    return folder


def test_a_finished_run_s_summary_is_what_its_folder_says(finished):
    path, trainer = finished
    summary = read_summary(path)
    records = RunDir(path).read_metrics()
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert summary.status == "finished" and summary.reason == "finished at step 6"
    assert summary.step == 6 == summary.max_steps and len(val) == 2
    assert summary.best_val_loss == min(val) and summary.final_val_loss == val[-1]
    assert summary.tokens_seen == records[-1]["tokens_seen"] == trainer.step * 8 * 8
    assert summary.wall_time_s == records[-1]["elapsed_s"] > 0
    assert summary.parameters == trainer.model.num_parameters()
    assert summary.model == "gpt 1×16" and summary.tokenizer.startswith("char")
    assert summary.corpus_files == [str(Path(trainer.config.data.files[0]))]
    assert summary.name == "animals · gpt 1×16" and not summary.named  # the default: corpus · model
    assert summary.device == "cpu"


KILL_AT_STEP = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
from reliability_support import tiny_config
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.settings import default_runs_dir
from lmstudio_app.training.trainer import Trainer

config = tiny_config([sys.argv[2]], max_steps=50, eval_interval=100, log_interval=1)
for metrics in Trainer(config, PluginRegistry.discover(use_user_dir=False), sys.argv[3]).steps():
    if metrics.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no checkpoint: as a crash or kill -9
"""


def test_a_killed_run_is_listed_as_stopped_at_its_last_step(tmp_path, corpus):
    folder = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(ROOT), str(corpus), str(folder / "killed")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    (killed,) = RunsIndex([folder]).runs
    assert killed.status == "stopped" and killed.step == 4 and killed.max_steps == 50
    assert "stopped at step 4 of 50" in killed.reason and "killed" in killed.reason
    assert killed.final_val_loss is None and killed.parameters is None  # no evaluation, no checkpoint yet


HOLD_LOCK = """
import sys
from lmstudio_app.runs.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_run_whose_lock_a_live_process_holds_is_running_and_cannot_be_deleted(tmp_path, finished):
    folder = _runs(tmp_path, finished[0])
    run = folder / finished[0].name
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        index = RunsIndex([folder])
        assert [r.status for r in index.runs] == ["running"]
        with pytest.raises(Exception, match="the run is training; stop it before deleting it"):
            index.delete(str(run))
        assert run.is_dir()
    finally:
        child.kill()  # the OS releases the lock; the pid stays in the file
        child.wait()
    assert RunsIndex([folder]).runs[0].status == "finished"  # a dead holder's pid is stale


def test_a_failed_run_says_why(tmp_path, registry, corpus):
    trainer = Trainer(tiny_config([corpus], max_steps=6), registry, tmp_path / "runs" / "broken")
    real = trainer._optimisation_step

    def step():
        if trainer.step == 3:
            raise RuntimeError("the GPU fell off the bus")
        return real()

    trainer._optimisation_step = step
    with pytest.raises(RuntimeError):
        trainer.run()
    (run,) = RunsIndex([tmp_path / "runs"]).runs
    assert run.status == "failed" and run.step == 3
    assert run.reason == "failed at step 3: the GPU fell off the bus"
    Trainer(None, registry, run.path, resume=True).run()  # resumed to the end: finished now
    assert RunsIndex([tmp_path / "runs"]).runs[0].status == "finished"


def test_corrupted_and_half_written_folders_are_skipped_with_a_message(tmp_path, finished):
    folder = _runs(tmp_path, finished[0])
    shutil.copytree(folder / "run-a", folder / "bad-config")
    (folder / "bad-config" / "config.toml").write_text("[[[ not toml", encoding="utf-8")
    shutil.copytree(folder / "run-a", folder / "bad-info")
    (folder / "bad-info" / RUN_FILE).write_text("{ torn", encoding="utf-8")
    shutil.copytree(folder / "run-a", folder / "fifo-log")
    (folder / "fifo-log" / "metrics.jsonl").unlink()
    os.mkfifo(folder / "fifo-log" / "metrics.jsonl")  # must not hang the listing
    (folder / "half" / "checkpoints").mkdir(parents=True)  # created, killed before its config
    (folder / "notes").mkdir()  # an unrelated folder: ignored silently
    index = RunsIndex([folder])
    assert [r.path.name for r in index.runs] == ["run-a"]
    assert len(index.problems) == 4, index.problems
    for name, words in (("bad-config", "config.toml"), ("bad-info", "run.json"),
                        ("fifo-log", "metrics.jsonl"), ("half", "no config.toml")):
        (line,) = [p for p in index.problems if f"{folder / name}" in p]
        assert words in line and "\n" not in line


def test_the_index_follows_renames_and_deletes(tmp_path, finished, capsys):
    folder = _runs(tmp_path, finished[0])
    shutil.copytree(folder / "run-a", folder / "run-b")
    index = RunsIndex([folder])
    assert sorted(r.name for r in index.runs) == ["animals · gpt 1×16"] * 2
    renamed = index.rename(str(folder / "run-b"), "  wide\nlr  ")
    assert renamed.name == "wide lr" and renamed.named  # one line
    assert sorted(r.name for r in index.runs) == ["animals · gpt 1×16", "wide lr"]
    assert json.loads((folder / "run-b" / RUN_FILE).read_text())["name"] == "wide lr"
    assert RunsIndex([folder]).find("wide lr").path == folder / "run-b"  # found by its name
    index.delete("wide lr")
    assert not (folder / "run-b").exists() and [r.path.name for r in index.runs] == ["run-a"]
    shutil.rmtree(folder / "run-a")  # deleted by hand
    assert index.refresh() == [] and index.problems == []
    set_run_name(finished[0], "")  # back to the default name (the module's run stays as it was)
    assert read_summary(finished[0]).name == "animals · gpt 1×16"


def test_the_index_scans_the_settings_runs_folder_and_added_folders(tmp_path, finished):
    base = _runs(tmp_path, finished[0])
    other = tmp_path / "elsewhere"
    shutil.copytree(finished[0], other / "run-x", ignore=shutil.ignore_patterns(".lock"))
    assert new_run_path().parent == default_runs_dir()
    set_runs_folder(base)
    assert runs_folder() == base.absolute() and new_run_path().parent == base.absolute()  # new runs go there
    add_folder(other / "run-x")  # a run folder itself
    add_folder(tmp_path / "gone")  # removed by hand later: named, not fatal
    index = RunsIndex()
    assert sorted(r.path.name for r in index.runs) == ["run-a", "run-x"]
    assert index.problems == [f"{(tmp_path / 'gone').absolute()}: folder not found"]


def test_config_diff_shows_only_differing_keys():
    a = {"train": {"learning_rate": 0.001, "batch_size": 8}, "model": {"plugin": "gpt", "n_layer": 2}}
    b = {"train": {"learning_rate": 0.003, "batch_size": 8}, "model": {"plugin": "gpt", "n_layer": 2, "bias": True}}
    assert config_diff([a, b]) == {"model.bias": [None, True], "train.learning_rate": [0.001, 0.003]}
    assert config_diff([a, a]) == {}


def test_cli_runs_compare_and_rename(tmp_path, registry, corpus, finished, capsys):
    folder = _runs(tmp_path, finished[0])
    Trainer(tiny_config([corpus], learning_rate=3e-3), registry, folder / "run-b").run()
    set_runs_folder(folder)

    assert cli_main(["rename", str(folder / "run-b"), "faster"]) == 0
    assert "named 'faster'" in capsys.readouterr().out
    assert cli_main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in listed["runs"]) == ["animals · gpt 1×16", "faster"]
    assert all(r["status"] == "finished" and r["step"] == 6 for r in listed["runs"]) and listed["skipped"] == []
    assert cli_main(["runs"]) == 0
    table = capsys.readouterr().out
    assert "faster" in table and "finished" in table and "6/6" in table

    assert cli_main(["compare", "run-a", "faster", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["config_diff"] == {"train.learning_rate": [0.001, 0.003]}  # only what differs
    assert [r["name"] for r in compared["runs"]] == ["animals · gpt 1×16", "faster"]
    assert cli_main(["compare", str(folder / "run-a"), "faster"]) == 0
    text = capsys.readouterr().out
    assert "train.learning_rate" in text and "batch_size" not in text and "final val loss" in text

    assert cli_main(["compare", "run-a"]) == 2
    assert cli_main(["compare", "run-a", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lmstudio: error: nope: no such run (give a run folder, or a name from `lmstudio runs`)"


def test_the_index_reads_checkpoints_without_torch_under_the_same_names():
    from lmstudio_app.runs import checkpoints, index

    assert (index.LATEST_FILE, index.STATE_FILE, index.MODEL_FILE) == (
        checkpoints.LATEST_FILE, checkpoints.STATE_FILE, checkpoints.MODEL_FILE)
    code = "import sys, lmstudio_app.cli.commands, lmstudio_app.cli.runs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]  # `lmstudio runs` starts fast


def test_an_outcome_older_than_the_last_step_is_not_trusted(tmp_path, finished):
    """Finished at 6, resumed to 9 and killed after logging step 7: stopped at 7, not finished."""
    folder = _runs(tmp_path, finished[0])
    run = RunDir(folder / "run-a")
    assert json.loads((run.path / OUTCOME_FILE).read_text())["step"] == 6
    last = run.read_metrics()[-1]
    run.append_metrics({**last, "step": 7, "max_steps": 9, "tokens_seen": last["tokens_seen"] + 64})
    summary = read_summary(run.path)
    assert (summary.status, summary.step, summary.max_steps) == ("stopped", 7, 9)
    assert summary.reason.startswith("stopped at step 7 of 9")


def test_the_summary_reads_a_damaged_log_as_the_run_folder_does(tmp_path, finished):
    """The index parses only evaluation lines and the last record: it must skip what
    ``RunDir.read_metrics`` skips (a bad field, a non-object, a torn tail) and agree with it."""
    folder = _runs(tmp_path, finished[0])
    run = RunDir(folder / "run-a")
    with open(run.metrics_path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 7, "val_loss": "low", "max_steps": 9}\n')  # a bad field: skipped
        fh.write('["step", 8, "val_loss", 0.1]\n')  # not an object: skipped
        fh.write('{"step": 8, "max_steps": 9, "val_loss": 9.5, "tokens_seen": 512}\n')
        fh.write('{"step": 9, "val_loss": 0.0')  # torn by a kill
    records = run.read_metrics()
    val = [r["val_loss"] for r in records if "val_loss" in r]
    summary = read_summary(run.path)
    assert (summary.step, summary.max_steps, summary.tokens_seen) == (records[-1]["step"], 9, 512) == (8, 9, 512)
    assert summary.final_val_loss == val[-1] == 9.5 and summary.best_val_loss == min(val) < 9.5
    assert summary.status == "stopped"
