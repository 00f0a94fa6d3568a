"""Does the tokenizer cover the training text? A run whose tokens are mostly ``<unk>`` stops here.

A tokenizer that cannot represent most of the corpus (a word tokenizer on text without spaces, a
tokenizer.json or a resumed run's tokenizer built on other text, a vocabulary far too small)
would train a model to predict ``<unk>`` and report "finished". :func:`check_coverage` runs before
the first step, counts the unknown tokens of the training part (one vectorised pass over the
token array) and, for a tokenizer without an unknown token, the characters it silently drops
from a sample of the text; above :data:`MAX_UNKNOWN_SHARE` it raises a one-line
:class:`DataError` with the share and the likely cause. So does a tokenizer whose tokens each
cover more than :data:`LONG_WORD_CHARS` characters on average (whole lines or files as "words").
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..tokenizer import Tokenizer
from .corpus import TokenizedCorpus

MAX_UNKNOWN_SHARE = 0.2
# A "word" this long is not a word: the text has (almost) no spaces or punctuation to split at.
LONG_WORD_CHARS = 64
_DROP_SAMPLE_CHARS = 1 << 16


def unknown_share(tokenizer: Tokenizer, corpus: TokenizedCorpus) -> tuple[int, int]:
    """(unknown tokens, tokens) in the training part; (0, n) for a tokenizer without ``<unk>``."""
    tokens = corpus.train if len(corpus.train) else corpus.val
    unk = tokenizer.unk_id
    if unk is None or not len(tokens):
        return 0, int(len(tokens))
    step = 1 << 22  # in slices: a comparison of the whole array would be one more byte per token
    unknown = sum(int(np.count_nonzero(tokens[i : i + step] == unk)) for i in range(0, len(tokens), step))
    return unknown, int(len(tokens))


def dropped_share(tokenizer: Tokenizer, text: str) -> tuple[int, int]:
    """(characters no token covers, characters) over a sample of ``text``, spaces not counted:
    a tokenizer without an unknown token (a BPE tokenizer.json without byte fallback) drops
    characters outside its vocabulary without a word."""
    sample = text[:_DROP_SAMPLE_CHARS]
    covered = bytearray(len(sample))
    for token in tokenizer.encode_with_offsets(sample):
        covered[token.start : token.end] = b"\x01" * (token.end - token.start)
    letters = [i for i, ch in enumerate(sample) if not ch.isspace()]
    return sum(1 for i in letters if not covered[i]), len(letters)


def _longest_word(tokenizer: Tokenizer) -> int:
    try:
        return max((len(word) for word in tokenizer.hf.get_vocab(with_added_tokens=False)), default=0)
    except Exception:  # a custom model without a readable vocabulary: no hint from it
        return 0


def likely_cause(tokenizer: Tokenizer) -> str:
    """The most likely reason a tokenizer does not cover a corpus, with what to change."""
    longest = _longest_word(tokenizer)
    if longest > LONG_WORD_CHARS:
        return (f"its vocabulary holds \"words\" of up to {longest:,} characters, so the text has few spaces "
                "or punctuation marks to split at; use the bpe or char tokenizer")
    if tokenizer.kind not in ("char", "word", "bpe", "byte"):
        return (f"{tokenizer.source} was built on other text than this corpus (a tokenizer.json, or a "
                "resumed run whose corpus changed); build the tokenizer on this corpus")
    return (f"its {tokenizer.vocab_size:,}-token vocabulary is too small for this corpus; raise "
            "tokenizer.vocab_size or lower tokenizer.min_frequency, or use the bpe tokenizer")


def check_coverage(tokenizer: Tokenizer, corpus: TokenizedCorpus, text: str = "",
                   limit: float = MAX_UNKNOWN_SHARE) -> None:
    """Refuse a run whose training tokens are more than ``limit`` unknown (or dropped) text."""
    unknown, total = unknown_share(tokenizer, corpus)
    if total and unknown / total > limit:
        raise DataError(
            f"the training data is {100 * unknown / total:.0f}% <unk> ({unknown:,} of {total:,} tokens, "
            f"tokenizer {tokenizer.kind!r}): {likely_cause(tokenizer)}"
        )
    if tokenizer.unk_id is None and text:
        dropped, chars = dropped_share(tokenizer, text)
        if chars and dropped / chars > limit:
            raise DataError(
                f"{tokenizer.source} drops {100 * dropped / chars:.0f}% of the text's characters "
                f"({dropped:,} of the first {chars:,} that are not spaces): it has no unknown token for "
                "characters outside its vocabulary; use a tokenizer that covers this corpus"
            )
    if corpus.chars_per_token > LONG_WORD_CHARS:
        raise DataError(
            f"each token covers {corpus.chars_per_token:,.0f} characters on average ({corpus.n_tokens:,} tokens "
            f"for {corpus.n_chars:,} characters, tokenizer {tokenizer.kind!r}): {likely_cause(tokenizer)}"
        )
