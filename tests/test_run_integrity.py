"""Issue 14, the run folder: a resume never destroys history, one writer at a time, no record lost
to a kill, and the weak spots around them (temp files, modes, bad lines, the schedule, --set).

Every "refused" case checks that the run folder is byte for byte what it was before."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from reliability_support import ROOT, SENTENCES, assert_one_line, tiny_config

from lmstudio_app.cli.commands import main as cli_main
from lmstudio_app.config import save_config
from lmstudio_app.errors import CheckpointError, ConfigError, LMStudioError
from lmstudio_app.runs import checkpoints
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.loading import load_run
from lmstudio_app.runs.lock import RunLock
from lmstudio_app.runs.metrics_sinks import write_metrics_csv
from lmstudio_app.session import Session
from lmstudio_app.training.optimizers import lr_at
from lmstudio_app.training.trainer import Trainer

# tests/conftest.py: an isolated LMSTUDIO_HOME, and torch's thread count put back after the module
# (the Trainer applies train.threads process-wide); ``registry`` comes from there too.
pytestmark = pytest.mark.usefixtures("home", "restore_torch_threads")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry) -> tuple[Path, Path]:
    """(run folder, corpus file): 6 steps, evaluations and checkpoints at 3 and 6, a record per step."""
    base = tmp_path_factory.mktemp("trained")
    corpus = base / "corpus.txt"
    corpus.write_text(SENTENCES * 60, encoding="utf-8")
    old = os.umask(0o022)
    try:
        Trainer(tiny_config([corpus]), registry, base / "run").run()
    finally:
        os.umask(old)
    return base / "run", corpus


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run, with its own corpus file (config.toml points at it)."""
    source, corpus = trained
    shutil.copy(corpus, tmp_path / "corpus.txt")
    copy = Path(shutil.copytree(source, tmp_path / "run", symlinks=True))
    folder = RunDir(copy)
    config = folder.load_config()
    config.data.files = [str(tmp_path / "corpus.txt")]
    save_config(config, folder.config_path)
    for state in (copy / "checkpoints").glob("step_*/state.json"):  # the stored config names the copy's corpus
        data = json.loads(state.read_text())
        data["config"]["data"]["files"] = config.data.files
        state.write_text(json.dumps(data))
    return copy


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (symlinks as their target) and a hash of its bytes."""
    found = {}
    for entry in sorted(path.rglob("*")):
        name = str(entry.relative_to(path))
        if entry.is_symlink():
            found[name] = "-> " + os.readlink(entry)
        elif entry.is_file():
            found[name] = hashlib.sha256(entry.read_bytes()).hexdigest()
        elif not entry.is_dir():
            found[name] = "special"
    return found


def steps_of(run: Path) -> list[int]:
    return [r["step"] for r in RunDir(run).read_metrics()]


def refused(run: Path, registry, error=CheckpointError, **train) -> str:
    """Resume ``run`` (max_steps raised to 9 unless given) and return the one-line refusal; the
    folder must be exactly as it was."""
    before = tree(run)
    config = RunDir(run).load_config()
    config.train.max_steps = train.get("max_steps", 9)
    with pytest.raises(error) as info:
        Trainer(config, registry, run, resume=True)
    assert tree(run) == before, "a refused resume changed the run folder"
    return assert_one_line(info.value)


# -- 3. resume checks what it reads ------------------------------------------------------------


def test_resume_refuses_a_corpus_that_changed_since_the_run_started(registry, run):
    corpus = Path(RunDir(run).load_config().data.files[0])
    # Same characters, other text: no <unk> share to catch it, only the recorded fingerprint can.
    corpus.write_text(corpus.read_text().replace("cat", "hat").replace("dog", "god"))
    message = refused(run, registry)
    assert "the training data changed since this run started" in message and str(corpus) in message
    session = Session(registry)  # the app reads and tokenizes itself: the same check
    with pytest.raises(CheckpointError, match="the training data changed"):
        session.resume_trainer(run, {"max_steps": 9})
    corpus.write_text(SENTENCES * 60)  # put back: the resume goes on
    trainer = Trainer(None, registry, run, resume=True)
    assert trainer.step == 6


def test_resume_refuses_a_tokenizer_json_replaced_since_the_run_started(registry, run):
    path = run / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[4:6]  # two IDs swapped: same size, other meaning
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(data))
    message = refused(run, registry)
    assert message.startswith(f"{path}: changed since this run started")


@pytest.mark.parametrize("damage", ["folder deleted", "only folder deleted", "garbage", "names another run"])
def test_latest_naming_a_missing_step_folder_refuses_the_resume_and_keeps_the_metrics(registry, run, damage):
    checkpoints = run / "checkpoints"
    assert steps_of(run) == [1, 2, 3, 4, 5, 6]
    if damage == "folder deleted":
        shutil.rmtree(checkpoints / "step_00000006")
    elif damage == "only folder deleted":
        shutil.rmtree(checkpoints / "step_00000003")
        shutil.rmtree(checkpoints / "step_00000006")
    elif damage == "garbage":
        (checkpoints / "latest").write_text("garbage\x00")
    else:
        (checkpoints / "latest").write_text("../../elsewhere\n")
    message = refused(run, registry)
    assert str(checkpoints / "latest") in message
    if damage == "folder deleted":
        assert "step_00000006, which is missing" in message and "write step_00000003 into it" in message
    assert steps_of(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("step", -5, "step is -5, not a whole number >= 0"),
    ("step", "abc", "step is 'abc', not a whole number >= 0"),
    ("step", 4, "step is 4 but the folder is step_00000006"),
    ("step", True, "step is True"),
    ("format_version", "1", "unsupported checkpoint format_version '1'"),
    ("optimizers", "x" * 1000, "optimizers is not a list"),
    ("rng", [], "rng is [], not a table"),
    ("extra", {"elapsed_s": "soon"}, "extra.elapsed_s is 'soon', not a number of seconds"),
    ("extra", {"val_loss": "low"}, "extra.val_loss is 'low', not a number or null"),
    ("extra", 7, "extra is 7, not a table"),
])
def test_state_json_values_that_disagree_refuse_the_resume(registry, run, field, value, needle):
    state_path = run / "checkpoints" / "step_00000006" / "state.json"
    state = json.loads(state_path.read_text())
    state[field] = value
    state_path.write_text(json.dumps(state))
    message = refused(run, registry)
    assert message.startswith(str(state_path)) and needle in message and len(message) < 400
    with pytest.raises(CheckpointError, match="state.json: "):
        load_run(run, registry, "cpu")  # predict, eval, export read the same checks


@pytest.mark.parametrize(("key", "old", "new"), [("norm", '"layernorm"', '"rmsnorm"'),
                                                 ("mlp", '"gelu"', '"relu2"'),
                                                 ("n_head", "2", "4")])
def test_config_edited_to_another_architecture_is_refused_not_loaded(registry, run, key, old, new):
    config_path = run / "config.toml"
    text = config_path.read_text()
    assert f"{key} = {old}" in text
    config_path.write_text(text.replace(f"{key} = {old}", f"{key} = {new}"))
    message = refused(run, registry)
    assert f"model.{key} is " in message and "beside the weights" in message and "state.json" in message
    with pytest.raises(CheckpointError, match=f"model.{key} is .* in config.toml but .* beside the weights"):
        load_run(run, registry, "cpu")
    with pytest.raises(CheckpointError, match="beside the weights"):
        load_run(run, registry, "cpu", step=0)  # a snapshot: checked against the newest checkpoint


def test_set_model_or_tokenizer_on_resume_is_refused_with_a_message(registry, run, capsys):
    before = tree(run)
    code = cli_main(["train", "--resume", str(run), "--set", "model.n_embd=32", "--set", "train.max_steps=9"])
    err = capsys.readouterr().err
    assert code != 0 and "model.n_embd cannot change on resume" in err and len(err.strip().splitlines()) == 1
    code = cli_main(["train", "--resume", str(run), "--set", "tokenizer.lowercase=true"])
    assert code != 0 and "tokenizer.lowercase cannot change on resume" in capsys.readouterr().err
    assert tree(run) == before
    config = RunDir(run).load_config()  # the same through the API (the app, scripts)
    config.model.params["n_layer"] = 2
    with pytest.raises(ConfigError, match="model.n_layer cannot change on resume"):
        Trainer(config, registry, run, resume=True)
    assert tree(run) == before


# -- 4. one writer per run folder ------------------------------------------------------------


def test_a_second_trainer_on_the_same_run_folder_is_refused_naming_the_pid(registry, run, tmp_path):
    first = Trainer(None, registry, run, resume=True)  # prepared: holds the lock until it has trained
    message = refused(run, registry)
    assert f"a training run in this process (pid {os.getpid()}) is already writing to this run folder" in message
    with pytest.raises(CheckpointError, match="already writing to this run folder"):
        Session(registry).resume_trainer(run, {"max_steps": 9})  # the app too
    first.run()
    assert Trainer(None, registry, run, resume=True).step == 6  # released at the end of training


HOLD_LOCK = """
import sys
from lmstudio_app.runs.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_is_refused_and_taken_over_once_it_is_killed(registry, run):
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        message = refused(run, registry)
        assert f"(pid {child.pid})" in message and str(run) in message
    finally:
        child.kill()  # SIGKILL: no cleanup runs, the lock file stays with the dead pid in it
        child.wait()
    assert (run / ".lock").read_text().split()[0] == str(child.pid)
    trainer = Trainer(None, registry, run, resume=True)  # the stale lock is taken over
    assert trainer.step == 6 and (run / ".lock").read_text().split()[0] == str(os.getpid())


