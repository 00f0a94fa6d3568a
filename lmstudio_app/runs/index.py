"""The runs index: every run folder the user has, each read back as a :class:`RunSummary`.

A run's *name* is the user's (``run.json`` in its folder, written atomically; a readable default
from the corpus and the model otherwise, e.g. ``"demo corpus · gpt 4×128"``). Its *status* is read
from the folder alone, so the index survives a crash of the app and of the trainer:

- ``running``: its ``.lock`` is held by a live process (see :mod:`.lock`);
- ``finished`` / ``stopped`` / ``failed``: what the trainer recorded in ``outcome.json`` when
  :meth:`Trainer.steps` ended (:func:`record_outcome`), with the reason;
- a process killed mid-training records nothing: its last logged step is before ``max_steps``
  and newer than any recorded outcome, so it reads as ``stopped`` with that step (a run killed
  after its last step reads as ``finished``).

:class:`RunsIndex` scans the runs folder from the settings plus the folders the user added (each
either a run folder or a folder of runs). Run folders are untrusted: every file is read bounded
(:mod:`lmstudio_app.file_reads`), a folder deleted by hand while it is scanned is left out, and a
corrupted one (an unreadable config.toml or run.json, a FIFO for a log) is skipped with a
one-line message in :attr:`RunsIndex.problems` instead of failing the whole listing.

Readers never take the run's lock; telling whether a live process holds it takes a shared lock
for an instant, and only when the pid in the lock file is alive.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text
from ..errors import CheckpointError, LMStudioError
from ..file_reads import SMALL_FILE_LIMIT, open_regular, read_bytes, read_text
from .folder import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    JSON_LINES_LIMIT,
    METRICS_FILE,
    RunDir,
    metrics_record_problem,
)
from .location import add_folder, added_folders, remove_folder, runs_folder, set_runs_folder
from .lock import LOCK_FILE, _pid_alive

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"  # the user's name for the run
OUTCOME_FILE = "outcome.json"  # how its training last ended, written by the trainer
# checkpoints.py's names, repeated: importing it would pull in torch (see _latest_checkpoint)
LATEST_FILE, STATE_FILE, MODEL_FILE = "latest", "state.json", "model.safetensors"
_STEP_DIR = re.compile(r"step_(\d+)")
NAME_CHARS = 200  # a name is a label, not a document
__all__ = ["RunSummary", "RunsIndex", "add_folder", "added_folders", "config_diff", "read_summary",
           "record_outcome", "remove_folder", "runs_folder", "set_run_name", "set_runs_folder"]
STATUSES = ("running", "finished", "stopped", "failed")


@dataclass
class RunSummary:
    """What one run folder says about its run (see the module docstring)."""

    path: Path
    name: str
    status: str  # one of STATUSES
    reason: str  # why it has that status, one line
    corpus_files: list[str]
    tokenizer: str  # "bpe (vocab_size 512)"
    model: str  # "gpt 4×128"
    parameters: int | None  # counted from the latest checkpoint's weights, None before the first
    step: int  # the last logged step
    max_steps: int | None
    tokens_seen: int | None
    best_val_loss: float | None
    final_val_loss: float | None
    best_val_bpb: float | None  # bits per UTF-8 byte, where the run records it
    final_val_bpb: float | None
    wall_time_s: float | None  # training time, pauses excluded (the last record's elapsed_s)
    device: str
    named: bool = False  # whether the name is the user's (else the default)
    created: float = 0.0  # the config's modification time, to sort by
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # config.toml, for a diff

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data.pop("config")
        return data


# -- run.json (the name) and outcome.json (how training last ended) ---------------------------
# Two files, one writer each (the user renames, the trainer holding the lock records its end):
# a rename at the moment a run ends cannot lose either.


def _read_run_file(path: Path, name: str = RUN_FILE) -> dict[str, Any]:
    """run.json (or outcome.json) as a mapping, {} when missing; CheckpointError when unreadable."""
    file = path / name
    if not os.path.lexists(file):
        return {}
    text = read_text(file, what="run info", max_bytes=SMALL_FILE_LIMIT, error=CheckpointError)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file}: corrupted run info ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: corrupted run info (expected a JSON object, found {type(data).__name__})")
    return data


def _write_run_file(path: Path, data: dict[str, Any], name: str = RUN_FILE) -> None:
    try:
        atomic_write_text(path / name, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise CheckpointError(f"{path / name}: cannot write run info ({exc.strerror or exc})") from None


def set_run_name(run_path: str | Path, name: str) -> None:
    """Store the user's name for a run in its run.json ("" goes back to the default name)."""
    path = Path(run_path)
    RunDir.open(path)  # one line naming a missing or non-run folder
    name = " ".join(name.split())  # one line: a name with a newline would break every table
    if len(name) > NAME_CHARS:
        raise CheckpointError(f"{path}: a run name has at most {NAME_CHARS} characters, got {len(name)}")
    try:
        data = _read_run_file(path)
    except CheckpointError:
        data = {}  # a corrupted run.json holds nothing worth keeping: the rename repairs it
    if name:
        data["name"] = name
    else:
        data.pop("name", None)
    _write_run_file(path, data)


