"""Sweeps: one config trained at every point of a grid of values, each point a normal run.

- :func:`parse_grid` reads ``section.key=v1,v2,...`` (values as ``--set`` reads them: TOML if it
  parses, else text; a value cannot itself hold a comma). Several grids make their product;
  :func:`expand` with ``random_picks=N`` keeps N of those points, drawn with a fixed seed.
- :class:`Sweep` owns a sweep folder: ``sweep.json`` (written atomically after every change) lists
  the grids, the base config and each point's values and run folder (``point-001``, ...). The
  points train one after another, or with ``run(parallel=K)`` up to K at once, each as its own
  ``python -m lmstudio_app train`` subprocess (only this process writes sweep.json; on a machine
  with few cores, 2 say, parallel points share the same cores and finish no sooner). Opening the folder again resumes: finished (and failed) points are skipped, a
  stopped or killed one is resumed from its last checkpoint (restarted in a fresh folder if it had
  none), the rest start. A point whose training fails (a nan loss at a high learning rate, say) is
  recorded as failed and the sweep goes on.
- :meth:`Sweep.results` reads each point's run folder back through the runs index
  (``runs/index.py``): final and best validation loss, bits per byte, steps, wall time.
Qt-free; ``lmstudio sweep`` (cli/sweep.py) drives it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic_files import atomic_write_text
from ..config import RunConfig, apply_overrides, config_from_dict, parse_override
from ..errors import CheckpointError, ConfigError, LMStudioError, shown
from ..file_reads import read_text
from ..runs.folder import CONFIG_FILE
from ..runs.index import RunSummary, read_summary, set_run_name
from ..runs.lock import RunLock

if TYPE_CHECKING:
    from ..registry import PluginRegistry
    from .control import StepMetrics

__all__ = ["SWEEP_FILE", "PointResult", "Sweep", "expand", "parse_grid"]

SWEEP_FILE = "sweep.json"
VERSION = 1
_SIGINT = 2  # signal.SIGINT: a child trainer stops after its step, as on Ctrl-C
_EXIT_INTERRUPTED = 130  # what ``lmstudio train`` exits with when interrupted (cli/common.py)
MAX_POINTS = 1000  # a typo like 1e-3,... ×10 grids must not queue a year of training


def parse_grid(text: str) -> tuple[str, list[str]]:
    """``section.key=v1,v2`` → ("section.key", ["v1", "v2"]); ConfigError naming the grid otherwise."""
    if "=" not in text:
        raise ConfigError(f"--grid {shown(text)}: expected section.key=v1,v2,... e.g. train.learning_rate=1e-3,3e-3")
    try:
        section, key, raw = parse_override(text)  # checks the section.key part
    except ConfigError as exc:  # its message says --set: name the option the user typed
        raise ConfigError(str(exc).replace("--set", "--grid", 1)) from None
    values = [v.strip() for v in raw.split(",")]
    if not raw.strip() or any(not v for v in values):
        raise ConfigError(f"--grid {shown(text)}: empty value in the list (expected section.key=v1,v2,...)")
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {shown(text)}: a value is listed twice")
    return f"{section}.{key}", values


def expand(grids: Sequence[tuple[str, list[str]]], random_picks: int | None = None,
           seed: int = 0) -> list[dict[str, str]]:
    """Every combination of the grids' values (the first grid varies slowest), or ``random_picks`` of them."""
    keys = [key for key, _ in grids]
    if not keys:
        raise ConfigError("sweep: give at least one --grid section.key=v1,v2,...")
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError(f"--grid {twice}: given twice; list all its values in one --grid")
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grids))]
    if random_picks is not None:
        if random_picks < 1:
            raise ConfigError(f"sweep: --random must be at least 1, got {random_picks}")
        if random_picks < len(points):
            chosen = sorted(random.Random(seed).sample(range(len(points)), random_picks))
            points = [points[i] for i in chosen]
    if len(points) > MAX_POINTS:
        raise ConfigError(f"sweep: {len(points)} points is more than {MAX_POINTS}; use --random N or fewer values")
    return points


