"""Token arrays: the corpus string → compact train/val token IDs → random training batches.

Tokenizing reads the corpus string chunk by chunk in place (the train and validation parts are
never copied out of it) into a ``uint8``/``uint16``/``uint32`` array whose size is estimated from the first
chunks' tokens per character, so peak memory stays near the final array's size: never a Python
list of all the IDs, never a doubled array. With ``memmap_dir`` a large part spills to a
memory-mapped file instead. Sampling draws random windows from the token array with a seeded
generator whose state is saved in checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import Cancelled, DataError, LMStudioError, ParamError, TokenizerError
from ..tokenizer import Tokenizer


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token ID: uint8 up to 256 tokens (a char
    tokenizer on most text: the token array is then no bigger than an ASCII corpus), uint16 up
    to 65,536."""
    if vocab_size <= 0:
        raise DataError(f"vocabulary size {vocab_size}: a tokenizer needs at least one token")
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocabulary size {vocab_size:,} is too large (at most {1 << 32:,} token IDs)")


class _TokenBuffer:
    """A growable token array that spills to a memory-mapped file when large.

    Growing resizes in place (``realloc``: no second copy alongside the first) and
    :meth:`expect` sizes it once to the estimated total, so it is rarely regrown; every write
    is checked against the vocabulary, so a tokenizer emitting an ID the model cannot embed is
    caught here rather than as an index error in the middle of training.
    """

    def __init__(self, dtype: np.dtype, vocab_size: int, spill_path: Path | None, spill_threshold: int,
                 initial: int) -> None:
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.spill_path = spill_path
        self.spill_threshold = spill_threshold
        self.array: np.ndarray = np.empty(max(initial, 16), dtype)
        self.size = 0
        self.mapped = False  # stays True once spilled, so discard() knows there is a file

    def expect(self, total: int) -> None:
        """Make room for about ``total`` tokens in one step (an estimate; extend still grows)."""
        if total > len(self.array):
            self._grow(total)

    def extend(self, ids: Sequence[int]) -> None:
        n = len(ids)
        if self.size + n > len(self.array):
            self._grow(max(self.size + n, len(self.array) + len(self.array) // 2))
        segment = self.array[self.size : self.size + n]
        if isinstance(ids, np.ndarray):  # an array would be cast (wrapped) silently: check it first
            out_of_range = n > 0 and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0)
            if not out_of_range:
                segment[:] = ids
        else:
            try:
                segment[:] = ids
                out_of_range = n > 0 and int(segment.max()) >= self.vocab_size
            except OverflowError:  # NumPy refuses an ID that does not fit the dtype (or is negative)
                out_of_range = True
        del segment  # no view may outlive a write: the next grow may move the array
        if out_of_range:
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise TokenizerError(
                f"the tokenizer produced token ID {bad:,} but its vocabulary has {self.vocab_size:,} IDs "
                "(0 to vocab_size - 1); its tokenizer.json is inconsistent — rebuild the tokenizer"
            )
        self.size += n

    def _grow(self, capacity: int) -> None:
        if self.mapped:
            self._remap(capacity)
        elif self.spill_path is not None and capacity > self.spill_threshold:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            mapped = np.memmap(self.spill_path, self.dtype, mode="w+", shape=(capacity,))
            mapped[: self.size] = self.array[: self.size]
            self.array, self.mapped = mapped, True
        else:
            self.array.resize(capacity, refcheck=False)  # we hold no other view of it

    def _remap(self, capacity: int, mode: str = "r+") -> None:
        """Resize the spill file and map it again (a memmap cannot grow in place)."""
        assert self.spill_path is not None
        if isinstance(self.array, np.memmap):
            self.array.flush()
        self.array = np.empty(0, self.dtype)  # drops the old mapping before the resize
        os.truncate(self.spill_path, capacity * self.dtype.itemsize)
        if capacity:
            self.array = np.memmap(self.spill_path, self.dtype, mode=mode, shape=(capacity,))

    def finish(self) -> np.ndarray:
        """The tokens written: the array trimmed in place, or the file mapped again read-only."""
        if not self.mapped:
            self.array.resize(self.size, refcheck=False)
            return self.array
        self._remap(self.size, mode="r")
        return self.array

    def discard(self) -> None:
        """Drop the spill file (after an error or a cancel)."""
        self.array = np.empty(0, self.dtype)
        if self.mapped and self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)


