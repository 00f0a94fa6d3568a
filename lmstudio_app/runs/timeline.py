"""A run's timeline read back: how each watched prompt's predictions changed over training.

The trainer writes ``timeline.jsonl`` (see :mod:`lmstudio_app.training.watch`); the prompts it
watched are in the run's ``config.toml`` (``[watch]``). This module reads both for the CLI's
``lmstudio timeline`` and the app, without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, ConfigError
from .folder import RunDir


@dataclass(frozen=True)
class Timeline:
    """The watched prompts of a run and its records (``{"step", "prompts": [entry per prompt]}``)."""

    prompts: list[str]
    targets: list[str]  # the text that really follows each prompt; "" where unknown
    records: list[dict[str, Any]]

    def index_of(self, prompt: str) -> int:
        """The position of ``prompt`` among the watched ones (exact text, else ignoring outer spaces)."""
        for candidates in (self.prompts, [p.strip() for p in self.prompts]):
            wanted = prompt if candidates is self.prompts else prompt.strip()
            if wanted in candidates:
                return candidates.index(wanted)
        shown = ", ".join(repr(p) for p in self.prompts) or "none"
        raise ConfigError(f"{prompt!r} is not a watched prompt of this run (watched: {shown})")

    def history(self, index: int) -> list[tuple[int, dict[str, Any]]]:
        """(step, entry) for one prompt, in step order; records that lack it are skipped."""
        out = []
        for record in sorted(self.records, key=lambda r: int(r.get("step", 0))):
            entries = record.get("prompts")
            if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
                out.append((int(record.get("step", 0)), entries[index]))
        return out


def load_timeline(run: RunDir) -> Timeline:
    """The run's timeline; a run trained before runs recorded one is refused with a message saying so."""
    config = run.load_config()
    records = run.timeline.read()
    if not records or not config.watch.prompts:
        raise CheckpointError(f"{run.path}: no timeline recorded (this run was trained before runs recorded "
                              "their watched prompts, or has not reached its first evaluation)")
    targets = list(config.watch.targets) or [""] * len(config.watch.prompts)
    return Timeline(list(config.watch.prompts), targets, records)
