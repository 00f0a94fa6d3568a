"""What every ``lmstudio`` command shares: exit codes, the one-line error, config paths and ``--set``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import RunConfig, apply_overrides, config_from_dict, parse_override
from ..errors import MESSAGE_CHARS, cut

PROG = "lmstudio"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """argparse found a bad command line; carries the one-line message."""


def resolve_data_files(config: RunConfig, config_dir: Path) -> RunConfig:
    """Make relative ``[data].files`` absolute: next to the config first, else the current folder.

    A path found in neither place is left as written, so the data loader's error names it.
    """
    resolved = []
    for entry in config.data.files:
        path = Path(entry).expanduser()
        if not path.is_absolute():
            for base in (config_dir, Path.cwd()):
                if (base / path).exists():
                    path = (base / path).resolve()
                    break
        resolved.append(str(path))
    config.data.files = resolved
    return config


def with_overrides(config: RunConfig, overrides: Sequence[str], source: str) -> RunConfig:
    """Apply ``--set`` overrides; switching a section's plugin drops the old plugin's params."""
    raw = config.to_dict()
    for text in overrides:
        section, key, value = parse_override(text)
        if key == "plugin" and section in ("tokenizer", "model") and value.strip("\"'") != raw[section]["plugin"]:
            raw[section] = {"plugin": raw[section]["plugin"]}
    return config_from_dict(apply_overrides(raw, overrides), source)


def print_error(message: str) -> None:
    """The one line every failure prints: ``lmstudio: error: <first line of message>``."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    # The last resort for a message that quotes a huge value without errors.shown: one line stays short.
    print(f"{PROG}: error: {cut(first, MESSAGE_CHARS)}", file=sys.stderr, flush=True)