def point_config(base: dict[str, Any], values: dict[str, str], source: str) -> RunConfig:
    """The base config with a point's values (switching a plugin drops the old plugin's params)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    overrides = [f"{key}={value}" for key, value in values.items()]
    for text in overrides:
        section, key, value = parse_override(text)
        if key == "plugin" and section in ("tokenizer", "model") and value.strip("\"'") != raw[section]["plugin"]:
            raw[section] = {"plugin": raw[section]["plugin"]}
    return config_from_dict(apply_overrides(raw, overrides), source)


@dataclass
class PointResult:
    """One point of the sweep and what its run folder says (``summary`` None before it started)."""

    index: int
    values: dict[str, str]
    run: Path
    status: str  # pending, running, finished, stopped, failed
    reason: str
    summary: RunSummary | None

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"index": self.index, "values": self.values, "run": str(self.run), "status": self.status,
                "reason": self.reason, "steps": s.step if s else 0,
                "final_val_loss": s.final_val_loss if s else None, "best_val_loss": s.best_val_loss if s else None,
                "final_val_bpb": s.final_val_bpb if s else None, "wall_time_s": s.wall_time_s if s else None}


class Sweep:
    """A sweep folder (see the module docstring); :meth:`open_or_create` is the way in."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data
        self._stop = threading.Event()
        self._trainer: Any = None  # the point training now, to stop it from another thread
        self._lock = threading.Lock()
        self._name_later: list[tuple[Path, str]] = []  # parallel points to name once their child ends

    # -- the folder ------------------------------------------------------------------------------

    @classmethod
    def open_or_create(cls, folder: str | Path, config: RunConfig | None,
                       grids: Sequence[tuple[str, list[str]]] = (), random_picks: int | None = None,
                       seed: int = 0, check: Callable[[RunConfig], None] | None = None) -> Sweep:
        """Resume the sweep in ``folder`` (its grids must match, when given) or start one there.

        ``check(config)`` (e.g. the plugins' param checks) runs on every new point's config first."""
        folder = Path(folder)
        path = folder / SWEEP_FILE
        if path.exists():
            sweep = cls(folder, cls._read(path))
            if grids and [list(g) for g in sweep.data["grids"]] != [[k, list(v)] for k, v in grids]:
                raise ConfigError(f"{path}: this folder holds a sweep over other grids; give another --out "
                                  "(or no --grid to resume it)")
            if grids and sweep.data.get("random") != random_picks:
                raise ConfigError(f"{path}: this sweep was made with --random {sweep.data.get('random')}; "
                                  "give the same, or another --out")
            return sweep
        if config is None or not grids:
            raise ConfigError(f"{folder}: no {SWEEP_FILE} here; give a CONFIG and --grid to start a sweep")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise CheckpointError(f"{folder}: exists and is not an empty folder; give a new --out")
        points = expand(grids, random_picks, seed)
        base = config.to_dict()
        for values in points:  # every point's config checked before the first minute of training
            source = f"--grid {', '.join(f'{k}={v}' for k, v in values.items())}"
            point = point_config(base, values, source)
            if check is not None:
                try:
                    check(point)
                except LMStudioError as exc:
                    raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None
        data = {"version": VERSION, "grids": [[k, list(v)] for k, v in grids], "random": random_picks, "seed": seed,
                "base_config": base,
                "points": [{"values": values, "run": f"point-{i + 1:03d}", "status": "pending", "reason": ""}
                           for i, values in enumerate(points)]}
        folder.mkdir(parents=True, exist_ok=True)
        sweep = cls(folder, data)
        sweep._save()
        return sweep

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        text = read_text(path, what="sweep file", max_bytes=16 * 1024 * 1024, error=CheckpointError)
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{path}: corrupted sweep file ({str(exc)[:100]})") from None
        ok = (isinstance(data, dict) and data.get("version") == VERSION and isinstance(data.get("points"), list)
              and isinstance(data.get("grids"), list) and isinstance(data.get("base_config"), dict)
              and all(isinstance(p, dict) and isinstance(p.get("values"), dict) and isinstance(p.get("run"), str)
                      and "/" not in p["run"] and p["run"] not in ("", ".", "..") for p in data["points"]))
        if not ok:
            raise CheckpointError(f"{path}: not a sweep file this version can read")
        return data

    def _save(self) -> None:
        atomic_write_text(self.folder / SWEEP_FILE, json.dumps(self.data, indent=1, ensure_ascii=False) + "\n")

    # -- running -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the current step (safe from another thread); the point is kept to resume."""
        self._stop.set()
        with self._lock:
            if self._trainer is not None:
                self._trainer.control.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self, registry: PluginRegistry,
            on_point: Callable[[int, dict[str, str], str], None] | None = None,
            on_step: Callable[[int, StepMetrics], None] | None = None, parallel: int = 1) -> list[int]:
        """Train the points not done yet, in order; the indices of those trained (even partly) now.

        ``on_point(index, values, what)`` says "start", "resume", "skip", "done", "stopped" or
        "failed: <reason>"; ``on_step(index, metrics)`` gets each training report (in this
        process only: with ``parallel`` > 1 the points train in subprocesses and it is not called).
        """
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise ConfigError(f"--parallel: expected a whole number of points at once, 1 or more, got {parallel!r}")
        trained: list[int] = []
        lock = RunLock(self.folder)  # a second process on this sweep is refused, naming the first
        lock.acquire()
        try:
            if parallel > 1:
                return self._run_parallel(parallel, on_point)
            for index, point in enumerate(self.data["points"]):
                if self._stop.is_set():
                    break
                what = self._plan(point)
                if on_point is not None:
                    on_point(index, point["values"], what)
                if what == "skip":
                    continue
                trained.append(index)
                self._train_point(index, point, what == "resume", registry, on_step)
                if on_point is not None:
                    on_point(index, point["values"], point["status"] if point["status"] != "failed"
                             else f"failed: {point['reason']}")
        finally:
            lock.release()
        return trained

    def _run_parallel(self, parallel: int,
                      on_point: Callable[[int, dict[str, str], str], None] | None) -> list[int]:
        """Up to ``parallel`` points at once, each a ``python -m lmstudio_app train`` subprocess.

        Only this process writes sweep.json (atomically, after each start and end); a child's outcome
        is its run folder's status (finished, stopped) or, when it exits with an error, "failed" with
        its last stderr line. :meth:`stop` sends each child SIGINT: it stops after its step, resumable."""
        trained: list[int] = []
        running: dict[int, tuple[subprocess.Popen[bytes], Any]] = {}
        signalled: set[int] = set()
        pending = list(enumerate(self.data["points"]))
        try:
            while pending or running:
                while pending and len(running) < parallel and not self._stop.is_set():
                    index, point = pending.pop(0)
                    what = self._plan(point)
                    if on_point is not None:
                        on_point(index, point["values"], what)
                    if what == "skip":
                        continue
                    trained.append(index)
                    running[index] = self._spawn(index, point, what == "resume")
                if self._stop.is_set():
                    pending.clear()
                    for index, (child, _err) in running.items():
                        # Once only: a second SIGINT makes ``lmstudio train`` quit without its checkpoint.
                        if index not in signalled and child.poll() is None:
                            child.send_signal(_SIGINT)
                            signalled.add(index)
                for index, (child, err) in list(running.items()):
                    if child.poll() is None:
                        continue
                    del running[index]
                    self._finish_child(self.data["points"][index], child.returncode, err, index in signalled)
                    if on_point is not None:
                        point = self.data["points"][index]
                        on_point(index, point["values"], point["status"] if point["status"] != "failed"
                                 else f"failed: {point['reason']}")
                if running:
                    time.sleep(0.1)  # polling a few children; a wait on one would miss the others
        except BaseException:
            for index, (child, _err) in running.items():
                if index not in signalled and child.poll() is None:
                    child.send_signal(_SIGINT)
            for index, (child, err) in running.items():
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                point = self.data["points"][index]
                point["status"], point["reason"] = "stopped", "interrupted"
                err.close()
            self._save()
            raise
        return trained

    def _spawn(self, index: int, point: dict[str, Any], resume: bool) -> tuple[subprocess.Popen[bytes], Any]:
        path = self.folder / point["run"]
        command = [sys.executable, "-m", "lmstudio_app", "train"]
        if resume:
            command += ["--resume", str(path)]
        else:
            source = f"{self.folder / SWEEP_FILE} point {index + 1}"
            config_file = self.folder / f".{point['run']}.toml"  # the child's input; the run keeps its own copy
            atomic_write_text(config_file, point_config(self.data["base_config"], point["values"], source).to_toml())
            command += [str(config_file), "--out", str(path)]
        point["status"], point["reason"] = "running", ""
        self._save()
        err = open(self.folder / f".{point['run']}.stderr", "w+b")
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        if not resume:
            # A readable name in the runs index, as the in-process path gives (once config.toml exists).
            self._name_later.append((path, f"{self.folder.name} · " + ", ".join(
                f"{key.split('.')[-1]}={value}" for key, value in point["values"].items())))
        return child, err

    def _finish_child(self, point: dict[str, Any], returncode: int, err: Any, signalled: bool) -> None:
        err.seek(0)
        lines = [line for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
        err.close()
        path = self.folder / point["run"]
        for scratch in (self.folder / f".{point['run']}.toml", Path(err.name)):  # the run keeps its own config
            with contextlib.suppress(OSError):
                scratch.unlink()
        for named_path, name in list(self._name_later):
            if named_path == path:
                self._name_later.remove((named_path, name))
                with contextlib.suppress(LMStudioError, OSError):
                    set_run_name(path, name)
        summary = None
        with contextlib.suppress(LMStudioError):
            summary = read_summary(path) if (path / CONFIG_FILE).is_file() else None
        if returncode == 0 and summary is not None:
            point["status"] = "finished" if summary.status == "finished" else "stopped"
            point["reason"] = summary.reason
        elif signalled or returncode in (_EXIT_INTERRUPTED, -_SIGINT):  # stopped by us (maybe mid-import)
            point["status"], point["reason"] = "stopped", "interrupted"
        else:
            last = lines[-1] if lines else f"exit status {returncode}"
            point["status"], point["reason"] = "failed", last.removeprefix("lmstudio: error: ")[:300]
        self._save()

    def _plan(self, point: dict[str, Any]) -> str:
        """"skip" (finished or failed), "resume" (a checkpoint to go on from) or "start"."""
        from ..runs.checkpoints import latest_checkpoint
        from ..runs.folder import RunDir

        if point.get("status") == "failed":
            return "skip"
        path = self.folder / point["run"]
        if not (path / CONFIG_FILE).is_file():
            return "start"
        try:
            summary = read_summary(path)
        except LMStudioError:
            summary = None
        if summary is not None and summary.status == "finished":
            point["status"], point["reason"] = "finished", summary.reason
            self._save()
            return "skip"
        if latest_checkpoint(RunDir.open(path)) is not None:
            return "resume"
        # Killed before its first checkpoint: nothing to resume; start over in a fresh folder.
        point["run"] = self._fresh_name(point["run"])
        self._save()
        return "start"

    def _fresh_name(self, name: str) -> str:
        stem = name.split("~")[0]
        n = 2
        while (self.folder / f"{stem}~{n}").exists():
            n += 1
        return f"{stem}~{n}"

    def _train_point(self, index: int, point: dict[str, Any], resume: bool, registry: PluginRegistry,
                     on_step: Callable[[int, StepMetrics], None] | None) -> None:
        from .trainer import Trainer  # torch: only when training

        path = self.folder / point["run"]
        point["status"], point["reason"] = "running", ""
        self._save()
        try:
            if resume:
                trainer = Trainer(None, registry, path, resume=True)
            else:
                source = f"{self.folder / SWEEP_FILE} point {index + 1}"
                trainer = Trainer(point_config(self.data["base_config"], point["values"], source), registry, path)
                # A readable name in the runs index and panel (the user may rename it later).
                with contextlib.suppress(LMStudioError, OSError):
                    set_run_name(path, f"{self.folder.name} · " + ", ".join(
                        f"{key.split('.')[-1]}={value}" for key, value in point["values"].items()))
            with self._lock:
                self._trainer = trainer
                if self._stop.is_set():
                    trainer.control.stop()
            try:
                for metrics in trainer.steps():
                    if on_step is not None:
                        on_step(index, metrics)
            finally:
                with self._lock:
                    self._trainer = None
            point["status"] = "finished" if trainer.stop_reason == "finished" else "stopped"
            point["reason"] = f"{trainer.stop_reason} at step {trainer.step}"
        except CheckpointError as exc:  # the files, not the settings (a full disk, a locked run): stop, resumable
            point["status"], point["reason"] = "stopped", str(exc).splitlines()[0][:300]
            self._save()
            raise
        except LMStudioError as exc:  # this point's settings fail (nan loss, too big a model): go on
            point["status"], point["reason"] = "failed", str(exc).splitlines()[0][:300]
        except BaseException:
            point["status"], point["reason"] = "stopped", "interrupted"
            self._save()
            raise
        self._save()

    # -- results -----------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.data["grids"]]

    def results(self) -> list[PointResult]:
        """Each point with its run folder's summary (None where it has not started or is unreadable)."""
        out = []
        for index, point in enumerate(self.data["points"]):
            path = self.folder / point["run"]
            summary = None
            status, reason = str(point.get("status", "pending")), str(point.get("reason", ""))
            if (path / CONFIG_FILE).is_file():
                try:
                    summary = read_summary(path)
                except LMStudioError as exc:
                    reason = str(exc)
                else:
                    if status != "failed":
                        status, reason = summary.status, summary.reason
            out.append(PointResult(index, dict(point["values"]), path, status, reason, summary))
        return out