def record_outcome(run: RunDir | Path | None, stop_reason: str | None, step: int,
                   error: BaseException | None = None, device: str | None = None) -> None:
    """Note in outcome.json how training ended (the trainer calls it when ``steps()`` ends) and
    on which device (``train.device`` may say only "auto").

    ``stop_reason`` is the trainer's: "finished", "stopped" or "error" (then ``error`` gives the
    reason; called in a ``finally`` without it, the exception in flight is taken). Never raises: a
    full disk must not hide the error that ended the run."""
    if run is None:
        return
    if error is None:
        error = sys.exc_info()[1]
    path = run.path if isinstance(run, RunDir) else Path(run)
    if stop_reason == "finished":
        status, reason = "finished", f"finished at step {step}"
    elif stop_reason == "error" and not isinstance(error, (KeyboardInterrupt, GeneratorExit)):
        first = (str(error).strip().splitlines() or [""])[0] if error is not None else ""
        kind = type(error).__name__ if error is not None else "error"
        status, reason = "failed", f"failed at step {step}: {first[:300] or kind}"
    else:
        status, reason = "stopped", f"stopped at step {step}"
    outcome: dict[str, Any] = {"status": status, "reason": reason, "step": step}
    if device:
        outcome["device"] = device
    try:
        _write_run_file(path, outcome, OUTCOME_FILE)
    except Exception:
        pass


# -- is a process training in it? -------------------------------------------------------------


def _lock_held(path: Path) -> bool:
    """Whether a live process holds the run's lock (see the module docstring)."""
    lock = path / LOCK_FILE
    try:
        words = read_text(lock, what="run lock", max_bytes=4096, error=CheckpointError).split()
    except (CheckpointError, OSError):
        return False  # no lock file (never trained) or not a readable one: nobody trains here
    if not words or not words[0].isdigit():
        return False
    same_host = len(words) < 2 or words[1] == socket.gethostname()
    if same_host and not _pid_alive(int(words[0])):
        return False  # a stale pid: the OS released the lock with the process (kill -9 included)
    if fcntl is None:  # pragma: no cover - Windows: the pid alone tells
        return True
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a trainer holds LOCK_EX
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the shared lock at once
    return False


# -- one run folder ---------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _plugin_text(section: Any, keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(section, dict):
        return "?", {}
    plugin = section.get("plugin")
    params = {k: v for k, v in section.items() if k != "plugin"}
    if isinstance(section.get("params"), dict):  # either layout: flat keys or a [x.params] table
        params.update(section["params"])
    shown = ", ".join(f"{k} {params[k]}" for k in keys if k in params and not isinstance(params[k], (dict, list)))
    name = str(plugin) if isinstance(plugin, str) else "?"
    return (f"{name} ({shown})" if shown else name), params


def _model_text(section: Any) -> str:
    plugin, params = _plugin_text(section, ())
    layers, width = params.get("n_layer"), params.get("n_embd", params.get("d_model"))
    if isinstance(layers, int) and isinstance(width, int):
        return f"{plugin} {layers}×{width}"
    return plugin


