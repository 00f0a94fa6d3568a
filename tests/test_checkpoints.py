"""Checkpoints: exact round trips, pruning, crash safety, corruption and mismatch errors, no pickle."""

from __future__ import annotations

import errno
import json
import pickle
import random
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from lmstudio_app.config import RunConfig
from lmstudio_app.data.corpus import BatchSampler
from lmstudio_app.errors import CheckpointError
from lmstudio_app.runs import checkpoints
from lmstudio_app.runs.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from lmstudio_app.runs.folder import RunDir
from lmstudio_app.runs.rng_state import capture_rng, restore_rng

VOCAB = 11


class TiedModel(nn.Module):
    """Embedding and output layer share one weight, like GPT-2."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(idx)))


def trained(width: int = 8, seed: int = 0) -> tuple[TiedModel, torch.optim.Optimizer]:
    """A model and an AdamW with non-trivial state after two steps."""
    torch.manual_seed(seed)
    model = TiedModel(width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(2):
        idx = torch.randint(VOCAB, (2, 5))
        loss = nn.functional.cross_entropy(model(idx).view(-1, VOCAB), idx.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "home"))
    return RunDir.create(tmp_path / "run", RunConfig())


@pytest.fixture
def sampler():
    tokens = np.arange(200, dtype=np.uint16) % VOCAB
    return BatchSampler(tokens, batch_size=2, context_length=4, seed=5, split="train")


def save(run, model, opt, step, samplers=None, **kw):
    return save_checkpoint(run, model=model, optimizers=[opt], step=step, rng=capture_rng(samplers or {}), **kw)


def test_round_trip_restores_weights_optimizer_and_ties(run):
    model, opt = trained()
    path = save(run, model, opt, 7, extra={"note": "hi"})
    fresh = TiedModel()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1.0, betas=(0.5, 0.5))
    state = load_checkpoint(path, fresh, [fresh_opt])
    assert state["step"] == 7 and state["extra"] == {"note": "hi"} and state["format_version"] == 1
    assert state["config"]["train"]["max_steps"] == RunConfig().train.max_steps
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    assert fresh.head.weight is fresh.emb.weight  # still tied after loading
    want, got = opt.state_dict(), fresh_opt.state_dict()
    assert got["param_groups"] == want["param_groups"]  # betas come back as a tuple
    for pid, values in want["state"].items():
        for key, value in values.items():
            assert torch.equal(got["state"][pid][key], value), (pid, key)


def test_tied_weight_is_stored_once(run):
    model, opt = trained()
    path = save(run, model, opt, 1)
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["emb.weight", "norm.bias", "norm.weight"]


def test_rng_and_sampler_streams_continue_identically(run, sampler):
    model, opt = trained()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    sampler.sample()
    path = save(run, model, opt, 3, samplers={"train": sampler})
    expected = (random.random(), np.random.rand(), torch.rand(3), sampler.sample())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    other = BatchSampler(np.arange(200, dtype=np.uint16) % VOCAB, 2, 4, seed=1234, split="train")
    state = load_checkpoint(path, TiedModel())
    restore_rng(state["rng"], {"train": other})
    got = (random.random(), np.random.rand(), torch.rand(3), other.sample())
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert torch.equal(got[3][0], expected[3][0]) and torch.equal(got[3][1], expected[3][1])


def test_keep_prunes_old_checkpoints_and_latest_points_at_the_newest(run):
    model, opt = trained()
    for step in range(1, 6):
        save(run, model, opt, step * 10, keep=3)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000030", "step_00000040", "step_00000050"]
    assert (run.checkpoints_dir / "latest").read_text().strip() == "step_00000050"
    assert latest_checkpoint(run).name == "step_00000050"


def test_latest_falls_back_to_newest_complete_folder(run):
    model, opt = trained()
    save(run, model, opt, 10)
    save(run, model, opt, 20)
    (run.checkpoints_dir / "latest").write_text("garbage\x00")
    (run.checkpoints_dir / ".tmp-step_00000030").mkdir()  # a save killed half-way
    half = run.checkpoints_dir / "step_00000040"  # a folder missing files
    half.mkdir()
    (half / "state.json").write_text("{}")
    assert latest_checkpoint(run).name == "step_00000020"
    (run.checkpoints_dir / "latest").write_text("step_00000099\n")  # points at nothing
    assert latest_checkpoint(run).name == "step_00000020"
    load_checkpoint(latest_checkpoint(run), TiedModel())


def test_same_step_saved_twice_replaces_the_folder(run):
    model, opt = trained()
    save(run, model, opt, 10, extra={"v": 1})
    save(run, model, opt, 10, extra={"v": 2})
    assert load_checkpoint(latest_checkpoint(run), TiedModel())["extra"] == {"v": 2}
    assert [p.name for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")] == []


def test_corrupted_safetensors_is_a_checkpoint_error_and_latest_skips_it(run):
    model, opt = trained()
    save(run, model, opt, 10)
    path = save(run, model, opt, 20)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupted checkpoint file"):
        load_checkpoint(path, TiedModel())
    assert latest_checkpoint(run).name == "step_00000010"
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state\.json: corrupted checkpoint file"):
        load_checkpoint(path, TiedModel())


def test_shape_mismatch_names_the_tensor_and_both_shapes(run):
    model, opt = trained(width=8)
    path = save(run, model, opt, 5)
    other = TiedModel(width=6)
    before = other.emb.weight.clone()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, other)
    assert "checkpoint does not match the model: emb.weight has shape (11, 8) in the file but (11, 6)" in str(info.value)
    assert torch.equal(other.emb.weight, before)  # nothing was half-loaded


def test_missing_checkpoint_and_optimizer_count_mismatch(run, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope", TiedModel())
    model, opt = trained()
    path = save(run, model, opt, 5)
    fresh = TiedModel()
    opts = [torch.optim.AdamW(fresh.parameters()), torch.optim.SGD(fresh.parameters(), lr=0.1)]
    with pytest.raises(CheckpointError, match="1 optimizer"):
        load_checkpoint(path, fresh, opts)


def test_disk_full_gives_a_clear_error_and_keeps_the_old_checkpoint(run, monkeypatch):
    model, opt = trained()
    good = save(run, model, opt, 10)
    real_write = checkpoints._write_file

    def full_disk(path, data):
        if path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(checkpoints, "_write_file", full_disk)
    with pytest.raises(CheckpointError, match=r"step_00000020: cannot write checkpoint \(No space left on device\)"):
        save(run, model, opt, 20)
    assert latest_checkpoint(run) == good
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["latest", "step_00000010"]  # no temp left
    load_checkpoint(good, TiedModel(), [torch.optim.AdamW(TiedModel().parameters())])


def test_files_are_safetensors_and_json_and_loading_never_unpickles(run, monkeypatch):
    model, opt = trained()
    path = save(run, model, opt, 5)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())
    for name in ("model.safetensors", "optimizer.safetensors"):
        data = (path / name).read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        json.loads(data[8 : 8 + header_len])  # a safetensors header is JSON; a pickle would start b"\x80"

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    fresh = TiedModel()
    load_checkpoint(path, fresh, [torch.optim.AdamW(fresh.parameters())])


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    from lmstudio_app.runs import checkpoints
    from lmstudio_app.config import RunConfig
    from lmstudio_app.runs.folder import RunDir
    from lmstudio_app.runs.rng_state import capture_rng

    run_path, moment = sys.argv[1], sys.argv[2]
    real_write, real_latest = checkpoints._write_file, checkpoints.atomic_write_text

    def hang_at(name):
        print(name, flush=True)  # the parent kills us now, in the middle of a save
        time.sleep(60)

    def write_file(path, data):
        real_write(path, data)
        if moment == "between-files" and step == 3 and path.name == "model.safetensors":
            hang_at(moment)

    def write_latest(path, text):
        if moment == "before-latest" and step == 3:
            hang_at(moment)
        real_latest(path, text)

    checkpoints._write_file, checkpoints.atomic_write_text = write_file, write_latest
    run = RunDir.create(run_path, RunConfig())
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64))
    opt = torch.optim.AdamW(model.parameters())
    for step in range(1, 5):
        model(torch.randn(2, 64)).sum().backward()
        opt.step()
        checkpoints.save_checkpoint(run, model=model, optimizers=[opt], step=step,
                                    rng=capture_rng({}), keep=2)
    print("never killed", flush=True)
    """
)


@pytest.mark.parametrize("moment", ["between-files", "before-latest"])
def test_kill_9_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path, moment):
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    run_path = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_path), moment], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == moment
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    run = RunDir.open(run_path)
    latest = latest_checkpoint(run)
    assert latest is not None and latest.name == "step_00000002"
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64))
    state = load_checkpoint(latest, model, [torch.optim.AdamW(model.parameters())])
    assert state["step"] == 2
    # the next save after the crash clears the leftovers
    save_checkpoint(run, model=model, optimizers=[], step=5, rng=capture_rng({}))
    assert not [p for p in run.checkpoints_dir.iterdir() if p.name.startswith(".")]
