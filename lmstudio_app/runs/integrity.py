"""What a run folder says, checked against itself before a resume acts on it.

A resume truncates ``metrics.jsonl`` and the timeline back to its checkpoint and then writes
over the later steps, so everything it reads decides what is kept. Nothing read from a run folder
is trusted alone; each value is checked against the others and, when two disagree, the run is
refused with one line and nothing in the folder is touched:

- ``checkpoints/latest`` must name a complete step folder (:func:`resume_checkpoint`);
- a checkpoint's state.json must hold the step of its folder's name (``checkpoints.read_state``);
- ``config.toml``'s [tokenizer] and [model] must be the ones stored beside the weights
  (:func:`check_config_matches_checkpoint`), which are then also checked against the weights' shapes;
- the training data must be the data the run started with (:func:`check_corpus`: the token
  arrays' sizes and hash, recorded in ``corpus.json`` when the run was created).

:func:`clean_leftovers` finishes or removes what a kill in the middle of a write left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write_text
from ..errors import CheckpointError
from ..file_reads import TOKENIZER_FILE_LIMIT, read_bytes
from . import checkpoints as ckpt
from .folder import RunDir

CORPUS_FILE = "corpus.json"

# Temp files of atomic_files (".<name>.<random>.tmp") and of checkpoint saves.
_ATOMIC_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
_TMP_STEP = re.compile(r"^\.tmp-step_\d+$")
_OLD_STEP = re.compile(r"^\.old-step_\d+$")


# -- leftovers of a kill ---------------------------------------------------------------------


def clean_leftovers(run: RunDir) -> list[str]:
    """Finish or remove what an interrupted write left (call with the run's lock held).

    A checkpoint saved twice for one step is swapped in through ``.old-step_X`` and
    ``.tmp-step_X``; a kill between the two renames leaves no ``step_X`` although ``latest``
    names it: the complete new one (or else the old one) is put back. Every other temporary file or folder is removed. Returns
    the names handled, for tests and messages."""
    handled: list[str] = []
    root = run.checkpoints_dir
    if root.is_dir():
        try:
            named = ckpt.read_latest(run)
        except CheckpointError:
            named = None
        if named and re.fullmatch(r"step_\d+", named) and not (root / named).exists():
            for candidate in (root / f".tmp-{named}", root / f".old-{named}"):  # the newer save first
                if candidate.is_dir() and ckpt.is_complete(candidate):
                    candidate.rename(root / named)
                    handled.append(candidate.name)
                    break
        for entry in list(root.iterdir()):
            if _TMP_STEP.match(entry.name) or _OLD_STEP.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                handled.append(entry.name)
    for folder in (run.path, root, run.path / "snapshots"):
        if not folder.is_dir():
            continue
        for entry in list(folder.iterdir()):
            if _ATOMIC_TEMP.match(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                handled.append(entry.name)
    return handled


# -- the checkpoint to resume from -------------------------------------------------------------


def resume_checkpoint(run: RunDir) -> Path | None:
    """The checkpoint a resume continues from, or None when the run has none yet.

    ``latest`` is written only after its folder is complete, so it naming a missing or broken
    folder, or no step folder at all, means the folder was damaged: the run is refused (falling
    back would train the later steps again over their records). Without ``latest`` (a kill before
    the first one was written) the newest complete folder is used."""
    name = ckpt.read_latest(run)
    folders = ckpt.list_checkpoints(run)
    if name is None:
        for folder in reversed(folders):
            if ckpt.is_complete(folder):
                return folder
        broken = ckpt.unusable_checkpoints_error(run)
        if broken is not None:
            raise broken
        return None
    latest = run.checkpoints_dir / ckpt.LATEST_FILE
    complete = [f.name for f in folders if ckpt.is_complete(f)]
    if folders and not complete:
        raise ckpt.unusable_checkpoints_error(run) or CheckpointError(f"{run.checkpoints_dir}: no complete checkpoint")
    way_out = (f"write {complete[-1]} into it to continue from there (the later steps are trained again)"
               if complete else "restore the checkpoint from a backup")
    if not re.fullmatch(r"step_\d+", name):
        raise CheckpointError(f"{latest}: names {_cut(name)!r}, not a step folder; {way_out}")
    folder = run.checkpoints_dir / name
    if not folder.is_dir():
        raise CheckpointError(f"{latest}: names {name}, which is missing; restore it, or {way_out}")
    if not ckpt.is_complete(folder):
        raise CheckpointError(f"{ckpt._diagnose(folder)}; {latest} names it: restore it, or {way_out}")
    return folder


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the config beside the weights -----------------------------------------------------------


def _section_differences(stored: dict[str, Any], current: dict[str, Any], section: str) -> list[str]:
    ours, theirs = stored.get(section, {}), current.get(section, {})
    if not isinstance(ours, dict):
        return []
    # The stored keys only: a param a newer plugin added (at its default) is not a difference.
    keys = sorted(ours, key=lambda k: (k != "plugin", k))
    return [f"{section}.{key} is {_cut(repr(theirs.get(key)))} in config.toml but {_cut(repr(ours.get(key)))} "
            "beside the weights" for key in keys if ours.get(key) != theirs.get(key)]


def check_config_matches_checkpoint(run: RunDir, config_dict: dict[str, Any], state: dict[str, Any],
                                    folder: Path) -> None:
    """Refuse a config.toml whose [tokenizer] or [model] differs from the one the checkpoint in
    ``folder`` was trained with (its state.json's ``config``): loading the weights into another
    architecture (another ``norm``, another ``mlp``) could succeed with the same shapes and
    silently compute something else."""
    stored = state.get("config")
    if not isinstance(stored, dict) or not stored:
        return  # an older checkpoint without its config: the shapes are still checked
    differences = _section_differences(stored, config_dict, "tokenizer") + _section_differences(
        stored, config_dict, "model")
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise CheckpointError(
            f"{run.config_path}: {differences[0]}{more} ({folder / ckpt.STATE_FILE}); "
            "put config.toml back as the run was trained, or start a new run"
        )


def check_config_against_latest(run: RunDir, config_dict: dict[str, Any]) -> None:
    """:func:`check_config_matches_checkpoint` against the newest complete checkpoint, if any
    (for weights that have no config of their own beside them: the snapshots)."""
    folder = ckpt.latest_checkpoint(run)
    if folder is not None:
        check_config_matches_checkpoint(run, config_dict, ckpt.read_state(folder), folder)


# -- the training data -----------------------------------------------------------------------


def corpus_fingerprint(train: np.ndarray, val: np.ndarray) -> dict[str, Any]:
    """The token arrays' sizes and a SHA-256 of their bytes: what the run trains on, whichever
    way the text was read and tokenized (the CLI, or the app's prepared corpus)."""
    digest = hashlib.sha256()
    for tokens in (train, val):
        array = np.ascontiguousarray(tokens)
        digest.update(str(array.dtype).encode() + b":" + str(array.size).encode() + b";")
        step = 1 << 24  # in slices: a memory-mapped corpus is never copied whole
        flat = array.reshape(-1)
        for start in range(0, flat.size, step):
            digest.update(memoryview(flat[start:start + step]).cast("B"))
    return {"train_tokens": int(np.size(train)), "val_tokens": int(np.size(val)), "sha256": digest.hexdigest()}


def _tokenizer_sha256(run: RunDir) -> str | None:
    if not os.path.lexists(run.tokenizer_path):
        return None
    data = read_bytes(run.tokenizer_path, what="tokenizer", max_bytes=TOKENIZER_FILE_LIMIT, error=CheckpointError)
    return hashlib.sha256(data).hexdigest()


def save_corpus_fingerprint(run: RunDir, fingerprint: dict[str, Any], files: list[dict[str, Any]]) -> None:
    """Write corpus.json: the token arrays' fingerprint, the files read and tokenizer.json's hash."""
    record = {**fingerprint, "tokenizer_sha256": _tokenizer_sha256(run), "files": files}
    try:
        atomic_write_text(run.path / CORPUS_FILE, json.dumps(record, indent=1) + "\n")
    except OSError as exc:
        raise CheckpointError(f"{run.path / CORPUS_FILE}: cannot write ({exc.strerror or exc})") from None


def read_corpus_fingerprint(run: RunDir) -> dict[str, Any] | None:
    path = run.path / CORPUS_FILE
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(read_bytes(path, what="corpus fingerprint", max_bytes=1 << 20, error=CheckpointError))
    except (ValueError, RecursionError):
        record = None
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or not all(isinstance(record.get(k), int) for k in ("train_tokens", "val_tokens"))):
        raise CheckpointError(f"{path}: corrupted corpus fingerprint; delete it to resume without the check")
    return record


def check_tokenizer(run: RunDir) -> None:
    """Refuse a resume whose tokenizer.json is not the one the run was created with (another
    tokenizer of the same size would load into the same shapes and mean other tokens)."""
    recorded = read_corpus_fingerprint(run)
    if recorded is None or not isinstance(recorded.get("tokenizer_sha256"), str):
        return
    if _tokenizer_sha256(run) != recorded["tokenizer_sha256"]:
        raise CheckpointError(
            f"{run.tokenizer_path}: changed since this run started (its hash is not the one in {CORPUS_FILE}); "
            "put back the run's own tokenizer.json, or start a new run"
        )


def check_corpus(run: RunDir, fingerprint: dict[str, Any], files: list[str] | None = None) -> bool:
    """Refuse a resume whose training data is not the data the run started with; True when
    checked, False when the run has no fingerprint yet (a run made before this existed)."""
    recorded = read_corpus_fingerprint(run)
    if recorded is None:
        return False
    if recorded["sha256"] == fingerprint["sha256"]:
        return True
    was = recorded["train_tokens"] + recorded["val_tokens"]
    now = fingerprint["train_tokens"] + fingerprint["val_tokens"]
    named = ", ".join(str(f)[:120] for f in (files or [])[:3]) or "the run's data.files"
    raise CheckpointError(
        f"{run.path}: the training data changed since this run started ({was:,} tokens then, {now:,} now, "
        f"different content; see {CORPUS_FILE}): put back the text of {named} as it was, or start a new run on it"
    )
