"""The training engine on a tiny GPT: learning, metrics, control from another thread, exact resume,
nan and out-of-memory handling, and plugin failures named after their plugin."""

from __future__ import annotations

import math
import random
import shutil
import threading
import time
import types

import pytest
import torch

from lmstudio_app import hookimpl
from lmstudio_app.config import TrainConfig, config_from_dict
from lmstudio_app.errors import CheckpointError, ConfigError, ParamError, PluginCallError, TrainingError
from lmstudio_app.params import param
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.specs import ModelSpec, TokenizerSpec
from lmstudio_app.training.control import StepMetrics, StepPlan, TrainingControl
from lmstudio_app.training.trainer import Trainer

REQUIRED_KEYS = {"step", "elapsed_s", "train_loss", "lr", "tokens_per_s"}


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture
def corpus_file(tmp_path):
    rng = random.Random(0)
    subjects, verbs, objects = ["the cat", "a dog", "my bird"], ["sees", "likes", "chases"], ["the ball", "a mouse"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(corpus_file, model=None, **train):
    settings = {
        "device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": 40,
        "eval_interval": 20, "log_interval": 5, "eval_batches": 2, "sample_tokens": 6,
        "warmup_steps": 5, "learning_rate": 3e-3, "min_lr": 3e-4, **train,
    }
    gpt = {"plugin": "gpt", "n_layer": 1, "n_embd": 32, "n_head": 2, "context_length": 16, **(model or {})}
    return config_from_dict({"data": {"files": [str(corpus_file)]}, "model": gpt, "train": settings}, "test")


def test_loss_goes_down_without_a_run_folder(registry, corpus_file, tmp_path):
    trainer = Trainer(tiny_config(corpus_file, max_steps=60, eval_interval=60), registry, write_run=False)
    reports = []
    last = trainer.run(reports.append)
    assert trainer.run_dir is None and trainer.stop_reason == "finished" and trainer.step == 60
    assert isinstance(last, StepMetrics) and last.step == 60 and last.val_loss is not None
    assert reports[0].train_loss > math.log(trainer.tokenizer.vocab_size) - 0.5
    assert last.train_loss < reports[0].train_loss - 0.5 and last.val_loss < reports[0].train_loss - 0.5
    assert list((tmp_path / "home").glob("*")) == []  # nothing written
    assert trainer.evaluate(batches=3, split="train") < reports[0].train_loss - 0.5
    with pytest.raises(ParamError, match="split: 'test'"):
        trainer.evaluate(split="test")
    with pytest.raises(CheckpointError, match="no run folder"):
        trainer.save_checkpoint()


def test_metrics_file_has_required_keys_and_val_loss_on_eval_steps(registry, corpus_file, tmp_path):
    progress = []
    trainer = Trainer(tiny_config(corpus_file), registry, tmp_path / "run",
                      progress=lambda stage, done, total: progress.append(stage))
    assert {"reading", "tokenizer", "tokenizing"} <= set(progress)
    trainer.run()
    records = RunDir.open(tmp_path / "run").read_metrics()
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    for record in records:
        assert REQUIRED_KEYS <= set(record), record
        assert ("val_loss" in record) == (record["step"] in (20, 40))
        assert record["tokens_per_s"] > 0 and record["tokens_seen"] == record["step"] * 4 * 16
        assert isinstance(record.get("sample"), str) == (record["step"] in (20, 40))
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step_00000020", "step_00000040"]
    saved = RunDir.open(tmp_path / "run").load_config()
    assert saved.model.params["n_embd"] == 32 and "dropout" in saved.model.params  # defaults stored too


def test_pause_resume_and_stop_from_another_thread(registry, corpus_file, tmp_path):
    trainer = Trainer(tiny_config(corpus_file, max_steps=100_000, log_interval=1, eval_interval=100_000),
                      registry, tmp_path / "run")
    started = threading.Event()
    worker = threading.Thread(target=trainer.run, kwargs={"on_step": lambda m: started.set()})
    worker.start()
    try:
        assert started.wait(60)
        trainer.control.pause()
        time.sleep(0.2)  # let the step in flight finish
        paused_at = trainer.step
        time.sleep(0.3)
        assert trainer.step == paused_at and trainer.control.paused
        with trainer.lock:  # probing the live model between steps
            assert trainer.predictor().generate("the", max_tokens=3, seed=1)
        trainer.control.resume()
        deadline = time.time() + 30
        while trainer.step < paused_at + 3 and time.time() < deadline:
            time.sleep(0.01)
        assert trainer.step >= paused_at + 3
    finally:
        trainer.control.stop()
        worker.join(60)
    assert not worker.is_alive() and trainer.stop_reason == "stopped"
    assert latest_checkpoint(trainer.run_dir).name == f"step_{trainer.step:08d}"  # the final checkpoint
    assert trainer.run_dir.read_metrics()[-1]["step"] == trainer.step


def test_stop_while_paused_ends_the_loop():
    control = TrainingControl()
    control.pause()
    results = []
    waiter = threading.Thread(target=lambda: results.append(control.wait_while_paused()))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()
    control.stop()
    waiter.join(5)
    assert results == [False] and control.stop_requested and not control.paused


def _plans(**train) -> dict[str, list[int]]:
    """The steps (1..max_steps) at which each of StepPlan's decisions is taken."""
    cfg = TrainConfig(**train)
    plans = {step: StepPlan.at(step, cfg) for step in range(1, cfg.max_steps + 1)}
    return {what: [step for step, plan in plans.items() if getattr(plan, what)]
            for what in ("last", "evaluate", "sample", "checkpoint", "log", "syncs")}


def test_step_plan_evaluates_at_the_interval_and_the_last_step_and_checkpoints_with_each_evaluation():
    steps = _plans(max_steps=25, eval_interval=10, log_interval=4, checkpoint_interval=0, sample_tokens=5)
    assert steps["last"] == [25]
    assert steps["evaluate"] == steps["sample"] == [10, 20, 25]
    assert steps["checkpoint"] == [10, 20, 25]  # checkpoint_interval 0: with each evaluation
    assert steps["log"] == [4, 8, 10, 12, 16, 20, 24, 25]  # every evaluation is reported too
    assert steps["syncs"] == steps["log"]


def test_step_plan_checkpoints_at_its_own_interval_and_at_the_end():
    steps = _plans(max_steps=20, eval_interval=8, log_interval=100, checkpoint_interval=6, sample_tokens=0)
    assert steps["evaluate"] == [8, 16, 20] and steps["sample"] == []  # sample_tokens 0: no samples
    assert steps["checkpoint"] == [6, 12, 18, 20]
    assert steps["log"] == [8, 16, 20]
    assert steps["syncs"] == [6, 8, 12, 16, 18, 20]  # a checkpoint checks the losses first
    assert StepPlan.at(21, TrainConfig(max_steps=20)).last  # a resumed run past its end stops too


@pytest.mark.parametrize("crash", [False, True])
def test_resume_continues_exactly_like_an_uninterrupted_run(registry, corpus_file, tmp_path, crash):
    # dropout exercises the torch RNG; logging every step compares every single loss
    config = tiny_config(corpus_file, model={"dropout": 0.1}, max_steps=30, eval_interval=10, log_interval=1)
    Trainer(config, registry, tmp_path / "straight").run()
    straight = RunDir.open(tmp_path / "straight").read_metrics()

    first = Trainer(config, registry, tmp_path / "resumed")
    first.run(lambda m: first.control.stop() if m.step == 23 else None)
    assert first.step == 23 and first.stop_reason == "stopped"
    assert latest_checkpoint(first.run_dir).name == "step_00000023"  # saved on stop, between evaluations
    if crash:  # as if killed after logging step 23 but before its checkpoint: resume from 20
        shutil.rmtree(first.run_dir.checkpoints_dir / "step_00000023")
        (first.run_dir.checkpoints_dir / "latest").write_text("step_00000020\n")  # what such a kill leaves
    second = Trainer(None, registry, tmp_path / "resumed", resume=True)
    assert second.step == (20 if crash else 23)
    assert [r["step"] for r in second.run_dir.read_metrics()] == list(range(1, second.step + 1))
    second.run()
    resumed = RunDir.open(tmp_path / "resumed").read_metrics()
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(1, 31))
    for want, got in zip(straight, resumed):
        assert abs(got["train_loss"] - want["train_loss"]) <= 1e-6, want["step"]
        assert abs(got.get("val_loss", 0.0) - want.get("val_loss", 0.0)) <= 1e-6, want["step"]
        assert got.get("sample") == want.get("sample")


