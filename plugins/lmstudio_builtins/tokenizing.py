"""The built-in tokenizers: character, byte, byte-level BPE, word, and "load a tokenizer.json".

Every one is a Hugging Face ``tokenizers`` pipeline wrapped in the app's ``Tokenizer``, so a
run's tokenizer is always a standard ``tokenizer.json``. IDs are assigned deterministically
(sorted characters, byte values, the trainers' stable ordering) so runs reproduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from lmstudio_app.errors import TokenizerError
from lmstudio_app.params import param
from lmstudio_app.specs import ProgressFn, TokenizerSpec
from lmstudio_app.tokenizer import Tokenizer

Texts = Callable[[], Iterator[str]]

UNK = "<unk>"
END_OF_TEXT = "<|endoftext|>"
# Words (with one optional leading space, GPT-2 style), single punctuation marks, and every
# other whitespace character on its own: spaces and line breaks survive the round trip and
# whitespace runs never become unknown "words".
WORD_PATTERN = r" ?\w+| ?[^\w\s]|\s"
_BPE_BASE = 257  # the 256 byte tokens and <|endoftext|>, before any merge


class _ProgressReader:
    """Passes chunks through while reporting characters read; progress may raise Cancelled."""

    def __init__(self, texts: Texts, progress: ProgressFn | None) -> None:
        self.texts = texts
        self.progress = progress
        self.chars_read = 0
        # One cheap pass for the total, so progress can be shown as a fraction.
        self.total = sum(len(chunk) for chunk in texts()) if progress is not None else 0

    def __iter__(self) -> Iterator[str]:
        self.chars_read = 0
        self._report()
        for chunk in self.texts():
            yield chunk
            self.chars_read += len(chunk)
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(min(self.chars_read, self.total), self.total)

    def finish(self, name: str) -> None:
        """After training: refuse an empty corpus, else report completion."""
        if self.chars_read == 0:
            raise TokenizerError(f"tokenizer {name}: the corpus is empty; add text before building it")
        self._report()


# -- char ---------------------------------------------------------------------------------


@dataclass
class CharParams:
    min_frequency: int = param(1, min=1, max=1_000_000,
                               help="Characters seen fewer times than this become <unk>")


_COUNT_SLICE = 1 << 20  # characters counted at a time: bounded transient memory whatever the chunk


def count_characters(texts: Iterator[str]) -> dict[str, int]:
    """How often each character occurs: NumPy ``bincount`` over the code points (~20x Counter)."""
    totals = np.zeros(128, np.int64)
    for chunk in texts:
        for i in range(0, len(chunk), _COUNT_SLICE):
            piece = chunk[i : i + _COUNT_SLICE]
            if piece.isascii():
                codes = np.frombuffer(piece.encode("ascii"), np.uint8)
            else:
                codes = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), np.uint32)
            counts = np.bincount(codes)
            if len(counts) > len(totals):
                totals = np.concatenate([totals, np.zeros(len(counts) - len(totals), np.int64)])
            totals[: len(counts)] += counts
    return {chr(code): int(totals[code]) for code in np.flatnonzero(totals)}


def build_char(params: CharParams, texts: Texts, progress: ProgressFn | None) -> Tokenizer:
    reader = _ProgressReader(texts, progress)
    counts = count_characters(iter(reader))
    reader.finish("char")
    chars = sorted(ch for ch, n in counts.items() if n >= params.min_frequency)
    if not chars:
        raise TokenizerError(f"tokenizer.min_frequency: {params.min_frequency} leaves no character; lower it")
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab[UNK] = len(vocab)  # last, so the characters keep the IDs of the usual char-level setup
    # A BPE model without merges maps each character to its ID in one fast pass; with no
    # pre-tokenizer every character is its own token and offsets are character spans.
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    hf.decoder = decoders.Fuse()  # join tokens without spaces
    return Tokenizer(hf, kind="char")


# -- byte ---------------------------------------------------------------------------------


@dataclass
class ByteParams:
    """Nothing to choose: the vocabulary is the 256 byte values plus ``<|endoftext|>``."""


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as the ByteLevel steps expect."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_byte(params: ByteParams, texts: Texts, progress: ProgressFn | None) -> Tokenizer:
    vocab = {char: byte for byte, char in _byte_to_unicode().items()}  # token ID = byte value
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges it would not change a single ID, only cost time.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([END_OF_TEXT])
    if progress is not None:
        progress(1, 1)
    return Tokenizer(hf, kind="byte")


# -- bpe ----------------------------------------------------------------------------------


@dataclass
class BPEParams:
    vocab_size: int = param(512, min=260, max=65536, step=64,
                            help="Tokens in the vocabulary: 256 bytes + 1 special + learned merges")
    min_frequency: int = param(2, min=1, max=1_000_000, help="A pair must occur this often to be merged")


def build_bpe(params: BPEParams, texts: Texts, progress: ProgressFn | None) -> Tokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=params.vocab_size,
        min_frequency=params.min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever unknown
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    reader = _ProgressReader(texts, progress)
    hf.train_from_iterator(iter(reader), trainer=trainer)
    reader.finish("bpe")
    tokenizer = Tokenizer(hf, kind="bpe")
    learned = tokenizer.vocab_size
    if learned < params.vocab_size:  # the trainer stops early without a word: say so, and why
        why = ("no pair of adjacent tokens occurs twice within a word any more" if params.min_frequency <= 1
               else f"no other pair of adjacent tokens occurs at least {params.min_frequency} times "
                    "(tokenizer.min_frequency) within a word")
        tokenizer.notes.append(
            f"tokenizer bpe: learned {learned:,} of the {params.vocab_size:,} tokens asked for "
            f"(tokenizer.vocab_size; {_BPE_BASE} bytes and specials + {learned - _BPE_BASE:,} merges): {why}; "
            "more text, or a lower min_frequency, gives more"
        )
    return tokenizer


# -- word ---------------------------------------------------------------------------------


@dataclass
class WordParams:
    vocab_size: int = param(8192, min=16, max=1_000_000, step=256,
                            help="Most frequent words kept; the rest become <unk>")
    min_frequency: int = param(1, min=1, max=1_000_000, help="Words seen fewer times than this become <unk>")


def build_word(params: WordParams, texts: Texts, progress: ProgressFn | None) -> Tokenizer:
    hf = HFTokenizer(models.WordLevel(unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    hf.decoder = decoders.Fuse()  # the spaces live inside the tokens, so plain joining is exact
    trainer = trainers.WordLevelTrainer(
        vocab_size=params.vocab_size,
        min_frequency=params.min_frequency,
        special_tokens=[UNK],
        show_progress=False,
    )
    reader = _ProgressReader(texts, progress)
    hf.train_from_iterator(iter(reader), trainer=trainer)
    reader.finish("word")
    tokenizer = Tokenizer(hf, kind="word")
    learned = tokenizer.vocab_size
    if learned < params.vocab_size:
        seen = "" if params.min_frequency <= 1 else f" seen at least {params.min_frequency} times (tokenizer.min_frequency)"
        tokenizer.notes.append(
            f"tokenizer word: learned {learned:,} of the {params.vocab_size:,} tokens asked for "
            f"(tokenizer.vocab_size): the corpus has only {learned - 1:,} distinct words and marks{seen}, plus <unk>"
        )
    return tokenizer


# -- file ---------------------------------------------------------------------------------


@dataclass
class FileParams:
    path: str = param("", label="tokenizer.json", help="A Hugging Face tokenizer.json file")


def build_file(params: FileParams, texts: Texts, progress: ProgressFn | None) -> Tokenizer:
    if not params.path.strip():
        raise TokenizerError("tokenizer.path: no file given; choose a tokenizer.json")
    tokenizer = Tokenizer.load(Path(params.path.strip()).expanduser(), kind="file")
    if tokenizer.vocab_size == 0:
        raise TokenizerError(f"{params.path}: the tokenizer has an empty vocabulary")
    if progress is not None:
        progress(1, 1)
    return tokenizer


TOKENIZER_SPECS: list[TokenizerSpec] = [
    TokenizerSpec("char", "One token per character of the corpus (unseen characters → <unk>)",
                  CharParams, build_char),
    TokenizerSpec("byte", "One token per UTF-8 byte: 257 tokens (256 bytes + <|endoftext|>), any text, no training",
                  ByteParams, build_byte, trains_on_corpus=False),
    TokenizerSpec("bpe", "Byte-level BPE (GPT-2 style) trained on the corpus; nothing is ever unknown",
                  BPEParams, build_bpe),
    TokenizerSpec("word", "One token per word or punctuation mark; rare words → <unk>",
                  WordParams, build_word),
    TokenizerSpec("file", "Load an existing Hugging Face tokenizer.json",
                  FileParams, build_file, trains_on_corpus=False),
]