def test_the_lock_file_cannot_be_a_fifo_or_a_symlink(tmp_path):
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(CheckpointError, match="lock file is not a regular file"):
        RunLock(tmp_path).acquire()
    os.unlink(tmp_path / ".lock")
    os.symlink("/dev/null", tmp_path / ".lock")
    with pytest.raises(CheckpointError, match="lock file is a symbolic link"):
        RunLock(tmp_path).acquire()


def test_without_os_locks_the_pid_file_is_the_lock_and_a_dead_pid_is_stale(tmp_path, monkeypatch):
    from lmstudio_app.runs import lock as lock_module

    monkeypatch.setattr(lock_module, "fcntl", None)  # as on a platform with neither flock nor msvcrt
    monkeypatch.setattr(lock_module, "msvcrt", None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(f"{child.pid} {os.uname().nodename}\n")
        with pytest.raises(CheckpointError, match=f"another process is training in this run folder \\(pid {child.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    held = RunLock(tmp_path).acquire()  # the holder is gone: its pid file is stale
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    with pytest.raises(CheckpointError, match="a training run in this process"):
        RunLock(tmp_path).acquire()
    held.release()
    RunLock(tmp_path).acquire().release()


# -- 5. write order: no record lost to a kill --------------------------------------------------

KILL_AT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "tests"))
from reliability_support import tiny_config
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs import checkpoints
from lmstudio_app.training.trainer import Trainer

