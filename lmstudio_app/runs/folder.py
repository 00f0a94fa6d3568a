"""Run folders on disk.

A run is a folder holding everything needed to inspect, reproduce or continue a training run::

    config.toml       the full, validated RunConfig
    tokenizer.json    the tokenizer in the Hugging Face format
    metrics.jsonl     one JSON object per logged step
    corpus.json       the size and SHA-256 of the token arrays trained on (see integrity.py)
    checkpoints/      step_00000500/ ... (see checkpoints.py) and ``latest``
    .lock             held by the process training in the folder (see lock.py)
    run.json          the run's name; outcome.json: how its training last ended (see index.py)

Every file that is replaced is written through :mod:`lmstudio_app.atomic_files`, so a crash or a
full disk leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write_text
from ..config import RunConfig, copy_config, load_config, save_config
from ..errors import CheckpointError, ConfigError
from ..file_reads import GIB, MIB, TOKENIZER_FILE_LIMIT, check_regular_file, read_bytes
from ..tokenizer import Tokenizer
from .location import runs_folder

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
TIMELINE_FILE = "timeline.jsonl"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINTS_DIR = "checkpoints"
# metrics.jsonl of a million logged steps with samples is a few hundred MB; more is not a real log.
JSON_LINES_LIMIT = 1 * GIB
CONFIG_LIMIT = 4 * MIB

# What a resumed run may change: how long it trains, how often it reports, and where it runs.
# Everything else defines the run and comes from its config.toml.
RESUMABLE_TRAIN_KEYS = (
    "max_steps", "log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "sample_tokens",
    "device", "threads", "compile",
)


def new_run_path(base: str | Path | None = None, prefix: str = "run") -> Path:
    """A fresh folder name like ``<base>/run-20261129-201500`` (``-2``, ``-3``... if taken); not created."""
    if base is None:
        base = runs_folder()  # the user's choice (settings), else the default
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

    def __init__(self, path: Path, what: str, check: Callable[[dict[str, Any]], str | None] | None = None) -> None:
        self.path = path
        self.what = what  # "metrics", "timeline": named in error messages
        self._checked = False  # whether a torn last line was looked for before appending
        self._check = check  # a record's problem in words, or None: such records are skipped
        self.skipped: list[str] = []  # the last read's skipped lines, "line 3: step is 'abc', ..."

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
        if not os.path.lexists(self.path):
            return False
        # A FIFO here would block open() for append forever: refuse anything but a regular file.
        check_regular_file(self.path, what=f"{self.what} log", error=CheckpointError)
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
        """All records in order, read bounded (a FIFO or ``/dev/zero`` is refused).

        A line torn by a crash (the last one, unparseable) is skipped silently; any other line
        that is not a record (not JSON, not an object, a ``step`` that is not a whole number >= 0,
        a field of the wrong type) is skipped and described in :attr:`skipped` (see :meth:`note`).
        """
        self.skipped = []
        if not os.path.lexists(self.path):
            return []
        data = read_bytes(self.path, what=f"{self.what} log", max_bytes=JSON_LINES_LIMIT, error=CheckpointError)
        lines = data.decode("utf-8", errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                if number < len(lines) or data.endswith(b"\n"):  # not the torn tail of a kill
                    self.skipped.append(f"line {number}: not JSON")
                continue
            problem = "not a JSON object" if not isinstance(record, dict) else _record_problem(record, self._check)
            if problem is not None:
                self.skipped.append(f"line {number}: {problem}")
                continue
            records.append(record)
        return records

    def note(self) -> str | None:
        """One line about the lines the last :meth:`read` skipped, or None."""
        if not self.skipped:
            return None
        count = len(self.skipped)
        lines = "line" if count == 1 else "lines"
        return f"{self.path}: skipped {count} unreadable {lines} ({self.skipped[0]}{', ...' if count > 1 else ''})"

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
    return record["step"]  # checked by read(): a whole number >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _record_problem(record: dict[str, Any], check: Callable[[dict[str, Any]], str | None] | None) -> str | None:
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step is {_short(step)}, not a whole number >= 0"
    return check(record) if check is not None else None


# metrics.jsonl's fields (StepMetrics) and what each must be; a record breaking one is skipped.
_NUMBERS = ("elapsed_s", "train_loss", "lr", "tokens_per_s", "val_loss", "val_bpb", "grad_norm", "kl_to_truth")
_WHOLE = ("max_steps", "tokens_seen")
_TEXTS = ("sample", "warning")


def metrics_record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with one metrics.jsonl record, or None (unknown fields are allowed)."""
    for key in _NUMBERS:
        value = record.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return f"{key} is {_short(value)}, not a number"
    for key in _WHOLE:
        value = record.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"{key} is {_short(value)}, not a whole number"
    for key in _TEXTS:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} is {_short(value)}, not text"
    return None


class RunDir:
    """One run folder. Create it with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / CONFIG_FILE
        self.metrics_path = self.path / METRICS_FILE
        self.tokenizer_path = self.path / TOKENIZER_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.metrics = JsonLines(self.metrics_path, "metrics", metrics_record_problem)
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
        # Vetted first: a FIFO or /dev/zero named config.toml must not hang or exhaust the reader.
        if os.path.lexists(self.config_path):
            check_regular_file(self.config_path, what="run config", max_bytes=CONFIG_LIMIT, error=ConfigError)
        return load_config(self.config_path)

    def save_config(self, config: RunConfig) -> None:
        save_config(config, self.config_path)

    def resume_config(self, requested: RunConfig | None = None) -> tuple[RunConfig, list[str]]:
        """The run's config with the :data:`RESUMABLE_TRAIN_KEYS` taken from ``requested``.

        Returns (config, ignored): ``ignored`` names the ``section.key`` values of ``requested``
        in [data] and [train] that differ from the run's and were not applied, so the caller can
        warn about them. A different [tokenizer] or [model] value raises ConfigError: those
        cannot change on resume.
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
        # The tokenizer and the model define the trained weights: a change cannot be applied to
        # them, and ignoring it silently would train something other than what was asked for.
        changed = [(f"{section}.{key}", ours[section].get(key), value)
                   for section in ("tokenizer", "model") for key, value in theirs[section].items()
                   if ours[section].get(key) != value]
        if changed:
            names = ", ".join(name for name, _, _ in changed)
            name, have, want = changed[0]
            raise ConfigError(
                f"{self.path}: {names} cannot change on resume ({name} is {_short(have)} in the run, "
                f"{_short(want)} asked for): the trained weights and tokenizer are built from them; "
                "start a new run to change them"
            )
        return merged, ignored

    def load_tokenizer(self) -> Tokenizer:
        if os.path.lexists(self.tokenizer_path):
            check_regular_file(self.tokenizer_path, what="tokenizer", max_bytes=TOKENIZER_FILE_LIMIT,
                               error=CheckpointError)
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
