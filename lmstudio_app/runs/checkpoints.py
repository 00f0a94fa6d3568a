"""Checkpoints: safetensors for tensors, JSON for everything else; never a pickle.

Layout inside a run folder::

    checkpoints/
      step_00000500/
        model.safetensors      model.state_dict(); tied weights stored once (aliases in metadata)
        optimizer.safetensors  every optimizer's state tensors, keys like ``opt0.state.3.exp_avg``
        state.json             step, param groups, RNG states, the run config, ``extra``
      latest                   the name of the newest complete checkpoint folder

A checkpoint is written into ``checkpoints/.tmp-step_…``, fsynced and renamed into place before
``latest`` is rewritten, so a crash at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.optim import Optimizer

from ..atomic_files import atomic_write_bytes, atomic_write_text, fsync_dir
from ..errors import CheckpointError
from ..file_reads import SMALL_FILE_LIMIT, check_regular_file, read_bytes, read_text
from .folder import RunDir
from .rng_state import decode_rng, encode_rng

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# -- tensors <-> files ----------------------------------------------------------------------


def _model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied weights stored once; returns (tensors, alias -> stored name)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in seen and t.numel() > 0:  # empty tensors all share data_ptr 0 without being tied
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        # Different views of one storage cannot both go into a safetensors file: copy the later ones.
        t = t.detach().to("cpu").contiguous() if ptr not in storages else t.detach().to("cpu").clone()
        storages.add(ptr)
        tensors[name] = t
    return tensors, aliases


def _optimizer_payload(optimizers: Sequence[Optimizer]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Optimizer state tensors flattened to ``opt{i}.state.{param}.{name}``, the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    described = []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for param_id, state in sd["state"].items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"opt{i}.state.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(str(param_id), {})[name] = value
        groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
        described.append({"type": type(opt).__name__, "param_groups": groups, "scalars": scalars})
    return tensors, described


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_safetensors(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file missing")
    check_regular_file(path, what="checkpoint file", error=CheckpointError)  # a FIFO would block safe_open
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # keys(): the handle is not iterable
    except Exception as exc:  # safetensors has its own error type for broken files
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: corrupted checkpoint file ({first})") from None


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


# -- weights alone (snapshots) ---------------------------------------------------------------


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's weights alone as one safetensors file, written atomically (a snapshot)."""
    tensors, aliases = _model_tensors(model)
    atomic_write_bytes(Path(path), safetensors_bytes(tensors, {"aliases": json.dumps(aliases)}))


def load_weights(path: Path, model: nn.Module, map_location: str | torch.device = "cpu") -> None:
    """Load a weights file (a snapshot or a checkpoint's model file); the model is untouched unless
    the whole file reads and matches it."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path, str(map_location))
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupted checkpoint file (bad aliases metadata)") from None
    model.load_state_dict(_check_model_match(path, model, tensors, aliases), strict=True)


# -- saving ---------------------------------------------------------------------------------


def _step_of(folder: Path) -> int | None:
    m = _STEP_DIR.match(folder.name)
    return int(m.group(1)) if m else None


def checkpoint_path(run: RunDir, step: int) -> Path:
    """Where the checkpoint of ``step`` is (or would be) written: ``checkpoints/step_XXXXXXXX``."""
    return run.checkpoints_dir / f"step_{step:08d}"


def save_checkpoint(
    run: RunDir,
    *,
    model: nn.Module,
    optimizers: Sequence[Optimizer],
    step: int,
    rng: dict,
    extra: dict | None = None,
    keep: int = 3,
) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically, point ``latest`` at it, keep the newest ``keep``.

    ``rng`` is what :func:`capture_rng` returns; ``keep <= 0`` keeps every checkpoint. A failed
    write (e.g. a full disk) raises CheckpointError and leaves the older checkpoints untouched.
    """
    final = checkpoint_path(run, step)
    config = _run_config(run)  # before the slow part: a run folder without its config.toml fails at once
    model_tensors, aliases = _model_tensors(model)
    opt_tensors, opt_described = _optimizer_payload(optimizers)
    state = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "optimizers": opt_described,
        "rng": encode_rng(rng),
        "config": config,
        "extra": dict(extra or {}),
    }
    try:
        state_text = json.dumps(state, indent=1)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{final}: checkpoint state is not JSON-serialisable ({exc})") from None

    def write_files(folder: Path) -> None:  # each file's bytes are made just before it is written
        _write_file(folder / MODEL_FILE, safetensors_bytes(model_tensors, {"aliases": json.dumps(aliases)}))
        _write_file(folder / OPTIMIZER_FILE, safetensors_bytes(opt_tensors, {"optimizers": str(len(optimizers))}))
        _write_file(folder / STATE_FILE, state_text.encode("utf-8"))

    _publish(final, write_files)
    _prune(run.checkpoints_dir, keep, current=final)
    return final


