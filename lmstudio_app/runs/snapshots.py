"""The model as it was at a few moments of training, kept so any of them can be probed again.

A run keeps its weights (safetensors, no optimiser state) in ``snapshots/step_XXXXXXXX.safetensors``
at step 0 and at log-spaced steps — 10, 20, 50, 100, 200, 500, 1000, … (:func:`is_snapshot_step`) —
so a run of N steps keeps about 3·log10(N) of them: a 10,000-step run keeps 11, each the size of
the model's weights. Every checkpoint still in ``checkpoints/`` is a moment to go back to as well.
Loading one never touches the training model: it fills a model of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from .checkpoints import MODEL_FILE, is_complete, list_checkpoints, load_weights, save_weights
from .folder import RunDir

SNAPSHOTS_DIR = "snapshots"
_SNAPSHOT = re.compile(r"^step_(\d+)\.safetensors$")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def is_snapshot_step(step: int) -> bool:
    """Step 0, and 1, 2 and 5 times a power of ten from 10 on."""
    if step == 0:
        return True
    if step < 10:
        return False
    digits = str(step)
    return digits[0] in "125" and set(digits[1:]) == {"0"}


def snapshot_path(run: RunDir, step: int) -> Path:
    return run.path / SNAPSHOTS_DIR / f"step_{step:08d}.safetensors"


def save_snapshot(run: RunDir, step: int, model: nn.Module) -> Path:
    path = snapshot_path(run, step)
    save_weights(path, model)
    return path


def available_steps(run: RunDir) -> dict[int, Path]:
    """Step -> weights file: the snapshots and the checkpoints still in the run folder."""
    found: dict[int, Path] = {}
    folder = run.path / SNAPSHOTS_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            match = _SNAPSHOT.match(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = path
    for checkpoint in list_checkpoints(run):
        match = _STEP_DIR.match(checkpoint.name)
        if match and is_complete(checkpoint):
            found.setdefault(int(match.group(1)), checkpoint / MODEL_FILE)
    return dict(sorted(found.items()))


def load_snapshot(run: RunDir, step: int, model: nn.Module) -> Path:
    """Fill ``model`` with the weights of ``step``; the steps there are are named when it is not one."""
    steps = available_steps(run)
    if step not in steps:
        shown = ", ".join(str(s) for s in steps) or "none"
        raise CheckpointError(f"{run.path}: no weights kept for step {step} (kept: {shown})")
    load_weights(steps[step], model)
    return steps[step]


def drop_snapshots_after(run: RunDir, step: int) -> None:
    """A resumed run trains the later steps again: their snapshots would be of another history."""
    for kept, path in available_steps(run).items():
        if kept > step and path.parent.name == SNAPSHOTS_DIR:
            path.unlink(missing_ok=True)