moment, kill_step = sys.argv[4], int(sys.argv[5])  # "before/after the checkpoint", a step
real_save = checkpoints.save_checkpoint

def save(run, *, step, **kwargs):
    if moment == "before the checkpoint" and step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    path = real_save(run, step=step, **kwargs)
    if moment == "after the checkpoint" and step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

checkpoints.save_checkpoint = save
config = tiny_config([sys.argv[2]], max_steps=9, eval_interval=3, log_interval=1, sample_tokens=4)
Trainer(config, PluginRegistry.discover(use_user_dir=False), sys.argv[3]).run()
"""


class _Killed(BaseException):
    """Stands in for a kill in this process: nothing after it runs (the trainer saves nothing on it)."""


def _assert_no_gap(run: Path) -> None:
    records = RunDir(run).read_metrics()
    assert [r["step"] for r in records] == list(range(1, 10))  # every step once, none missing
    evaluated = [r["step"] for r in records if "val_loss" in r and "sample" in r]
    assert evaluated == [3, 6, 9]  # the killed step's evaluation and sample are there too


def test_a_kill_between_a_checkpoint_and_its_metrics_line_leaves_no_gap(registry, tmp_path):
    """The exact point of the report: a child process SIGKILLed right after step 6's checkpoint."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SENTENCES * 60, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", KILL_AT, str(ROOT), str(corpus), str(tmp_path / "run"),
                            "after the checkpoint", "6"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert steps_of(tmp_path / "run") == [1, 2, 3, 4, 5, 6]  # the line was written before the checkpoint
    Trainer(None, registry, tmp_path / "run", resume=True).run()
    _assert_no_gap(tmp_path / "run")