def test_resume_may_extend_max_steps_but_not_change_the_run(registry, corpus_file, tmp_path):
    Trainer(tiny_config(corpus_file, max_steps=10, eval_interval=10), registry, tmp_path / "run").run()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config(corpus_file), registry, tmp_path / "run")
    longer = tiny_config(corpus_file, max_steps=15, eval_interval=10, learning_rate=0.5)
    trainer = Trainer(longer, registry, tmp_path / "run", resume=True)
    assert trainer.step == 10 and trainer.config.train.max_steps == 15
    assert trainer.config.train.learning_rate == 3e-3 and trainer.ignored_overrides == ["train.learning_rate"]
    trainer.run()
    assert trainer.step == 15 and RunDir.open(tmp_path / "run").load_config().train.max_steps == 15


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_good_checkpoint(registry, corpus_file, tmp_path):
    trainer = Trainer(tiny_config(corpus_file, eval_interval=10, log_interval=10), registry, tmp_path / "run")
    real_forward = trainer.model.forward

    def poisoned(idx):
        logits = real_forward(idx)
        return logits * float("nan") if trainer.model.training and trainer.step >= 14 else logits

    trainer.model.forward = poisoned
    with pytest.raises(TrainingError) as info:
        trainer.run()
    message = str(info.value)
    assert message.startswith("loss became nan at step 15; the last good checkpoint is step 10")
    assert "train.learning_rate (now 0.003)" in message and "\n" not in message
    assert trainer.stop_reason == "error"
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step_00000010"]
    fresh = Trainer(tiny_config(corpus_file), registry, write_run=False).model
    load_checkpoint(latest_checkpoint(trainer.run_dir), fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_out_of_memory_even_at_one_sequence_per_micro_batch_stops_clearly(registry, corpus_file):
    trainer = Trainer(tiny_config(corpus_file), registry, write_run=False)

    def exhausted(idx):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.model.forward = exhausted
    # micro-batches shrink 4 -> 2 -> 1 first (see test_reliability.py), then the run stops
    with pytest.raises(TrainingError, match="micro-batches of 1\\); even one sequence per micro-batch does not fit"):
        trainer.run()
    assert all(p.grad is None for p in trainer.model.parameters())


def test_failed_compile_falls_back_with_a_warning(registry, corpus_file, monkeypatch):
    def broken_compile(model, **kwargs):
        def compiled(idx):
            raise RuntimeError("no C compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    trainer = Trainer(tiny_config(corpus_file, compile=True, max_steps=10), registry, write_run=False)
    reports: list[StepMetrics] = []
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        trainer.run(reports.append)
    assert trainer.step == 10 and "no C compiler found" in reports[0].warning
    assert reports[1].warning is None


def test_grad_accum_must_divide_the_batch(registry, corpus_file):
    with pytest.raises(ConfigError, match="train.grad_accum: 3 does not divide train.batch_size 4"):
        Trainer(tiny_config(corpus_file, grad_accum=3), registry, write_run=False)
    trainer = Trainer(tiny_config(corpus_file, grad_accum=2, max_steps=3), registry, write_run=False)
    assert trainer.run().step == 3


def _failing_plugin(where: str) -> types.ModuleType:
    """A plugin module whose tokenizer or model raises in ``where`` (build/forward)."""
    from dataclasses import make_dataclass

    params = make_dataclass("BoomParams", [("context_length", int, param(16, min=2))])
    registry_default = PluginRegistry.discover(use_user_dir=False)
    gpt = registry_default.model("gpt")
    char = registry_default.tokenizer("char")

    def build_model(p, vocab_size):
        if where == "model-build":
            raise ValueError("bad width")
        model = gpt.build(gpt.params(n_layer=1, n_head=2, n_embd=16, context_length=p.context_length), vocab_size)
        if where == "forward":
            def forward(idx):
                raise IndexError("index out of range in self")
            model.forward = forward
        return model

    def build_tokenizer(p, texts, progress):
        raise KeyError("missing merges")

    module = types.ModuleType("boom_plugin")
    module.lmstudio_models = hookimpl(lambda: [ModelSpec("boom", "fails", params, build_model)])
    module.lmstudio_tokenizers = hookimpl(lambda: [TokenizerSpec("boomtok", "fails", char.params, build_tokenizer)])
    return module


@pytest.mark.parametrize("where", ["model-build", "forward", "tokenizer"])
def test_plugin_exceptions_name_the_plugin(corpus_file, where):
    registry = PluginRegistry.discover(use_user_dir=False)
    registry.register_module(_failing_plugin(where), "boom_plugin", "test")
    raw = tiny_config(corpus_file).to_dict()
    raw["model"] = {"plugin": "boom"}
    if where == "tokenizer":
        raw["tokenizer"] = {"plugin": "boomtok"}
    config = config_from_dict(raw, "test")
    with pytest.raises(PluginCallError) as info:
        Trainer(config, registry, write_run=False).run()
    assert info.value.plugin == "boom_plugin" and str(info.value).startswith("plugin 'boom_plugin' failed in ")
