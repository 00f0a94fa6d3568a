"""The reliability matrix, core side, part 1: bad input and faults during training each end in a
one-line message naming the file, key or value, and never cost the user their work.

docs/reliability.md lists every case with what the user sees and the test that covers it; the
cases already covered elsewhere (test_data, test_checkpoints, test_training, test_inference) are
not repeated here. Untrusted files and long runs: tests/test_reliability_files.py.
"""

from __future__ import annotations

import errno
import gc
import json
import re
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import types
from dataclasses import make_dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_support import ROOT, SENTENCES, assert_one_line, tiny_config

from lmstudio_app import hookimpl
from lmstudio_app.config import config_from_dict, load_config
from lmstudio_app.data import corpus as corpus_module
from lmstudio_app.data.corpus import iter_text_chunks, tokenize_corpus
from lmstudio_app.errors import (
    Cancelled,
    CheckpointError,
    ConfigError,
    DataError,
    PluginCallError,
    TokenizerError,
    TrainingError,
)
from lmstudio_app.params import build_params, param
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.runs import checkpoints
from lmstudio_app.runs import folder as runs_module
from lmstudio_app.runs.checkpoints import latest_checkpoint, load_checkpoint
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.session import Session
from lmstudio_app.specs import ModelSpec
from lmstudio_app.training.faults import is_out_of_memory, next_grad_accum, shrink_micro_batches
from lmstudio_app.training.trainer import Trainer


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the Trainer applies train.threads process-wide


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SENTENCES * 60, encoding="utf-8")
    return path



# -- 1. bad input ---------------------------------------------------------------------------------