@dataclass
class TokenizedCorpus:
    """The corpus as token IDs, split into a training and a validation part."""

    train: np.ndarray  # (N_train,) uint16/uint32; an np.memmap for very large corpora
    val: np.ndarray  # (N_val,) same dtype; empty when val_fraction is 0
    vocab_size: int
    n_chars: int  # characters of the text that was tokenized (both parts)
    # UTF-8 bytes of each part's text (0: not known, e.g. a corpus made by hand): the tokenizer-
    # independent denominator that makes losses of different tokenizers comparable (bits per byte).
    train_bytes: int = 0
    val_bytes: int = 0

    @property
    def n_tokens(self) -> int:
        return int(len(self.train) + len(self.val))

    @property
    def n_bytes(self) -> int:
        return self.train_bytes + self.val_bytes

    @property
    def chars_per_token(self) -> float:
        """Compression: how many characters one token covers on average."""
        return self.n_chars / self.n_tokens if self.n_tokens else 0.0

    @property
    def bytes_per_token(self) -> float:
        """Compression in UTF-8 bytes per token (0.0 when the byte count is not known)."""
        return self.n_bytes / self.n_tokens if self.n_tokens and self.n_bytes else 0.0

    def bits_per_byte(self, nats_per_token: float | None, split: str = "val") -> float | None:
        """A mean loss over ``split``'s tokens (nats per token) as bits per UTF-8 byte of its text:
        ``nats × tokens / (bytes × ln 2)``. The split's total information is the same in either
        unit, so runs with different tokenizers on the same text compare on this one axis.
        None without a loss, tokens or a byte count."""
        if split not in ("val", "train"):
            raise ParamError(f"split: {split!r} is not one of 'val', 'train'")
        tokens, n_bytes = (len(self.val), self.val_bytes) if split == "val" else (len(self.train), self.train_bytes)
        if nats_per_token is None or not tokens or not n_bytes:
            return None
        return float(nats_per_token) * tokens / (n_bytes * math.log(2))


# A letter or digit followed by a punctuation mark (Unicode category P*, but not a connector
# such as "_"): every built-in pre-tokenizer (the word pattern, GPT-2's) ends a piece there,
# whatever surrounds it. The pattern finds the candidates; the category check is exact.
_PUNCT_CUT = re.compile(r"[^\W_](?=[^\w\s])")


def iter_text_chunks(text: str, chunk_chars: int = 1 << 16, start: int = 0, end: int | None = None,
                     cut_anywhere: bool = False, keep_whole: Sequence[str] = ()) -> Iterator[str]:
    """Pieces of ``text[start:end]`` of about ``chunk_chars`` characters, cut only where
    tokenizing cannot be affected (only the pieces are copied, never the whole range).

    64K-character pieces keep the tokenizers library's trainers small: they pre-tokenize a whole
    buffer of pieces at once, with 16 bytes of offsets per byte of text (a 20 MB corpus in 1 MB
    pieces peaked at +346 MB while training BPE, in 64K pieces at +44 MB, in the same time).

    A cut goes after a lone newline between two non-space characters, else before a single space
    between two non-space characters, else between a letter or digit and the punctuation mark
    after it (``a.``, ``字。``): places where the word pattern and GPT-2's pre-tokenizer split anyway, so learning
    or encoding piece by piece gives exactly what the whole text gives. With none of these in a
    piece's second half the piece grows to the next such place (a text without one stays whole),
    never cutting a word in two; ``cut_anywhere`` (a tokenizer whose every character is its own
    token, see :attr:`Tokenizer.cuts_anywhere`) cuts at ``chunk_chars`` instead. No cut falls
    inside an occurrence of a ``keep_whole`` string (a tokenizer's added tokens, which the library
    finds in the raw text before splitting it).
    """
    if chunk_chars < 2:
        raise ParamError(f"chunk_chars: {chunk_chars} is below the minimum 2")
    n = len(text) if end is None else min(end, len(text))
    while n - start > chunk_chars:
        lo, hi = start + chunk_chars // 2, start + chunk_chars
        cut = _best_cut(text, lo, hi, n)
        while cut is None and not cut_anywhere and hi < n:  # look further on, a window at a time
            lo, hi = hi, min(hi + chunk_chars, n)
            cut = _best_cut(text, lo, hi, n)
        if cut is None:
            cut = hi if cut_anywhere else n
        cut = _outside(text, cut, start, n, keep_whole)
        yield text[start:cut]
        start = cut
    if start < n:
        yield text[start:n]