def test_a_kill_just_before_a_checkpoint_trains_the_step_again_and_keeps_every_record(registry, tmp_path,
                                                                                         monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SENTENCES * 60, encoding="utf-8")
    real_save = checkpoints.save_checkpoint

    def save(run, *, step, **kwargs):
        if step == 6:
            raise _Killed
        return real_save(run, step=step, **kwargs)

    config = tiny_config([corpus], max_steps=9, eval_interval=3, log_interval=1, sample_tokens=4)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save_checkpoint", save)
        with pytest.raises(_Killed):
            Trainer(config, registry, tmp_path / "run").run()
    Trainer(None, registry, tmp_path / "run", resume=True).run()  # from step 3: 4-6 recorded again
    _assert_no_gap(tmp_path / "run")


# -- weak spots ------------------------------------------------------------------------------


def test_a_kill_s_leftover_temp_files_are_cleaned_on_the_next_start(registry, run):
    checkpoints = run / "checkpoints"
    leftovers = [checkpoints / ".latest.k3j2h1.tmp", run / ".config.toml.a8s7d6.tmp",
                 run / ".metrics.jsonl.zzz111.tmp", run / "snapshots" / ".step_00000000.safetensors.q1w2e3.tmp"]
    for path in leftovers:
        path.write_text("half")
    shutil.copytree(checkpoints / "step_00000003", checkpoints / ".tmp-step_00000099")
    # A kill between the two renames of a checkpoint saved twice for one step: no step_00000006.
    (checkpoints / "step_00000006").rename(checkpoints / ".old-step_00000006")
    trainer = Trainer(None, registry, run, resume=True)
    assert trainer.step == 6  # the complete step 6 was put back, not lost
    assert not any(p.exists() for p in leftovers) and not (checkpoints / ".tmp-step_00000099").exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000003", "step_00000006"]
    assert "cleaned up after an interrupted write" in (trainer._pending_warning or "")


def test_every_file_of_a_run_gets_one_mode_that_honours_the_umask(trained):
    run, _ = trained  # trained under umask 022
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in run.rglob("*")
             if p.is_file() and p.name != ".lock"}
    assert {"config.toml", "tokenizer.json", "corpus.json", "checkpoints/latest",
            "checkpoints/step_00000006/model.safetensors", "snapshots/step_00000000.safetensors"} <= set(modes)
    assert set(modes.values()) == {"0o644"}, modes