BAD_FILES = {
    "empty": (b"", "the file is empty"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file (PNG image)"),
    "latin-1": ("caf\xe9 na\xefve r\xe9sum\xe9\n".encode("latin-1") * 20, "choose that encoding"),
    "utf-16": ("plain text in UTF-16\n".encode("utf-16-le") * 20, "looks like utf-16-le"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_names_itself_and_leaves_the_session_as_it_was(registry, corpus_file, tmp_path, case):
    data, needle = BAD_FILES[case]
    bad = tmp_path / f"bad-{case}.txt"
    bad.write_bytes(data)
    session = Session(registry, tiny_config([corpus_file]))
    before = (session.text, list(session.file_infos), list(session.config.data.files))
    with pytest.raises(DataError) as info:
        session.add_files([bad])
    assert_one_line(info.value, str(bad), needle)
    assert (session.text, session.file_infos, session.config.data.files) == before
    if case in ("latin-1", "utf-16"):  # the detected encoding is offered, and it works
        encoding = re.search(r"looks like ([\w-]+)", str(info.value)).group(1)
        session.add_files([bad], encoding=encoding)
        assert "caf\xe9" in session.text or "UTF-16" in session.text


def test_a_folder_of_thousands_of_files_reads_with_progress_and_can_be_cancelled(registry, tmp_path):
    folder = tmp_path / "many"
    for i in range(2000):
        sub = folder / f"d{i // 500}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}.txt").write_text(f"file {i}: the cat sees a dog.\n", encoding="utf-8")
    session = Session(registry, tiny_config([folder]))
    assert len(session.file_infos) == 2000 and "file 1999" in session.text
    reports: list[tuple[int, int]] = []
    with pytest.raises(Cancelled, match="reading cancelled after 100 of 2000 files"):
        session.set_files([folder], progress=lambda done, total: reports.append((done, total)),
                          cancel=lambda: len(reports) >= 100)
    assert len(reports) == 100 and len(session.file_infos) == 2000  # the corpus stayed as it was


def test_a_corpus_shorter_than_the_context_stops_before_any_run_folder_exists(registry, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the cat", encoding="utf-8")
    with pytest.raises(DataError) as info:
        Trainer(tiny_config([short]), registry, tmp_path / "run")
    assert_one_line(info.value, "the train split has 6 tokens, fewer than the context length 8 + 1",
                    "lower model.context_length")
    assert not (tmp_path / "run").exists()


class _SpyTokenizer:
    """Wraps a real tokenizer; records how much text each call sees."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.vocab_size = inner.vocab_size
        self.batch_chars: list[int] = []

    def encode(self, text):
        raise AssertionError("tokenize_corpus must never encode the whole text at once")

    def encode_batch(self, texts):
        self.batch_chars.append(sum(len(t) for t in texts))
        return self.inner.encode_batch(texts)


def test_tokenize_corpus_never_holds_a_python_list_of_all_ids_and_cancels_between_batches(registry):
    text = (SENTENCES * 60_000)[:4_000_000]
    spec = registry.tokenizer("char")
    spy = _SpyTokenizer(spec.build(build_params(spec.params, {}, "tokenizer"), lambda: iter_text_chunks(text), None))
    gc.collect()
    tracemalloc.start()
    try:
        corpus = tokenize_corpus(spy, text, 0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert corpus.n_tokens == len(text) and corpus.train.dtype == np.uint8  # a char vocabulary < 257
    # A list of all 4M IDs alone is 32 MB of pointers; the arrays themselves are 8 MB.
    assert peak < 4 * len(text), f"peak {peak / 2**20:.1f} MB while tokenizing {len(text):,} characters"
    per_batch = corpus_module._ENCODE_CHUNK_CHARS * corpus_module._CHUNKS_PER_BATCH
    assert max(spy.batch_chars) <= per_batch and len(spy.batch_chars) > 5

    calls_at_cancel: list[int] = []

    def cancel() -> bool:
        if len(spy.batch_chars) >= 3 and not calls_at_cancel:
            calls_at_cancel.append(len(spy.batch_chars))
        return bool(calls_at_cancel)

    spy.batch_chars.clear()
    with pytest.raises(Cancelled, match="tokenizing cancelled"):
        tokenize_corpus(spy, text, 0.1, cancel=cancel)
    assert len(spy.batch_chars) == calls_at_cancel[0]  # not one more batch after the request


class _FakeTokenizer:
    def __init__(self, vocab_size: int, ids: list[int]) -> None:
        self.vocab_size = vocab_size
        self.ids = ids

    def encode_batch(self, texts):
        return [self.ids[: len(t)] for t in texts]


def test_vocabulary_size_picks_the_token_dtype_and_ids_never_wrap_around():
    text = "x" * 40
    big = tokenize_corpus(_FakeTokenizer(70_000, [65_535, 65_536, 69_999] * 20), text, 0.0)
    assert big.train.dtype == np.uint32 and big.train[:3].tolist() == [65_535, 65_536, 69_999]
    with pytest.raises(TokenizerError) as info:  # a tokenizer.json whose IDs exceed its vocabulary
        tokenize_corpus(_FakeTokenizer(300, [5, 300] * 30), text, 0.0)
    assert_one_line(info.value, "token ID 300", "vocabulary has 300 IDs")
    with pytest.raises(TokenizerError, match="token ID 70,000"):  # would wrap to 4464 in a uint16 array
        tokenize_corpus(_FakeTokenizer(65_536, [1, 70_000] * 30), text, 0.0)
    with pytest.raises(DataError, match="vocabulary size 4,294,967,297 is too large"):
        tokenize_corpus(_FakeTokenizer(2**32 + 1, [1] * 40), text, 0.0)


CONFIG_CASES = {
    "malformed TOML": ("[train\nmax_steps = 5\n", "invalid TOML"),
    "unknown section": ("[trian]\nmax_steps = 5\n", "unknown section [trian]"),
    "unknown key": ("[train]\nmax_step = 5\n", "train.max_step: unknown key"),
    "out of range": ("[train]\nlearning_rate = 50.0\n", "train.learning_rate: 50.0 is above the maximum 10"),
    "negative": ("[train]\nbatch_size = -4\n", "train.batch_size: -4 is below the minimum 1"),
    "wrong type": ('[train]\nmax_steps = "lots"\n', "train.max_steps: expected an integer, got 'lots'"),
    "bad choice": ('[train]\ndevice = "tpu"\n', "train.device: 'tpu' is not one of"),
    "not a table": ("train = 5\n", "train must be a [section]"),
    "not UTF-8": (b"[train]\nmax_steps = 5 # caf\xe9\n", "cannot read config"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_bad_config_toml_names_the_file_and_the_key(tmp_path, case):
    text, needle = CONFIG_CASES[case]
    path = tmp_path / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_one_line(info.value, str(path), needle)


def test_out_of_range_plugin_params_name_the_key(registry, corpus_file):
    config = tiny_config([corpus_file], model={"n_layer": 500})
    with pytest.raises(ConfigError) as info:
        Trainer(config, registry, write_run=False)
    assert_one_line(info.value, "model.n_layer: 500 is above the maximum")


# -- 2. faults during training ---------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
], ids=["OutOfMemoryError", "cuda-RuntimeError", "cpu-RuntimeError"])
def test_out_of_memory_halves_the_micro_batch_and_keeps_training(registry, corpus_file, tmp_path, error):
    trainer = Trainer(tiny_config([corpus_file]), registry, tmp_path / "run")
    real_forward, seen = trainer.model.forward, []

    def limited(idx):  # as if only two sequences fit on the device
        if torch.is_grad_enabled():  # the training steps' forwards (not the probes of the watched prompts)
            seen.append(idx.shape[0])
        if idx.shape[0] > 2:
            raise error
        return real_forward(idx)

    trainer.model.forward = limited
    reports = []
    trainer.run(reports.append)
    assert trainer.step == 6 and trainer.stop_reason == "finished"
    assert seen[:3] == [8, 4, 2] and set(seen[3:]) == {2}  # 8 → 4 → 2, then every micro-batch is 2
    cfg = trainer.config.train
    assert (cfg.batch_size, cfg.grad_accum) == (8, 4)  # the global batch is unchanged
    assert all(s.batch_size == 2 for s in trainer._samplers.values())
    assert reports[0].warning == (
        "out of memory at step 1 with micro-batches of 8: now 2 micro-batches of 4 per step (train.grad_accum 2; "
        "train.batch_size 8 unchanged); out of memory at step 1 with micro-batches of 4: now 4 micro-batches of 2 "
        "per step (train.grad_accum 4; train.batch_size 8 unchanged)")
    assert all(r.warning is None for r in reports[1:]) and all(np.isfinite(r.train_loss) for r in reports)
    records = trainer.run_dir.read_metrics()
    assert "micro-batches of 2" in records[0]["warning"] and records[-1]["tokens_seen"] == 6 * 8 * 8
    assert trainer.run_dir.load_config().train.grad_accum == 4  # config.toml says how it really trained


def test_out_of_memory_during_evaluation_shrinks_the_evaluation_batches(registry, corpus_file):
    trainer = Trainer(tiny_config([corpus_file], max_steps=3), registry, write_run=False)
    real_forward = trainer.model.forward

    def eval_limited(idx):
        if not trainer.model.training and idx.shape[0] > 4:
            raise RuntimeError("CUDA out of memory")
        return real_forward(idx)

    trainer.model.forward = eval_limited
    assert np.isfinite(trainer.run().val_loss) and trainer.config.train.grad_accum == 2


def test_next_grad_accum_splits_the_batch_evenly():
    assert [next_grad_accum(8, a) for a in (1, 2, 4, 8)] == [2, 4, 8, None]
    assert [next_grad_accum(12, a) for a in (1, 2, 4, 12)] == [2, 4, 12, None]  # micro 12 → 6 → 3 → 1
    assert next_grad_accum(7, 1) == 7 and next_grad_accum(8, 1, world_size=2) == 2
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(RuntimeError("shape mismatch"))


def test_under_torchrun_out_of_memory_stops_instead_of_desynchronising_the_ranks(corpus_file):
    cfg = tiny_config([corpus_file]).train
    dist = types.SimpleNamespace(world_size=2, rank=0, is_main=True)
    with pytest.raises(TrainingError) as info:
        shrink_micro_batches(cfg, {}, 7, torch.device("cpu"), dist)  # type: ignore[arg-type]
    assert_one_line(info.value, "out of memory on cpu at step 7", "ranks cannot shrink")
    assert cfg.grad_accum == 1


def _boom_plugin(where: str) -> types.ModuleType:
    """A third-party plugin whose model raises in forward (training or probing)."""
    params = make_dataclass("BoomParams", [("context_length", int, param(8, min=2))])
    gpt = PluginRegistry.discover(use_user_dir=False).model("gpt")

    def build(p, vocab_size):
        model = gpt.build(gpt.params(n_layer=1, n_head=2, n_embd=16, context_length=p.context_length), vocab_size)
        real_forward = model.forward

        def forward(idx):
            if where == "probe" and idx.shape[0] > 1:  # training and evaluation work; a prompt (batch 1) fails
                return real_forward(idx)
            raise IndexError("index out of range in self")

        model.forward = forward
        return model

    module = types.ModuleType("boom_plugin")
    module.lmstudio_models = hookimpl(lambda: [ModelSpec("boom", "fails", params, build)])
    return module


def test_a_plugin_model_failing_while_probed_is_named_not_a_traceback(corpus_file):
    registry = PluginRegistry.discover(use_user_dir=False)
    registry.register_module(_boom_plugin("probe"), "boom_plugin", "test")
    raw = tiny_config([corpus_file]).to_dict()
    raw["model"] = {"plugin": "boom"}
    trainer = Trainer(config_from_dict(raw, "test"), registry, write_run=False)
    trainer.run()  # training and evaluation work
    with pytest.raises(PluginCallError) as info:
        trainer.predictor().next_token("the cat")
    assert info.value.plugin == "boom_plugin"
    assert_one_line(info.value, "plugin 'boom_plugin' failed in running the model on a prompt: IndexError")


def test_disk_full_while_training_stops_clearly_and_the_last_checkpoint_survives(
        registry, corpus_file, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config([corpus_file]), registry, tmp_path / "run")
    real_write = checkpoints._write_file

    def full_after_step_3(path, data):
        if trainer.step > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(checkpoints, "_write_file", full_after_step_3)
    with pytest.raises(CheckpointError) as info:
        trainer.run()
    assert_one_line(info.value, "step_00000006: cannot write checkpoint (No space left on device)")
    assert trainer.stop_reason == "error" and latest_checkpoint(trainer.run_dir).name == "step_00000003"
    load_checkpoint(latest_checkpoint(trainer.run_dir), Trainer(tiny_config([corpus_file]), registry,
                                                                 write_run=False).model)
    monkeypatch.setattr(checkpoints, "_write_file", real_write)  # space freed: the work is still there
    assert trainer.save_checkpoint().name == "step_00000006"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs_module, "open", no_space, raising=False)  # shadows the builtin in runs.py
    with pytest.raises(CheckpointError) as info:
        trainer.run_dir.append_metrics({"step": 7})
    assert_one_line(info.value, "metrics.jsonl: cannot write metrics (No space left on device)")


KILL_TRAINER = textwrap.dedent(
    """
    import sys
    from lmstudio_app.config import config_from_dict
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training.trainer import Trainer

    config = config_from_dict(__import__("json").loads(sys.argv[2]), "test")
    trainer = Trainer(config, PluginRegistry.discover(use_user_dir=False), sys.argv[1])
    for metrics in trainer.steps():
        print(metrics.step, flush=True)
    """
)


def test_kill_9_while_training_resumes_from_the_last_complete_checkpoint(registry, corpus_file, tmp_path):
    config = tiny_config([corpus_file], max_steps=100_000, eval_interval=100_000, checkpoint_interval=5)
    script = tmp_path / "train.py"
    script.write_text(KILL_TRAINER)
    run_path = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_path), json.dumps(config.to_dict())],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stdout:  # the child prints each step; kill it well into the run
            if int(line) >= 23:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    run = RunDir.open(run_path)
    saved = int(latest_checkpoint(run).name.split("_")[1])
    assert saved >= 20 and saved % 5 == 0
    resumed = Trainer(tiny_config([corpus_file], max_steps=saved + 2, eval_interval=100_000, checkpoint_interval=5),
                      registry, run_path, resume=True)
    assert resumed.step == saved and [r["step"] for r in run.read_metrics()] == list(range(1, saved + 1))
    resumed.run()
    assert resumed.step == saved + 2




def test_freeing_a_failed_step_collects_only_where_the_process_lets_it(monkeypatch):
    """The app switches automatic collection off and collects in its GUI thread: the training
    thread must not collect then (that hung the app: Qt objects destroyed outside their thread)."""
    from lmstudio_app.training import faults

    collected: list[int] = []
    monkeypatch.setattr(faults.gc, "collect", lambda *args: collected.append(1) or 0)
    was_enabled = gc.isenabled()
    try:
        gc.disable()
        faults.free_memory(torch.device("cpu"))
        assert collected == []
        gc.enable()
        faults.free_memory(torch.device("cpu"))
        assert collected == [1]  # a plain process (the CLI) frees the cycles at once
    finally:
        (gc.enable if was_enabled else gc.disable)()
