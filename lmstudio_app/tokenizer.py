"""The tokenizer every part of the app talks to: a thin wrapper over a Hugging Face tokenizer.

All tokenizer plugins return this type, so a run's tokenizer is always one ``tokenizer.json``
in the standard Hugging Face format, loadable by any tool that reads that format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .atomic_files import atomic_write_text
from .errors import LMStudioError, TokenizerError
from .file_reads import TOKENIZER_FILE_LIMIT, read_text


@dataclass(frozen=True)
class Token:
    """One token of a text: its ID, its string as shown to the user, and its character span."""

    id: int
    text: str  # the characters of the original text it covers (what the user sees)
    start: int  # character offsets into the text, end exclusive
    end: int


def _library_error(source: str, doing: str, exc: BaseException) -> TokenizerError:
    """One line for an error raised inside the tokenizers library, naming the tokenizer's source."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    first = first if len(first) <= 200 else first[:200] + "…"
    if type(exc).__name__ == "PanicException":
        # A Rust panic (a backtracking regex in a pre-tokenizer hits Oniguruma's retry limit, say).
        return TokenizerError(f"{source}: the tokenizers library failed while {doing} ({first}); "
                              "check the tokenizer's pre-tokenizer pattern, or choose another tokenizer")
    low = first.lower()
    if "[unk]" in low or "unk_id" in low or "unknown token" in low:  # WordLevel/WordPiece, Unigram
        return TokenizerError(f"{source}: cannot encode the text ({first}): the tokenizer has no unknown "
                              "token for text outside its vocabulary; add one (its model's unk_token) "
                              "or choose a tokenizer that covers the corpus")
    return TokenizerError(f"{source}: the tokenizers library failed while {doing} ({first})")


_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError, LMStudioError)


def _library_failure(source: str, doing: str, exc: BaseException) -> BaseException:
    """What to raise for ``exc`` caught around a call into the library: a :class:`TokenizerError`
    for its errors and panics; Ctrl-C, ``sys.exit``, running out of memory and the app's own
    errors unchanged. ``PanicException`` derives from ``BaseException``, so a plain
    ``except Exception`` would let it through as a full traceback."""
    if isinstance(exc, _PASS_THROUGH):
        return exc
    if isinstance(exc, Exception) or type(exc).__name__ == "PanicException":
        return _library_error(source, doing, exc)
    return exc


@contextmanager
def _library_call(source: str, doing: str) -> Iterator[None]:
    """The guard of :func:`_library_failure` as a ``with`` block (for the less frequent calls)."""
    try:
        yield
    except BaseException as exc:
        failure = _library_failure(source, doing, exc)
        if failure is exc:
            raise
        raise failure from None


class Tokenizer:
    """Encode/decode with offsets over a ``tokenizers.Tokenizer``.

    Every call into the library goes through :func:`_library_call`: an error (a vocabulary without
    an unknown token, a pre-tokenizer regex that panics) is a one-line :class:`TokenizerError`
    naming ``source`` (the tokenizer.json's path, or the plugin that built it). ``notes`` holds
    what the person should know about how it was built (e.g. fewer tokens learned than asked for).
    """

    def __init__(self, hf: HFTokenizer, kind: str = "custom", source: str | None = None) -> None:
        self.hf = hf
        self.kind = kind  # the plugin that made it, for display
        self.source = source or f"tokenizer {kind!r}"
        self.notes: list[str] = []

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        except BaseException as exc:
            failure = _library_failure(self.source, "encoding", exc)
            if failure is exc:
                raise
            raise failure from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """IDs of several texts, encoded in parallel (what tokenizing a corpus uses)."""
        # encode_batch_fast (tokenizers >= 0.20.1) skips the character offsets: ~3x faster and
        # far less transient memory on a big corpus, with the same IDs.
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        with _library_call(self.source, "encoding"):
            return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> list[Token]:
        with _library_call(self.source, "encoding"):
            enc = self.hf.encode(text, add_special_tokens=False)
        return [Token(i, text[s:e], s, e) for i, (s, e) in zip(enc.ids, enc.offsets)]

    def decode(self, ids: Iterable[int]) -> str:
        try:  # a plain try: decoding runs once per generated token, the guard costs nothing here
            return self.hf.decode(list(ids), skip_special_tokens=False)
        except BaseException as exc:
            failure = _library_failure(self.source, "decoding", exc)
            if failure is exc:
                raise
            raise failure from None

    def token_string(self, token_id: int) -> str:
        """The text a single token decodes to (e.g. 'ing', ' the', '\\n')."""
        return self.decode([token_id])

    @property
    def unk_id(self) -> int | None:
        """The ID of the unknown token: the model's own ``unk_token``, else a usual name; None if none."""
        names = [getattr(self.hf.model, "unk_token", None), "<unk>", "[UNK]", "<|unk|>"]
        for name in names:
            if isinstance(name, str) and name:
                tid = self.hf.token_to_id(name)
                if tid is not None:
                    return tid
        return None

    @cached_property
    def cuts_anywhere(self) -> bool:
        """True when every character is its own token whatever surrounds it (the char and byte
        tokenizers), so a text may be encoded in pieces cut anywhere (see ``iter_text_chunks``):
        a BPE model without merges, affixes or fused unknowns, no normalizer, and no pre-tokenizer
        but a byte mapping that adds no space."""
        try:
            spec = json.loads(self.to_json())
        except (TypeError, ValueError, TokenizerError):
            return False
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer")
        if model.get("type") != "BPE" or model.get("merges") or model.get("fuse_unk") or model.get("dropout"):
            return False
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or spec.get("normalizer"):
            return False
        return pre is None or (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space"))

    @cached_property
    def added_strings(self) -> tuple[str, ...]:
        """The added (special) tokens' strings: the library finds them in any text before anything
        else, so a piece of text must never end inside one of them."""
        try:
            decoder = self.hf.get_added_tokens_decoder()
        except AttributeError:  # an older tokenizers library
            return ()
        return tuple(sorted({t.content for t in decoder.values() if len(t.content) > 1}))

    def to_json(self) -> str:
        with _library_call(self.source, "saving it"):
            return self.hf.to_str()

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` atomically (temp file + rename)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, kind: str = "file") -> Tokenizer:
        """A tokenizer.json: a regular file of bounded size, read without blocking (see file_reads)."""
        path = Path(path)
        if not os.path.lexists(path):
            raise TokenizerError(f"{path}: tokenizer file not found")
        text = read_text(path, what="tokenizer file", max_bytes=TOKENIZER_FILE_LIMIT, error=TokenizerError)
        return cls.from_json(text, kind=kind, source=str(path))

    @classmethod
    def from_json(cls, text: str, kind: str = "file", source: str = "tokenizer.json") -> Tokenizer:
        try:
            json.loads(text)
        except (ValueError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"{source}: not a valid tokenizer.json ({first[:200]})") from None
        try:
            hf = HFTokenizer.from_str(text)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except BaseException as exc:  # a PanicException too (see _library_call)
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"{source}: not a valid tokenizer.json ({first[:200]})") from None
        return cls(hf, kind=kind, source=source)