def _outside(text: str, cut: int, start: int, end: int, keep_whole: Sequence[str]) -> int:
    """``cut`` moved before (or, at the piece's start, after) any ``keep_whole`` string it splits."""
    for word in keep_whole:
        width = len(word)
        if width < 2:
            continue
        at = text.find(word, max(start, cut - width + 1), min(end, cut + width - 1))
        if at != -1 and at < cut < at + width:
            cut = at if at > start else at + width
    return cut


def _best_cut(text: str, lo: int, hi: int, end: int) -> int | None:
    """The best safe cut in [lo, hi): a newline, else a space, else letter→punctuation; None if none."""
    cut = _find_cut(text, lo, hi, end, "\n", after=True) or _find_cut(text, lo, hi, end, " ", after=False)
    if cut:
        return cut
    last = None
    for match in _PUNCT_CUT.finditer(text, lo, min(hi, end - 1) + 1):
        category = unicodedata.category(text[match.end()])
        if category[0] == "P" and category != "Pc":  # not a mark or a symbol: those can be in a word
            last = match.end()
    return last if last is not None and lo < last < end else None


def _find_cut(text: str, lo: int, hi: int, end: int, sep: str, after: bool) -> int | None:
    """The last index in [lo, hi) of ``sep`` with non-space characters on both sides (before ``end``)."""
    pos = text.rfind(sep, lo, hi)
    while pos > 0:
        if pos + 1 < end and not text[pos - 1].isspace() and not text[pos + 1].isspace():
            return pos + 1 if after else pos
        pos = text.rfind(sep, lo, pos)
    return None