def test_metrics_lines_of_the_wrong_type_are_skipped_with_a_note(registry, run):
    metrics = run / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as fh:
        fh.write('{"step": "abc"}\n{"step": 7, "train_loss": "low"}\n[1, 2]\nnot json\n{"step": 8, "lr": 0.1}\n')
    folder = RunDir(run)
    assert [r["step"] for r in folder.read_metrics()] == [1, 2, 3, 4, 5, 6, 8]
    note = folder.metrics.note()
    assert note.startswith(f"{metrics}: skipped 4 unreadable lines (line 7: step is 'abc'")
    assert_one_line(LMStudioError(note))
    write_metrics_csv(folder.read_metrics(), run / "metrics.csv")  # readers of metrics.jsonl do not crash
    assert len((run / "metrics.csv").read_text().splitlines()) == 8
    trainer = Trainer(None, registry, run, resume=True)  # the resume says so with its first report
    assert "skipped 4 unreadable lines" in trainer._pending_warning
    assert steps_of(run) == [1, 2, 3, 4, 5, 6]


def test_extending_a_finished_cosine_run_continues_the_learning_rate_and_says_so(registry, run):
    config = RunDir(run).load_config()
    done = RunDir(run).read_metrics()[-1]["lr"]  # the last step of the 6-step cosine
    stretched = lr_at(6, replace(config.train, max_steps=12))
    assert stretched > 5 * config.train.min_lr > done  # what extending used to train at from step 7 on
    config.train.max_steps = 12
    trainer = Trainer(config, registry, run, resume=True)
    assert "train.max_steps 6 -> 12: the schedule had finished" in trainer._pending_warning
    trainer.run()
    extended = [r["lr"] for r in RunDir(run).read_metrics() if r["step"] > 6]
    assert extended == pytest.approx([config.train.min_lr] * 6)  # no jump back up the curve
    reopened = Trainer(RunDir(run).load_config(), registry, run, resume=True)
    assert reopened._lr_extension == trainer._lr_extension  # kept across the next resume


def test_extending_a_run_stopped_half_way_decays_from_where_it_was(registry, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SENTENCES * 60, encoding="utf-8")
    config = tiny_config([corpus], max_steps=20, eval_interval=5, warmup_steps=2)
    first = Trainer(config, registry, tmp_path / "run")
    first.run(lambda m: first.control.stop() if m.step == 10 else None)
    where = lr_at(10, config.train)  # the rate step 11 would have had
    config.train.max_steps = 40
    trainer = Trainer(config, registry, tmp_path / "run", resume=True)
    assert "train.max_steps 20 -> 40: the learning rate goes on from" in trainer._pending_warning
    trainer.run()
    rates = [r["lr"] for r in RunDir(tmp_path / "run").read_metrics() if r["step"] > 10]
    assert rates[0] == pytest.approx(where) and lr_at(10, config.train) > 1.3 * where  # not the stretched curve
    assert all(b <= a + 1e-12 for a, b in zip(rates, rates[1:])) and rates[-1] == pytest.approx(config.train.min_lr, rel=0.05)


def _finishes(call, timeout: float = 20.0) -> BaseException | None:
    """Run ``call`` in a thread; the exception it raised (it must end within ``timeout``)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"{call} still running after {timeout} s (blocked on a FIFO?)"
    return outcome[0]


@pytest.mark.parametrize(("name", "kind"), [("checkpoints/step_00000006/state.json", "fifo"),
                                            ("checkpoints/step_00000006/state.json", "/dev/zero"),
                                            ("checkpoints/latest", "fifo"),
                                            ("metrics.jsonl", "/dev/zero"),
                                            ("metrics.jsonl", "fifo"),
                                            ("config.toml", "fifo"),
                                            ("checkpoints/step_00000006/model.safetensors", "fifo")])
def test_run_files_that_are_not_regular_files_are_refused_without_hanging(registry, run, name, kind):
    path = run / name
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else os.symlink(kind, path)
    resumed = _finishes(lambda: Trainer(None, registry, run, resume=True).run())
    assert isinstance(resumed, LMStudioError), resumed
    assert_one_line(resumed, name.split("/")[-1])
    loaded = _finishes(lambda: load_run(run, registry, "cpu"))
    assert loaded is None or isinstance(loaded, LMStudioError), loaded

