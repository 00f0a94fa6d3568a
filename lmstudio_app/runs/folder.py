"""Run folders on disk.

A run is a folder holding everything needed to inspect, reproduce or continue a training run::

    config.toml       the full, validated RunConfig
    tokenizer.json    the tokenizer in the Hugging Face format
    metrics.jsonl     one JSON object per logged step
    checkpoints/      step_00000500/ ... (see checkpoints.py) and ``latest``

Every file that is replaced is written through :mod:`lmstudio_app.atomic_files`, so a crash or a
full disk leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text
from ..config import RunConfig, copy_config, load_config, save_config
from ..errors import CheckpointError
from ..settings import default_runs_dir
from ..tokenizer import Tokenizer

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
TIMELINE_FILE = "timeline.jsonl"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"

# What a resumed run may change: how long it trains, how often it reports, and where it runs.
# Everything else defines the run and comes from its config.toml.
RESUMABLE_TRAIN_KEYS = (
    "max_steps", "log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "sample_tokens",
    "device", "threads", "compile",
)


def new_run_path(base: str | Path | None = None, prefix: str = "run") -> Path:
    """A fresh folder name like ``<base>/run-20261129-201500`` (``-2``, ``-3``... if taken); not created."""
    if base is None:
        base = default_runs_dir()
    base = Path(base)
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate = base / stem
    n = 2
    while candidate.exists():
        candidate = base / f"{stem}-{n}"
        n += 1
    return candidate


class JsonLines:
    """An append-only log of JSON objects, one per line, each with a ``step``.

    A crash can tear only the last line: reading skips unparseable lines, and the first append
    after opening starts on a fresh line. Rewrites (truncating, thinning) are atomic.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # "metrics", "timeline": named in error messages
        self._checked = False  # whether a torn last line was looked for before appending

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if not self._checked:
            if self._ends_without_newline():
                line = "\n" + line
            self._checked = True
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
        except OSError as exc:  # e.g. a full disk: stop with the file named, not a traceback
            raise CheckpointError(f"{self.path}: cannot write {self.what} ({exc.strerror or exc})") from None

    def _ends_without_newline(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return False
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def read(self) -> list[dict[str, Any]]:
        """All records in order; lines torn by a crash (unparseable) are skipped."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read {self.what} ({exc.strerror or exc})") from None
        records = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        try:
            atomic_write_text(self.path, text)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot rewrite {self.what} ({exc.strerror or exc})") from None
        self._checked = True

    def truncate(self, after_step: int) -> None:
        """Drop the records of steps after ``after_step`` (a missing file stays missing)."""
        if not self.path.exists():
            return
        self.rewrite([r for r in self.read() if _step(r) <= after_step])


def _step(record: dict[str, Any]) -> int:
    try:
        return int(record.get("step", 0))
    except (TypeError, ValueError):
        return 0


class RunDir:
    """One run folder. Create it with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.tokenizer_path = self.path / TOKENIZER_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.metrics = JsonLines(self.metrics_path, "metrics")
        self.timeline_path = self.path / TIMELINE_FILE
        self.timeline = JsonLines(self.timeline_path, "timeline")  # the watched prompts' predictions

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def check_creatable(path: str | Path) -> None:
        """Raise CheckpointError if :meth:`create` would refuse ``path`` (call before slow work)."""
        path = Path(path)
        if not path.exists():
            return
        if not path.is_dir():
            raise CheckpointError(f"{path}: exists and is not a folder")
        if (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path}: already holds a run; use --resume to continue it or pick a new folder")
        if any(path.iterdir()):
            raise CheckpointError(f"{path}: folder is not empty and is not a run; pick an empty or new folder")

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, tokenizer: Tokenizer | None = None) -> RunDir:
        """Make a new run folder (missing or empty) holding ``config`` and, if given, the tokenizer."""
        cls.check_creatable(path)
        run = cls(path)
        existed = run.path.exists()
        try:
            run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            run.save_config(config)
            if tokenizer is not None:
                tokenizer.save(run.tokenizer_path)
            run.metrics_path.touch()
        except OSError as exc:
            # A half-made run would later be refused as "already a run": put the folder back as it was.
            shutil.rmtree(run.path, ignore_errors=True)
            if existed:
                run.path.mkdir(exist_ok=True)
            raise CheckpointError(f"{run.path}: cannot create the run folder ({exc.strerror or exc})") from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: run folder not found")
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a run folder (it is a file)")
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path}: not a run folder (no {CONFIG_FILE})")
        return cls(path)

    # -- config and tokenizer ---------------------------------------------------------------

    def load_config(self) -> RunConfig:
        return load_config(self.config_path)

    def save_config(self, config: RunConfig) -> None:
        save_config(config, self.config_path)

    def resume_config(self, requested: RunConfig | None = None) -> tuple[RunConfig, list[str]]:
        """The run's config with the :data:`RESUMABLE_TRAIN_KEYS` taken from ``requested``.

        Returns (config, ignored): ``ignored`` names the ``section.key`` values of ``requested``
        that differ from the run's and were not applied, so the caller can warn about them.
        """
        saved = self.load_config()
        if requested is None:
            return saved, []
        merged = copy_config(saved)
        for key in RESUMABLE_TRAIN_KEYS:
            setattr(merged.train, key, getattr(requested.train, key))
        ignored = []
        ours, theirs = saved.to_dict(), requested.to_dict()
        for section in ("data", "train"):
            for key, value in theirs[section].items():
                if key not in RESUMABLE_TRAIN_KEYS and ours[section].get(key) != value:
                    ignored.append(f"{section}.{key}")
        for section in ("tokenizer", "model"):
            if ours[section]["plugin"] != theirs[section]["plugin"]:
                ignored.append(f"{section}.plugin")
        return merged, ignored

    def load_tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)

    # -- metrics and the timeline (append-only JSON lines) -------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one step's metrics and flush them, so a viewer sees them at once."""
        self.metrics.append(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.metrics.read()

    def truncate_history(self, after_step: int) -> None:
        """Drop the metrics logged after ``after_step``, and the timeline's records with them (a
        resumed run records them again, exactly)."""
        self.metrics.truncate(after_step)
        self.timeline.truncate(after_step)