def _corpus_text(files: list[str]) -> str:
    if not files:
        return "demo corpus"
    first = Path(files[0]).stem or Path(files[0]).name
    return first if len(files) == 1 else f"{first} +{len(files) - 1}"


def default_name(config: dict[str, Any]) -> str:
    """``"<corpus> · <model>"`` from a config.toml mapping, e.g. ``"demo corpus · gpt 4×128"``."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    files = [f for f in data.get("files", []) if isinstance(f, str)] if isinstance(data.get("files"), list) else []
    return f"{_corpus_text(files)} · {_model_text(config.get('model'))}"


def safetensors_header(file: Path) -> dict[str, Any] | None:
    """A model.safetensors' JSON header (tensor name -> dtype, shape, offsets), read without its
    tensors and without importing torch; None when the file is not a readable checkpoint."""
    try:
        fd, _size = open_regular(file, what="checkpoint weights", error=CheckpointError)
    except LMStudioError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            size = struct.unpack("<Q", fh.read(8))[0]
            if size > SMALL_FILE_LIMIT:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def tensor_values(header: dict[str, Any], skip: Callable[[str], bool] | None = None) -> int:
    """The number of values of the tensors a safetensors header lists (those ``skip`` names left out)."""
    total = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, dict) or (skip is not None and skip(key)):
            continue
        shape = entry.get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            total += math.prod(shape)
    return total


def _count_parameters(folder: Path) -> int | None:
    """The number of values in a checkpoint's model.safetensors, from its header alone."""
    header = safetensors_header(folder / MODEL_FILE)
    return tensor_values(header) if header is not None else None


