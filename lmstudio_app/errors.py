"""The exceptions the core raises on purpose.

Each carries a one-line, user-facing message that names the file, key or value at fault; the
CLI prints it as a single line and the GUI shows it in a dialog. Anything else escaping the core
is a bug.
"""

from __future__ import annotations


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
