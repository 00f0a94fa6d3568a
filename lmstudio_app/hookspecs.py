"""The plugin contract: every hook a plugin may implement.

A plugin module writes ``hookimpl = pluggy.HookimplMarker("lmstudio")`` (or imports
``lmstudio_app.hookimpl``) and implements any of these functions. Each returns a list of
specs; see ``docs/plugins.md`` for the guide and a complete example.
"""

from __future__ import annotations

import pluggy

from .specs import CorpusReaderSpec, ModelSpec, TokenizerSpec, TruthSpec

PROJECT = "lmstudio"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def lmstudio_tokenizers() -> list[TokenizerSpec]:
    """Tokenizers this plugin provides."""


@hookspec
def lmstudio_models() -> list[ModelSpec]:
    """Model architectures this plugin provides."""


@hookspec
def lmstudio_corpus_readers() -> list[CorpusReaderSpec]:
    """Readers that turn files of other formats (by extension) into training text."""


@hookspec
def lmstudio_truths() -> list[TruthSpec]:
    """Exact generating distributions of synthetic corpora, to compare a model's predictions with."""
