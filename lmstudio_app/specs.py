"""The typed records that plugin hooks return: the public plugin API's vocabulary.

A hook returns a list of these specs. Each names a params dataclass (built with
:func:`lmstudio_app.params.param`) and a factory; the core validates the params and calls the
factory, so plugins never see config files, the GUI or the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

if TYPE_CHECKING:
    from .model_api import LanguageModel
    from .tokenizer import Tokenizer


class ProgressFn(Protocol):
    """Called with (done, total) units of work; raises :class:`Cancelled` via the caller's flag."""

    def __call__(self, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer a user can pick.

    ``build(params, texts, progress)`` returns a :class:`~lmstudio_app.tokenizer.Tokenizer`.
    ``texts`` is a zero-argument callable returning a fresh iterator over the corpus text in
    chunks (it may be called more than once; training tokenizers like BPE read it).
    ``trains_on_corpus`` is False for tokenizers that do not look at the text (byte-level,
    loading a file), so the GUI can say "ready" without a training step.
    """

    name: str
    description: str
    params: type
    build: Callable[[Any, Callable[[], Iterator[str]], ProgressFn | None], Tokenizer]
    trains_on_corpus: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """A model a user can pick. ``build(params, vocab_size)`` returns a LanguageModel."""

    name: str
    description: str
    params: type
    build: Callable[[Any, int], LanguageModel]


@dataclass(frozen=True)
class CorpusReaderSpec:
    """Turns files with the given extensions (lower case, with dot) into text."""

    name: str
    description: str
    extensions: tuple[str, ...]
    read: Callable[[Path], str]


@dataclass
class PluginInfo:
    """What the registry knows about one loaded (or failed) plugin, for dialogs and the CLI."""

    name: str
    version: str
    source: str  # "built-in", "installed", "folder:<path>", "explicit:<path>"
    location: str = ""
    provides: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"models": ["gpt"]}
    enabled: bool = True
    errors: list[PluginError] = field(default_factory=list)


@dataclass(frozen=True)
class PluginError:
    """A plugin that failed to import, register or answer a hook; shown, never fatal."""

    name: str
    source: str
    message: str  # one line: "ImportError: No module named 'foo'"
    traceback: str