def _run_config(run: RunDir) -> dict[str, Any]:
    """The run's config.toml as a mapping, stored in each checkpoint's state.json."""
    text = read_text(run.config_path, what="run config", error=CheckpointError)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{run.config_path}: cannot read the run config ({exc})") from None


def _publish(final: Path, write_files: Callable[[Path], None]) -> None:
    """Make the folder ``final`` with ``write_files(folder)`` and point ``latest`` at it, atomically.

    The files go into ``.tmp-<name>`` first, fsynced, which is then renamed into place (replacing
    an earlier save of the same step); any OSError removes the temporary folder and raises
    CheckpointError, so a crash or a full disk leaves the previous checkpoint as it was.
    """
    root, name = final.parent, final.name
    tmp = root / f".tmp-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_files(tmp)
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. stop right after an eval): replace it
            trash = root / f".old-{name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
        fsync_dir(root)
        atomic_write_text(root / LATEST_FILE, name + "\n")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{final}: cannot write checkpoint ({exc.strerror or exc})") from None


def _prune(root: Path, keep: int, current: Path) -> None:
    """Delete all but the newest ``keep`` step folders and leftovers of interrupted saves."""
    for leftover in list(root.glob(".tmp-step_*")) + list(root.glob(".old-step_*")):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep <= 0:
        return
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of)
    for old in folders[:-keep]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


