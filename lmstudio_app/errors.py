"""The exceptions the core raises on purpose.

Each carries a one-line, user-facing message that names the file, key or value at fault; the
CLI prints it as a single line and the GUI shows it in a dialog. Anything else escaping the core
is a bug.
"""

from __future__ import annotations

import math
from typing import Any

# The most characters of a user's value a message quotes: a 100 MB string in a config must not
# make a 100 MB error line (or dialog).
SHOWN_CHARS = 80
# Most characters of a whole one-line message (the CLI's last resort, see cli/common.print_error).
MESSAGE_CHARS = 2000


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` if short, else its start and end around ``…(N characters)…``."""
    if len(text) <= limit:
        return text
    keep = max(limit - 24, 8)
    head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3 :]
    return f"{head}…({len(text):,} characters)…{tail}"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """How every message quotes a value the user gave: its ``repr``, cut to about ``limit`` characters.

    Safe on anything a parser can hand back: a string of any length, an integer of any number of
    digits (``str()`` of one over 4300 digits raises), a list nested too deeply to ``repr``.
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if abs(value) < 10**limit:
            return repr(value)
        try:
            digits = len(str(abs(value)))
        except ValueError:  # past Python's int-to-text limit (4300 digits): estimate
            digits = int(abs(value).bit_length() * math.log10(2)) + 1
        return f"{'-' if value < 0 else ''}a number of about {digits:,} digits"
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return repr(value[: limit * 2 // 3]) + f"…({len(value):,} characters)…" + repr(value[-(limit // 3):])
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply; an int past the digit limit inside
        return f"a {type(value).__name__} nested too deeply to show"
    return cut(text, limit)


class LMStudioError(Exception):
    """Base class: an expected failure with a message fit for the user."""


class ParamError(LMStudioError, ValueError):
    """A parameter or config value is missing, unknown, of the wrong type or out of range."""


class ConfigError(LMStudioError):
    """A config file cannot be read or does not describe a valid run."""


class DataError(LMStudioError):
    """A text file or corpus cannot be used (missing, empty, binary, not UTF-8, too short)."""


class TokenizerError(LMStudioError):
    """A tokenizer cannot be built, trained, saved or loaded."""


class CheckpointError(LMStudioError):
    """A run folder or checkpoint is missing, corrupted or does not match the model."""


class TrainingError(LMStudioError):
    """Training stopped for a reason the user must act on (NaN loss, out of memory, ...)."""


class PluginCallError(LMStudioError):
    """Code from a plugin raised; the message names the plugin."""

    def __init__(self, plugin: str, what: str, exc: BaseException) -> None:
        self.plugin = plugin
        self.original = exc
        super().__init__(f"plugin {plugin!r} failed in {what}: {type(exc).__name__}: {exc}")


class Cancelled(LMStudioError):
    """The user cancelled a long operation (tokenizing, training a tokenizer)."""


class ExportError(LMStudioError):
    """A run cannot be exported to another format (no equivalent architecture, bad output folder)."""


class MissingPackageError(LMStudioError):
    """A feature needs an optional package that is not installed; the message says what to install."""
