"""The ``lmstudio`` command: in-process through ``cli.main`` and end-to-end as a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmstudio_app import launcher
from lmstudio_app.cli import commands as cli
from lmstudio_app.runs.folder import RunDir
from lmstudio_builtins.demo_grammar import generate_demo_corpus

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = """\
[data]
files = ["corpus.txt"]

[tokenizer]
plugin = "word"

[model]
plugin = "gpt"
n_layer = 1
n_head = 2
n_embd = 32
context_length = 16

[train]
device = "cpu"
batch_size = 8
max_steps = 20
warmup_steps = 2
eval_interval = 10
eval_batches = 2
log_interval = 5
sample_tokens = 8
threads = 1  # tiny models only lose time to thread hand-offs on a shared CPU
"""


def write_tiny_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(generate_demo_corpus(1500, seed=3), encoding="utf-8")
    path = folder / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmstudio: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide


@pytest.fixture(scope="module", autouse=True)
def isolated_home(tmp_path_factory):
    """User settings (e.g. disabled plugins) and default runs come from a throwaway folder."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("home")
        patch.setenv("LMSTUDIO_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny trained run shared by the read-only tests (eval, predict, generate)."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_tiny_config(folder / "configs")  # data path relative to the config's folder
    run = folder / "run"
    assert cli.main(["train", str(config), "--out", str(run)]) == 0
    return run


def test_train_writes_a_run_folder(trained_run, capsys):
    run = RunDir.open(trained_run)
    records = run.read_metrics()
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for record in records:
        assert {"step", "max_steps", "train_loss", "lr", "tokens_per_s", "tokens_seen", "elapsed_s"} <= set(record)
        assert math.isfinite(record["train_loss"])
    assert "val_loss" in records[1] and "val_loss" in records[3] and "val_loss" not in records[0]
    config = run.load_config()
    assert Path(config.data.files[0]).is_absolute() and Path(config.data.files[0]).is_file()
    assert (trained_run / "checkpoints" / "latest").is_file()


def test_train_prints_progress_and_the_run_folder(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    code, out, err = run_cli(["train", str(config), "--out", str(tmp_path / "r"), "--set", "train.max_steps=6",
                              "--set", "train.eval_interval=6", "--set", "train.log_interval=3"], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("step")]
    assert len(lines) == 2 and lines[0].startswith("step 3/6 | loss ")
    assert "val " in lines[1] and "tok/s" in lines[1] and "ETA" in lines[1]
    assert str(tmp_path / "r") in out.splitlines()[-1]


def test_eval_prints_json(trained_run, capsys):
    code, out, err = run_cli(["eval", str(trained_run), "--batches", "3"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"val_loss", "val_bpb", "step", "batches", "truth", "entropy_floor", "kl_to_truth"}
    assert result["step"] == 20 and result["batches"] == 3
    assert 0 < result["val_loss"] < 10
    # The run's text comes from the demo grammar: its exact odds say how far the model is from them.
    from lmstudio_app.inference.predictor import load_predictor
    from lmstudio_app.inference.truth import token_truth
    from lmstudio_app.registry import PluginRegistry

    registry = PluginRegistry.discover(use_user_dir=False)
    predictor = load_predictor(trained_run, registry, "cpu")
    truth = token_truth(registry.truths()["demo"], predictor.tokenizer)
    kls = [truth.kl(truth.next_token(p), predictor.next_token(p).probs) for p in truth.spec.prompts]
    assert result["truth"] == "demo" and result["kl_to_truth"] == pytest.approx(sum(kls) / len(kls))
    assert result["entropy_floor"] == pytest.approx(truth.entropy_rate())
    assert 0 < result["entropy_floor"] < result["val_loss"]  # no model gets below the grammar's entropy
    assert [r["step"] for r in RunDir.open(trained_run).read_metrics()][-1] == 20  # nothing rewritten


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_predict_json_schema_and_probabilities(trained_run, capsys, temperature):
    text = "the cat sat on the"
    code, out, err = run_cli(["predict", str(trained_run), text, "--json", "--top-k", "6",
                              "--temperature", str(temperature)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"tokens", "next"}
    for token in result["tokens"]:
        assert set(token) == {"id", "text", "start", "end"}
        assert text[token["start"] : token["end"]] == token["text"]
    assert "".join(t["text"] for t in result["tokens"]) == text
    nxt = result["next"]
    assert len(nxt) == 6 and all(set(c) == {"id", "text", "logit", "prob"} for c in nxt)
    probs = [c["prob"] for c in nxt]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    top = nxt[0]
    for c in nxt[1:]:  # softmax(logit / T): probability ratios follow the logit differences
        assert math.isclose(c["prob"] / top["prob"], math.exp((c["logit"] - top["logit"]) / temperature),
                            rel_tol=1e-6)


def test_predict_prints_a_table(trained_run, capsys):
    code, out, _ = run_cli(["predict", str(trained_run), "the dog", "--top-k", "4"], capsys)
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "id"])
    assert [line.split()[0] for line in lines[header + 1 :]] == ["1", "2", "3", "4"]


def test_generate_is_reproducible_with_a_seed(trained_run, capsys):
    args = ["generate", str(trained_run), "the dog", "--max-tokens", "12", "--seed", "7", "--top-k", "5"]
    code, first, _ = run_cli(args, capsys)
    assert code == 0 and first.startswith("the dog") and len(first) > len("the dog\n")
    assert run_cli(args, capsys)[1] == first
    code, _, err = run_cli(["generate", str(trained_run), "x", "--temperature", "0"], capsys)
    assert code == 2
    assert_one_line_error(err, "temperature")


def test_resume_raises_max_steps_and_appends_metrics(trained_run, tmp_path, capsys):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    code, out, err = run_cli(["train", "--resume", str(run), "--set", "train.max_steps=30"], capsys)
    assert code == 0, err
    steps = [r["step"] for r in RunDir.open(run).read_metrics()]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert RunDir.open(run).load_config().train.max_steps == 30
    assert "step 25/30" in out


def test_bad_key_in_set_is_one_line_naming_it(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    code, _, err = run_cli(["train", str(config), "--set", "model.n_layers=3", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert_one_line_error(err, "model.n_layers", "unknown key")
    code, _, err = run_cli(["train", str(config), "--set", "train.max_steps=lots"], capsys)
    assert code == 2
    assert_one_line_error(err, "train.max_steps")
    assert not (tmp_path / "r").exists()


def test_missing_files_and_folders(tmp_path, capsys):
    code, _, err = run_cli(["train", str(tmp_path / "nope.toml")], capsys)
    assert code == 2
    assert_one_line_error(err, "nope.toml", "not found")
    code, _, err = run_cli(["predict", str(tmp_path / "norun"), "hi"], capsys)
    assert code == 1
    assert_one_line_error(err, "norun")
    code, _, err = run_cli(["train"], capsys)
    assert code == 2
    assert_one_line_error(err, "CONFIG")
    code, _, err = run_cli(["frobnicate"], capsys)
    assert code == 2
    assert_one_line_error(err, "frobnicate")


def test_unexpected_errors_are_short_too(monkeypatch, capsys):
    def boom(args, registry):
        raise RuntimeError("something broke")

    monkeypatch.setitem(cli.COMMANDS, "plugins", boom)
    monkeypatch.delenv("LMSTUDIO_DEBUG", raising=False)
    code, _, err = run_cli(["plugins"], capsys)
    assert code == 1
    assert err.splitlines() == ["lmstudio: error: RuntimeError: something broke",
                                "(run with LMSTUDIO_DEBUG=1 for the traceback)"]
    monkeypatch.setenv("LMSTUDIO_DEBUG", "1")
    assert "Traceback" in run_cli(["plugins"], capsys)[2]


def test_plugins_lists_broken_plugins_and_exits_0(tmp_path, capsys):
    folder = tmp_path / "myplugins"
    folder.mkdir()
    (folder / "exploding.py").write_text("raise RuntimeError('kaboom at import')\n", encoding="utf-8")
    code, out, err = run_cli(["--plugins-dir", str(folder), "plugins"], capsys)
    assert code == 0, err
    assert "builtins" in out and "gpt" in out
    error_lines = [line for line in out.splitlines() if "kaboom at import" in line]
    assert len(error_lines) == 1 and "exploding" in error_lines[0]
    assert "Traceback" not in out
    code, out, _ = run_cli(["--plugins-dir", str(folder), "plugins", "--verbose"], capsys)
    assert code == 0 and "Traceback" in out


def test_third_party_model_from_a_plugins_dir_trains(tmp_path, capsys):
    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "lstm_example.py", folder / "lstm_example.py")
    config = write_tiny_config(tmp_path / "cfg")
    run = tmp_path / "lstm-run"
    code, out, err = run_cli(["--plugins-dir", str(folder), "train", str(config), "--out", str(run),
                              "--set", "model.plugin=lstm", "--set", "model.n_embd=16",
                              "--set", "train.max_steps=4", "--set", "train.eval_interval=4"], capsys)
    assert code == 0, err
    assert RunDir.open(run).load_config().model.plugin == "lstm"
    assert [r["step"] for r in RunDir.open(run).read_metrics()][-1] == 4
    code, out, err = run_cli(["--plugins-dir", str(folder), "predict", str(run), "the cat", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["next"]


def test_no_command_opens_the_gui_through_the_launcher(monkeypatch, capsys):
    calls = []
    fake = type(sys)("lmstudio_app.gui.app")
    fake.main = lambda argv=None, plugins_dirs=(): calls.append((argv, list(plugins_dirs))) or 0
    monkeypatch.setitem(sys.modules, "lmstudio_app.gui.app", fake)
    assert launcher.main(["--plugins-dir", "somewhere"]) == 0
    assert calls == [([], ["somewhere"])]
    assert launcher.main(["plugins"]) == 0 and calls == [([], ["somewhere"])]  # a command: no GUI
    monkeypatch.setitem(sys.modules, "lmstudio_app.gui.app", None)  # import fails
    assert launcher.main([]) == 1
    assert_one_line_error(capsys.readouterr().err, "desktop app")
    code, _, err = run_cli([], capsys)  # the CLI alone never starts the GUI
    assert code == 2
    assert_one_line_error(err, "no command given")


def test_plugins_disabled_in_the_app_stay_off(tmp_path, capsys, monkeypatch):
    from lmstudio_app.settings import set_disabled_plugins

    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(ROOT / "plugins" / "lstm_example.py", folder / "lstm_example.py")
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    set_disabled_plugins(["lstm_example"])
    code, out, _ = run_cli(["--plugins-dir", str(folder), "plugins"], capsys)
    assert code == 0
    assert next(line for line in out.splitlines() if line.startswith("lstm_example")).endswith("(disabled)")
    config = write_tiny_config(tmp_path / "cfg")
    code, _, err = run_cli(["--plugins-dir", str(folder), "train", str(config), "--set", "model.plugin=lstm"], capsys)
    assert code == 2
    assert_one_line_error(err, "lstm")


def test_export_writes_a_transformers_folder(trained_run, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = run_cli(["export", str(trained_run), str(out), "--format", "hf"], capsys)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert str(out) in stdout
    code, _, err = run_cli(["export", str(trained_run), str(out)], capsys)  # not empty: refused
    assert code == 1 and "lmstudio: error: " in err and str(out) in err
    step10 = trained_run / "checkpoints" / "step_00000010"
    code, _, err = run_cli(["export", str(trained_run), str(out), "--overwrite", "--checkpoint", str(step10)],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["export", str(trained_run), str(tmp_path / "x"), "--format", "onnx"], capsys)
    assert code == 1
    assert_one_line_error(err, "--format 'onnx'")


def test_train_logs_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    config = write_tiny_config(tmp_path)
    run = tmp_path / "run"
    code, out, err = run_cli(["train", str(config), "--out", str(run), "--set", "train.max_steps=6",
                              "--set", "train.eval_interval=6", "--set", "train.log_interval=3",
                              "--tensorboard"], capsys)
    assert code == 0, err
    assert f"TensorBoard logs in {run / 'tensorboard'}" in out
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run / "tensorboard")).Reload().Scalars("train_loss")
    assert [s.step for s in scalars] == [3, 6]
    logs = tmp_path / "elsewhere"
    code, _, err = run_cli(["train", "--resume", str(run), "--set", "train.max_steps=9", "--tensorboard", str(logs)],
                           capsys)
    assert code == 0, err
    assert [s.step for s in EventAccumulator(str(logs)).Reload().Scalars("train_loss")] == [9]


# --- end to end ------------------------------------------------------------------------------

def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMSTUDIO_DEBUG": "", "LMSTUDIO_PLUGINS": "none"}
    return subprocess.run([sys.executable, "-m", "lmstudio_app", *args], check=False, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_module_entry_point_predicts_and_fails_cleanly(trained_run, tmp_path):
    done = run_module("predict", str(trained_run), "the man", "--json", "--top-k", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["next"]) == 3
    done = run_module("eval", str(tmp_path / "missing-run"), cwd=tmp_path)
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "missing-run")


def test_ctrl_c_stops_cleanly_with_a_checkpoint(tmp_path):
    config = write_tiny_config(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "LMSTUDIO_PLUGINS": "none"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmstudio_app", "train", str(config), "--out", str(run),
         "--set", "train.max_steps=100000", "--set", "train.log_interval=1", "--set", "train.eval_interval=100000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # wait until training has really started
            if line.startswith("step ") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped at step" in out
    assert "Traceback" not in err
    assert (run / "checkpoints" / "latest").is_file()