# -- finding and loading --------------------------------------------------------------------


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder has all three files and their headers parse."""
    try:
        json.loads(read_bytes(folder / STATE_FILE, what="checkpoint state", error=CheckpointError))
        for fname in (MODEL_FILE, OPTIMIZER_FILE):
            check_regular_file(folder / fname, what="checkpoint file", error=CheckpointError)
            with safe_open(str(folder / fname), framework="pt", device="cpu") as f:
                f.keys()
    except Exception:  # any unreadable piece means "not usable", never an error here
        return False
    return True


def list_checkpoints(run: RunDir) -> list[Path]:
    """Step folders present (complete or not), oldest first."""
    if not run.checkpoints_dir.is_dir():
        return []
    folders = [p for p in run.checkpoints_dir.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(folders, key=_step_of)


def read_latest(run: RunDir) -> str | None:
    """What ``checkpoints/latest`` says (stripped), None when there is no such file; raises
    CheckpointError when it is not a small regular text file."""
    path = run.checkpoints_dir / LATEST_FILE
    if not os.path.lexists(path):
        return None
    return read_text(path, what="latest checkpoint pointer", max_bytes=4096, error=CheckpointError).strip()


def latest_checkpoint(run: RunDir) -> Path | None:
    """The folder named by ``latest`` if it is complete, else the newest complete folder, else None."""
    try:
        name = read_latest(run) or ""
    except CheckpointError:
        name = ""
    if _STEP_DIR.match(name) and is_complete(run.checkpoints_dir / name):
        return run.checkpoints_dir / name
    for folder in reversed(list_checkpoints(run)):
        if is_complete(folder):
            return folder
    return None


def unusable_checkpoints_error(run: RunDir) -> CheckpointError | None:
    """An error naming what is wrong when the run has step folders but none is complete.

    Resuming must then stop rather than start over (which would also clear the metrics), and
    probing must say "corrupted", not "not trained yet"."""
    folders = list_checkpoints(run)
    if not folders or latest_checkpoint(run) is not None:
        return None
    return CheckpointError(
        f"{_diagnose(folders[-1])}; no complete checkpoint is left in {run.checkpoints_dir} — "
        "restore it from a backup or delete the step folders to start the run over"
    )


def _diagnose(folder: Path) -> str:
    state = folder / STATE_FILE
    if not os.path.lexists(state):
        return f"{state}: checkpoint file missing"
    try:
        json.loads(read_bytes(state, what="checkpoint state", error=CheckpointError))
    except CheckpointError as exc:
        return str(exc)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"{state}: corrupted checkpoint file ({_first_line(exc)})"
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        path = folder / name
        if not os.path.lexists(path):
            return f"{path}: checkpoint file missing"
        try:
            check_regular_file(path, what="checkpoint file", error=CheckpointError)
            with safe_open(str(path), framework="pt", device="cpu") as f:
                f.keys()
        except CheckpointError as exc:
            return str(exc)
        except Exception as exc:  # safetensors has its own error type for broken files
            return f"{path}: corrupted checkpoint file ({_first_line(exc)})"
    return f"{folder}: unreadable checkpoint"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _short(value: Any) -> str:
    """A value for a message: its repr, cut (a hostile file may hold a huge string)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# extra's fields: what each must be (None is allowed for all but elapsed_s and tokens_seen).