def split_ranges(n_chars: int, val_fraction: float, val_split: str = "end") -> tuple[range, range]:
    """(train, val) character ranges: with "end" the last ``val_fraction`` validates.

    The cut is exact, at character ``int(n_chars * (1 - val_fraction))`` (the usual
    convention, so numbers compare with published character-level benchmarks).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ParamError(f"data.val_fraction: {val_fraction} must be at least 0 and below 1")
    if val_split == "end":
        cut = int(n_chars * (1.0 - val_fraction))
        return range(cut), range(cut, n_chars)
    if val_split == "start":
        cut = int(n_chars * val_fraction)
        return range(cut, n_chars), range(cut)
    raise ParamError(f"data.val_split: {val_split!r} is not one of 'end', 'start'")


def split_text(text: str, val_fraction: float, val_split: str = "end") -> tuple[str, str]:
    """(train, val) texts by characters (see :func:`split_ranges`)."""
    train, val = split_ranges(len(text), val_fraction, val_split)
    return text[train.start : train.stop], text[val.start : val.stop]


_ENCODE_CHUNK_CHARS = 1 << 16  # small enough for smooth progress and little transient memory
_TABLE_CHUNK_CHARS = 1 << 18  # a lookup-table encoder has little per-call cost; small transients


def _gpt2_byte_chars() -> list[str]:
    """The printable stand-in character of each byte that a ByteLevel pre-tokenizer emits (GPT-2's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


class TableEncoder:
    """What a tokenizer whose every character (or UTF-8 byte) is one token encodes, by table lookup.

    The char and byte tokenizers map each character (byte) to one ID whatever surrounds it
    (:attr:`Tokenizer.cuts_anywhere`); NumPy does that lookup at hundreds of MB/s where the
    library's general pipeline manages a few. The result is the library's exactly: an unknown
    character becomes the model's ``unk_token`` (or is dropped, as the library drops it, when
    there is none), and a piece holding an added token's string is left to the library
    (:meth:`encode` answers None), since the library matches those before anything else.
    """

    def __init__(self, table: np.ndarray, by_bytes: bool, unk: int | None, added: tuple[str, ...]) -> None:
        self.table = table  # int32 ID per code point (or byte); -1 = not in the vocabulary
        self.by_bytes = by_bytes
        self.unk = unk
        self.added = added

    @classmethod
    def of(cls, tokenizer: object) -> TableEncoder | None:
        """The table encoder equivalent to ``tokenizer``, or None when it is not that simple."""
        if not getattr(tokenizer, "cuts_anywhere", False) or not hasattr(tokenizer, "to_json"):
            return None
        import json

        try:
            spec = json.loads(tokenizer.to_json())  # type: ignore[attr-defined]
            model, pre = spec["model"], spec.get("pre_tokenizer")
            vocab: dict[str, int] = model["vocab"]
            unk_token = model.get("unk_token")
        except (KeyError, TypeError, ValueError, LMStudioError):
            return None
        unk = vocab.get(unk_token) if unk_token else None
        if unk_token and unk is None:  # the library fails on an unknown character: let it say so
            return None
        if pre is None:
            singles = {ord(k): v for k, v in vocab.items() if len(k) == 1}
            table = np.full(max(singles, default=0) + 1, -1, np.int32)
            for code, tid in singles.items():
                table[code] = tid
            by_bytes = False
        elif pre.get("type") == "ByteLevel":
            table = np.array([vocab.get(ch, -1) for ch in _gpt2_byte_chars()], np.int32)
            by_bytes = True
        else:
            return None
        added = tuple(getattr(tokenizer, "added_strings", ()))
        return cls(table, by_bytes, unk, added)

    def encode(self, text: str) -> np.ndarray | None:
        """The IDs of ``text``; None when an added token's string occurs in it (the library's case)."""
        if any(word in text for word in self.added):
            return None
        try:
            if text.isascii():  # one byte per character, and code point = byte
                codes = np.frombuffer(text.encode("ascii"), np.uint8)
            elif self.by_bytes:
                codes = np.frombuffer(text.encode("utf-8"), np.uint8)
            else:
                codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        except UnicodeEncodeError:  # a lone surrogate: the library says what it makes of it
            return None
        top = len(self.table)
        if codes.dtype == np.uint8 and top >= 256:
            ids = self.table[codes]
        else:  # a code point past the table's end is not in the vocabulary
            index = codes.astype(np.intp)
            beyond = index >= top
            index[beyond] = 0
            ids = self.table[index]
            ids[beyond] = -1
        unknown = ids < 0
        if unknown.any():
            ids = ids[~unknown] if self.unk is None else np.where(unknown, self.unk, ids)
        return ids
# encode_batch runs these in parallel in the Rust library: enough to keep every core busy
_CHUNKS_PER_BATCH = max(8, 2 * (os.cpu_count() or 1))
_ESTIMATE_SLACK = 1.02  # over-allocate the estimated size a little rather than grow at the end


def tokenize_corpus(
    tokenizer: Tokenizer,
    text: str,
    val_fraction: float = 0.1,
    val_split: str = "end",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    memmap_dir: str | Path | None = None,
    memmap_threshold_tokens: int = 50_000_000,
) -> TokenizedCorpus:
    """Split ``text`` and encode both parts into compact token arrays.

    ``progress(chars_done, chars_total)`` follows the encoding; ``cancel()`` is checked between
    batches of chunks and raises :class:`Cancelled`. A part growing past
    ``memmap_threshold_tokens`` is spilled to ``<memmap_dir>/{train,val}.bin`` when a folder is
    given, so huge corpora need little memory.
    """
    if not text:
        raise DataError("the corpus is empty; add some text")
    vocab_size = tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    ranges = split_ranges(len(text), val_fraction, val_split)
    total, done = len(text), 0
    tokens_per_char: float | None = None  # measured on the first batch, used to size the arrays
    if progress is not None:
        progress(0, total)
    release_freed_memory()  # what a tokenizer's training freed, before the token arrays are allocated
    parts: dict[str, np.ndarray] = {}
    buffers: list[_TokenBuffer] = []
    table = TableEncoder.of(tokenizer)  # char/byte tokenizers: a NumPy lookup, not the library
    added = tuple(getattr(tokenizer, "added_strings", ()))
    n_bytes = {"train": 0, "val": 0}  # UTF-8 bytes of each part, counted chunk by chunk (no copy of a part)
    try:
        for name, span in zip(("train", "val"), ranges):
            spill = Path(memmap_dir) / f"{name}.bin" if memmap_dir is not None else None
            guess = len(span) if tokens_per_char is None else int(len(span) * tokens_per_char * _ESTIMATE_SLACK)
            buffer = _TokenBuffer(dtype, vocab_size, spill, memmap_threshold_tokens, min(guess, 1 << 16) + 16)
            buffers.append(buffer)
            if tokens_per_char is not None:
                buffer.expect(guess + 1024)
            chunks = iter_text_chunks(text, _TABLE_CHUNK_CHARS if table else _ENCODE_CHUNK_CHARS,
                                      span.start, span.stop, cut_anywhere=table is not None, keep_whole=added)
            while batch := [c for _, c in zip(range(1 if table else _CHUNKS_PER_BATCH), chunks)]:
                _check_cancel(cancel)
                for ids in _encode_batch(tokenizer, table, batch):
                    buffer.extend(ids)
                chars = sum(len(c) for c in batch)
                n_bytes[name] += sum(utf8_size(c) for c in batch)
                if tokens_per_char is None:
                    tokens_per_char = buffer.size / chars
                    buffer.expect(int(len(span) * tokens_per_char * _ESTIMATE_SLACK) + 1024)
                done += chars
                if progress is not None:
                    progress(done, total)
            parts[name] = buffer.finish()
    except BaseException:
        parts.clear()  # release finished memmaps before their files go
        for buffer in buffers:
            buffer.discard()
        raise
    finally:
        release_freed_memory()
    return TokenizedCorpus(train=parts["train"], val=parts["val"], vocab_size=vocab_size, n_chars=len(text),
                           train_bytes=n_bytes["train"], val_bytes=n_bytes["val"])


def utf8_size(text: str) -> int:
    """The UTF-8 byte count of ``text``: ASCII needs no encoding pass (one byte per character);
    a lone surrogate (which UTF-8 cannot hold) counts as its 3-byte encoding."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _encode_batch(tokenizer: Tokenizer, table: TableEncoder | None, batch: list[str]) -> list[Sequence[int]]:
    if table is None:
        return tokenizer.encode_batch(batch)
    out: list[Sequence[int]] = []
    for text in batch:
        ids = table.encode(text)
        out.append(ids if ids is not None else tokenizer.encode_batch([text])[0])
    return out


def release_freed_memory() -> None:
    """Give memory freed by the tokenizer's worker threads back to the system.

    glibc keeps freed blocks in per-thread arenas, so without this a process that tokenized a
    big corpus stays hundreds of MB larger than what it still uses. Elsewhere: nothing to do.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("tokenizing cancelled")


class BatchSampler:
    """Random (input, target) windows from a token array, reproducible from a seed."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context_length: int,
        seed: int,
        device: torch.device | str = "cpu",
        split: str = "train",
    ) -> None:
        if len(tokens) <= context_length:
            hint = "add text, raise data.val_fraction" if split == "val" else "add text"
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, fewer than the context length "
                f"{context_length} + 1; {hint} or lower model.context_length"
            )
        self.batch_size = batch_size
        self.context_length = context_length
        self.split = split
        self.device = torch.device(device)
        self._tokens = tokens
        self._window = np.arange(context_length + 1)  # (T+1,)
        self._generator = torch.Generator().manual_seed(seed)
        self._pin = self.device.type == "cuda"

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y as int64 (B, T) on the device; y[:, t] is the token after x[:, t]."""
        high = len(self._tokens) - self.context_length  # last valid start + 1
        starts = torch.randint(high, (self.batch_size,), generator=self._generator)  # (B,)
        # NumPy fancy indexing: tens of microseconds, works on memmaps (only touched pages are
        # read), and is far faster on CPU than torch's advanced indexing for this shape.
        index = starts.numpy()[:, None] + self._window[None, :]  # (B, T+1)
        windows = torch.from_numpy(self._tokens[index].astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each
        if self.device.type == "cpu":
            return x, y
        if self._pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=self._pin), y.to(self.device, non_blocking=self._pin)

    def get_state(self) -> torch.Tensor:
        """The random generator's state (a uint8 tensor) for a checkpoint."""
        return self._generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state from :meth:`get_state`, so a resumed run draws the same batches."""
        try:
            self._generator.set_state(state.detach().to("cpu", torch.uint8))
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{self.split} batch sampler: the saved random state does not fit ({first})") from None
