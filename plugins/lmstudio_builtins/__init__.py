"""The built-in tokenizers, models, readers and the demo corpus's truth, registered like any
third-party plugin.

The core never imports this package by name: it is found through the ``lmstudio``
entry-point group declared in ``pyproject.toml``.
"""

from __future__ import annotations

from lmstudio_app import hookimpl
from lmstudio_app.specs import CorpusReaderSpec, ModelSpec, TokenizerSpec, TruthSpec

__version__ = "0.1.0"


@hookimpl
def lmstudio_tokenizers() -> list[TokenizerSpec]:
    from .tokenizing import TOKENIZER_SPECS

    return list(TOKENIZER_SPECS)


@hookimpl
def lmstudio_models() -> list[ModelSpec]:
    from .bigram import BIGRAM_SPEC
    from .gpt import GPT_SPEC

    return [GPT_SPEC, BIGRAM_SPEC]


@hookimpl
def lmstudio_corpus_readers() -> list[CorpusReaderSpec]:
    from .readers import READER_SPECS

    return list(READER_SPECS)


@hookimpl
def lmstudio_truths() -> list[TruthSpec]:
    from .demo_grammar import TRUTH_SPEC

    return [TRUTH_SPEC]