_EXTRA_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "elapsed_s": ("a number of seconds >= 0", lambda v: _is_number(v) and v >= 0),
    "tokens_seen": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "val_loss": ("a number or null", lambda v: v is None or _is_number(v)),
    "grad_scaler": ("a table or null", lambda v: v is None or isinstance(v, dict)),
    "ranks": ("a table or null", lambda v: v is None or isinstance(v, dict)),
    "compile_warning": ("a string", lambda v: isinstance(v, str)),
    "lr_extension": ("a table or null", lambda v: v is None or isinstance(v, dict)),
}


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's state.json, read bounded and checked field by field against itself and its
    folder's name (``step_00000500`` must hold step 500): one line naming the file and the field
    when anything is off, so a resume never acts on a value it cannot trust."""
    state_path = Path(folder) / STATE_FILE
    if not os.path.lexists(state_path):
        raise CheckpointError(f"{state_path}: checkpoint file missing")
    data = read_bytes(state_path, what="checkpoint state", max_bytes=SMALL_FILE_LIMIT, error=CheckpointError)
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{state_path}: corrupted checkpoint file ({_first_line(exc)[:200]})") from None

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{state_path}: corrupted checkpoint file ({what})")

    if not isinstance(state, dict):
        raise bad(f"expected a JSON object, found {type(state).__name__}")
    version = state.get("format_version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: unsupported checkpoint format_version {_short(version)}")
    step = state.get("step")
    if not _is_int(step) or step < 0:
        raise bad(f"step is {_short(step)}, not a whole number >= 0")
    named = _step_of(Path(folder))
    if named is not None and named != step:
        raise bad(f"step is {step} but the folder is {Path(folder).name}")
    optimizers = state.get("optimizers")
    if not isinstance(optimizers, list) or not all(
        isinstance(o, dict) and isinstance(o.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in o["param_groups"])
        and isinstance(o.get("scalars", {}), dict) and all(isinstance(v, dict) for v in o.get("scalars", {}).values())
        for o in optimizers
    ):
        raise bad("optimizers is not a list of optimizer descriptions")
    if not isinstance(state.get("rng"), dict):
        raise bad(f"rng is {_short(state.get('rng'))}, not a table")
    if not isinstance(state.get("config", {}), dict):
        raise bad(f"config is {_short(state.get('config'))}, not a table")
    extra = state.get("extra", {})
    if not isinstance(extra, dict):
        raise bad(f"extra is {_short(extra)}, not a table")
    for key, (wanted, ok) in _EXTRA_FIELDS.items():
        if key in extra and not ok(extra[key]):
            raise bad(f"extra.{key} is {_short(extra[key])}, not {wanted}")
    state["extra"] = extra
    return state


def _check_model_match(path: Path, model: nn.Module, tensors: dict, aliases: dict) -> dict[str, torch.Tensor]:
    """Build the full state dict from the file, or say exactly which tensor does not fit."""
    expected = model.state_dict()
    full: dict[str, torch.Tensor] = {}
    for name, target in expected.items():
        source = name if name in tensors else aliases.get(name)
        if source not in tensors:
            raise CheckpointError(f"{path}: checkpoint does not match the model: {name} is missing from the file")
        value = tensors[source]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{path}: checkpoint does not match the model: {name} has shape {_shape(value)} "
                f"in the file but {_shape(target)} in the model"
            )
        full[name] = value
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: checkpoint does not match the model: the file has {extra[0]}, the model does not")
    return full


def _optimizer_state_dicts(path: Path, optimizers: Sequence[Optimizer], described: list, tensors: dict) -> list:
    if len(described) != len(optimizers):
        raise CheckpointError(
            f"{path}: checkpoint has {len(described)} optimizer(s) but training uses {len(optimizers)}; "
            "was train.optimizer changed?"
        )
    result = []
    for i, (opt, desc) in enumerate(zip(optimizers, described)):
        state: dict[int, dict[str, Any]] = {}
        prefix = f"opt{i}.state."
        for key, value in tensors.items():
            if key.startswith(prefix):
                param_id, name = key[len(prefix):].split(".", 1)
                state.setdefault(int(param_id), {})[name] = value
        for param_id, values in desc.get("scalars", {}).items():
            state.setdefault(int(param_id), {}).update(values)
        saved_groups = desc["param_groups"]
        sizes = [len(g["params"]) for g in saved_groups]
        if sizes != [len(g["params"]) for g in opt.param_groups]:
            raise CheckpointError(
                f"{path}: optimizer {i} parameter groups hold {sizes} tensors in the file "
                f"but {[len(g['params']) for g in opt.param_groups]} in training"
            )
        # JSON turned tuples (betas) into lists; give back the type the optimizer uses.
        groups = [
            {k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
            for saved, current in zip(saved_groups, opt.param_groups)
        ]
        result.append({"state": state, "param_groups": groups})
    return result


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizers: Sequence[Optimizer] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load weights (and optimizer state) into the given objects; return state.json with ``rng`` decoded.

    Nothing is modified unless the whole checkpoint reads and matches the model.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found")
    state_path = path / STATE_FILE
    state = read_state(path)
    device = str(map_location)
    tensors, metadata = _read_safetensors(path / MODEL_FILE, device)
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path / MODEL_FILE}: corrupted checkpoint file (bad aliases metadata)") from None
    model_state = _check_model_match(path, model, tensors, aliases)
    opt_states = []
    if optimizers is not None:
        opt_tensors, _ = _read_safetensors(path / OPTIMIZER_FILE, device)
        opt_states = _optimizer_state_dicts(path, optimizers, state["optimizers"], opt_tensors)
    try:
        rng = decode_rng(state["rng"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{state_path}: corrupted checkpoint file (bad rng: {exc})") from None
    model.load_state_dict(model_state, strict=True)
    for i, (opt, sd) in enumerate(zip(optimizers or (), opt_states)):
        try:
            opt.load_state_dict(sd)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: optimizer {i} state does not match the model ({exc})") from None
    state["rng"] = rng
    return state