def _read_state_extra(folder: Path) -> dict[str, Any] | None:
    """A checkpoint's state.json ``extra`` (None when it is not a readable checkpoint state)."""
    try:
        state = json.loads(read_text(folder / STATE_FILE, what="checkpoint state", max_bytes=SMALL_FILE_LIMIT,
                                     error=CheckpointError))
    except (LMStudioError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("step") != _step_of(folder.name):
        return None
    extra = state.get("extra")
    return extra if isinstance(extra, dict) else {}


def _step_of(name: str) -> int | None:
    match = _STEP_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def _latest_checkpoint(run: RunDir) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``latest`` names, else the newest one with a readable state, and its
    ``extra``; checked by hand instead of through :mod:`.checkpoints`, which needs torch (the
    listing must stay fast to start)."""
    root = run.checkpoints_dir
    try:
        named = read_text(root / LATEST_FILE, what="latest checkpoint pointer", max_bytes=4096,
                          error=CheckpointError).strip()
    except (LMStudioError, OSError):
        named = ""
    try:
        folders = sorted((p for p in root.iterdir() if _step_of(p.name) is not None),
                         key=lambda p: _step_of(p.name) or 0, reverse=True)
    except OSError:
        return None
    if _step_of(named) is not None:
        folders.insert(0, root / named)
    for folder in folders:
        extra = _read_state_extra(folder)
        if extra is not None and os.path.isfile(folder / MODEL_FILE):
            return folder, extra
    return None


@dataclass(frozen=True)
class _MetricsDigest:
    """What a summary needs from metrics.jsonl: the last record and the validation losses."""

    last: dict[str, Any]
    val_loss: tuple[float, ...]
    val_bpb: tuple[float, ...]


_DIGESTS: dict[tuple[str, int, int, int], _MetricsDigest] = {}  # (path, inode, size, mtime): a log read once
_DIGESTS_KEPT = 4096


def _valid(line: bytes) -> dict[str, Any] | None:
    """One metrics line as a record, by the rules of ``JsonLines.read``; None if it is not one."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or metrics_record_problem(record):
        return None
    return record


def _metrics_digest(run: RunDir) -> _MetricsDigest:
    """Read metrics.jsonl bounded, parsing only its evaluation lines and its last record (a long
    run's log holds thousands of lines; the index reads every run's), cached while the file is
    unchanged."""
    path = run.metrics_path
    if not os.path.lexists(path):
        return _MetricsDigest({}, (), ())
    try:
        st = os.stat(path)
        key = (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _DIGESTS:
        return _DIGESTS[key]
    lines = read_bytes(path, what="metrics log", max_bytes=JSON_LINES_LIMIT, error=CheckpointError).splitlines()
    val: list[float] = []
    bpb: list[float] = []
    for line in lines:
        if b'"val_' not in line:
            continue
        record = _valid(line)
        if record is not None:
            for name, values in (("val_loss", val), ("val_bpb", bpb)):
                value = _number(record.get(name))
                if value is not None:
                    values.append(value)
    last: dict[str, Any] = {}
    for line in reversed(lines):
        record = _valid(line) if line.strip() else None
        if record is not None:
            last = record
            break
    digest = _MetricsDigest(last, tuple(val), tuple(bpb))
    if key is not None:
        if len(_DIGESTS) >= _DIGESTS_KEPT:
            _DIGESTS.clear()
        _DIGESTS[key] = digest
    return digest


def read_summary(run_path: str | Path) -> RunSummary:
    """One run folder's summary; CheckpointError (one line naming the file) when it cannot be read."""
    path = Path(run_path)
    run = RunDir.open(path)
    text = read_text(run.config_path, what="run config", max_bytes=SMALL_FILE_LIMIT, error=CheckpointError)
    try:
        config = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{run.config_path}: corrupted run config ({str(exc).splitlines()[0][:120]})") from None
    info = _read_run_file(path)
    try:
        outcome = _read_run_file(path, OUTCOME_FILE)
    except CheckpointError:
        outcome = {}  # only the trainer writes it, atomically: treat a damaged one as none
    metrics = _metrics_digest(run)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    files = [f for f in data.get("files", []) if isinstance(f, str)] if isinstance(data.get("files"), list) else []

    last = metrics.last
    step = int(last.get("step", 0))
    latest = _latest_checkpoint(run) if run.checkpoints_dir.is_dir() else None
    checkpoint, state_extra = latest if latest is not None else (None, {})
    if checkpoint is not None:
        step = max(step, _step_of(checkpoint.name) or 0)
    max_steps = last.get("max_steps", train.get("max_steps"))
    max_steps = max_steps if isinstance(max_steps, int) and not isinstance(max_steps, bool) else None
    val, bpb = metrics.val_loss, metrics.val_bpb
    tokens = last.get("tokens_seen", state_extra.get("tokens_seen"))
    wall = _number(last.get("elapsed_s", state_extra.get("elapsed_s")))

    status, reason = _status(path, outcome, step, max_steps)
    # The device the trainer used (recorded at its end); the config may say only "auto".
    device = outcome.get("device") if isinstance(outcome.get("device"), str) else str(train.get("device", "auto"))
    name = info.get("name") if isinstance(info.get("name"), str) and info.get("name") else None
    try:
        created = run.config_path.stat().st_mtime
    except OSError:
        created = 0.0
    return RunSummary(
        path=path, name=name or default_name(config), named=name is not None, status=status, reason=reason,
        corpus_files=files, tokenizer=_plugin_text(config.get("tokenizer"), ("vocab_size",))[0],
        model=_model_text(config.get("model")),
        parameters=_count_parameters(checkpoint) if checkpoint is not None else None,
        step=step, max_steps=max_steps,
        tokens_seen=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
        best_val_loss=min(val) if val else None, final_val_loss=val[-1] if val else None,
        best_val_bpb=min(bpb) if bpb else None, final_val_bpb=bpb[-1] if bpb else None,
        wall_time_s=wall, device=device, created=created, config=config,
    )


def _status(path: Path, outcome: dict[str, Any], step: int, max_steps: int | None) -> tuple[str, str]:
    if _lock_held(path):
        of = f" of {max_steps}" if max_steps else ""
        return "running", f"training, step {step}{of}"
    if outcome.get("status") in STATUSES[1:] and outcome.get("step") == step:
        return str(outcome["status"]), str(outcome.get("reason") or outcome["status"])
    # No outcome for this step: the process ended without reaching the end of steps() (killed).
    if max_steps is not None and step >= max_steps:
        return "finished", f"finished at step {step}"
    if step == 0:
        return "stopped", "not trained yet (no step logged)"
    of = f" of {max_steps}" if max_steps else ""
    return "stopped", f"stopped at step {step}{of} (the process ended without finishing: killed or crashed)"


# -- the index --------------------------------------------------------------------------------


def _looks_like_run(path: Path) -> bool:
    return any(os.path.lexists(path / name) for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR))


class RunsIndex:
    """The runs in some folders, read again on each :meth:`refresh` (nothing is cached on disk,
    so there is nothing for a crash to corrupt)."""

    def __init__(self, folders: Iterable[str | Path] | None = None) -> None:
        self.folders = [Path(f) for f in folders] if folders is not None else [runs_folder(), *added_folders()]
        self.runs: list[RunSummary] = []
        self.problems: list[str] = []  # one line per folder skipped
        self.refresh()

    def refresh(self) -> list[RunSummary]:
        runs: dict[Path, RunSummary] = {}
        self.problems = []
        for folder in self.folders:
            for candidate in self._candidates(folder):
                key = candidate.absolute()
                if key in runs:
                    continue
                try:
                    runs[key] = read_summary(candidate)
                except FileNotFoundError:
                    continue  # deleted while it was read
                except LMStudioError as exc:
                    if candidate.exists():  # else deleted by hand meanwhile: simply gone
                        self.problems.append(f"skipped {exc}")
                except (OSError, ValueError, TypeError) as exc:
                    self.problems.append(f"skipped {candidate}: unreadable run folder ({exc})")
        self.runs = sorted(runs.values(), key=lambda r: (r.created, str(r.path)), reverse=True)
        return self.runs

    def _candidates(self, folder: Path) -> list[Path]:
        if (folder / CONFIG_FILE).exists() or os.path.lexists(folder / CONFIG_FILE):
            return [folder]  # an added run folder
        try:
            entries = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except FileNotFoundError:
            if folder != runs_folder():  # the default folder simply does not exist before the first run
                self.problems.append(f"{folder}: folder not found")
            return []
        except OSError as exc:
            self.problems.append(f"{folder}: cannot list the folder ({exc.strerror or exc})")
            return []
        found = []
        for entry in entries:
            if os.path.lexists(entry / CONFIG_FILE):
                found.append(entry)
            elif _looks_like_run(entry):  # half-written: created but never got its config
                self.problems.append(f"skipped {entry}: not a complete run folder (no {CONFIG_FILE})")
        return found

    def find(self, key: str) -> RunSummary:
        """A run by its folder path, folder name or name (exactly one); CheckpointError otherwise."""
        path = Path(key).expanduser()
        if (path / CONFIG_FILE).exists():
            return read_summary(path)
        matches = [r for r in self.runs if key in (r.path.name, r.name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CheckpointError(f"{key}: no such run (give a run folder, or a name from `lmstudio runs`)")
        raise CheckpointError(f"{key}: {len(matches)} runs have this name; give the run folder instead")

    def rename(self, key: str, name: str) -> RunSummary:
        run = self.find(key)
        set_run_name(run.path, name)
        self.refresh()
        return read_summary(run.path)

    def delete(self, key: str) -> Path:
        """Delete a run's folder (refused while it trains); returns the path deleted."""
        run = self.find(key)
        if _lock_held(run.path):
            raise CheckpointError(f"{run.path}: the run is training; stop it before deleting it")
        try:
            shutil.rmtree(run.path)
        except OSError as exc:
            raise CheckpointError(f"{run.path}: cannot delete the run folder ({exc.strerror or exc})") from None
        self.refresh()
        return run.path


# -- compare ----------------------------------------------------------------------------------


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_MISSING = object()


def config_diff(configs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """``section.key`` -> each run's value, for the keys whose values differ (None where absent)."""
    flats = [_flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    diff = {}
    for key in keys:
        values = [f.get(key, _MISSING) for f in flats]
        if any(v != values[0] for v in values[1:]):
            diff[key] = [None if v is _MISSING else v for v in values]
    return diff
