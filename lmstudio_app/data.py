"""The data path: text files → one corpus string → train/val token arrays → batches.

Everything here is Qt-free. Reading is strict and explains itself (one-line :class:`DataError`
messages that name the file and say what to do); tokenizing works chunk by chunk into compact
``uint16``/``uint32`` arrays (memory-mapped for very large corpora) so a big corpus never sits
in a Python list; sampling draws random windows from the token array with a seeded generator
whose state is saved in checkpoints, so a resumed run sees the same batches.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import Cancelled, DataError, LMStudioError, ParamError
from .tokenizer import Tokenizer

TEXT_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst", ".text")

# Leading bytes of common binary formats, so a user who picks a picture is told so. Only
# signatures that cannot start ordinary text; other binaries are caught by their NUL bytes.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"%PDF-", "PDF document"), (b"PK\x03\x04", "ZIP archive or Office document"),
    (b"\x1f\x8b", "gzip archive"), (b"\xfd7zXZ", "xz archive"), (b"7z\xbc\xaf", "7-Zip archive"),
    (b"\x7fELF", "program"), (b"\xd0\xcf\x11\xe0", "old Office document"), (b"\x93NUMPY", "NumPy array"),
)
_BOMS: tuple[tuple[bytes, str], ...] = (  # longest first: the UTF-32 LE BOM starts like UTF-16's
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_SNIFF_BYTES = 1 << 16
# Bytes 0x80-0x9f are printable in cp1252 (curly quotes, dashes) but control codes in latin-1.
_CP1252_UNDEFINED = frozenset(b"\x81\x8d\x8f\x90\x9d")


@dataclass(frozen=True)
class FileInfo:
    """One file of the corpus as shown in the data panel."""

    path: Path
    size_bytes: int
    n_chars: int
    encoding: str  # the codec used, or the reader's name for files a reader plugin read


def _binary_kind(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def _looks_like_text(sample: str) -> bool:
    """Few control characters other than tab/newline/carriage return/form feed."""
    if not sample:
        return True
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\n\r\f")
    return controls <= len(sample) // 100


def detect_encoding(data: bytes) -> str | None:
    """A best guess at the codec of ``data``; None when it does not look like text.

    Byte-order marks win; then UTF-16 without a BOM (every other byte NUL); then UTF-8 if the
    bytes are valid UTF-8; then cp1252 or latin-1 for 8-bit text.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    sample = data[:_SNIFF_BYTES]
    if b"\x00" in sample:
        even, odd = sample[0::2], sample[1::2]
        for name, zeros, other in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
            if zeros and zeros.count(0) >= 0.3 * len(zeros) and other.count(0) <= 0.05 * len(other):
                try:
                    text = sample[: len(sample) // 2 * 2].decode(name, errors="strict")
                except UnicodeDecodeError:
                    continue
                if _looks_like_text(text):
                    return name
        return None
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    high = set(sample) & set(range(0x80, 0xA0))
    candidate = "cp1252" if high and not high & _CP1252_UNDEFINED else "latin-1"
    text = sample.decode(candidate, errors="replace")
    return candidate if _looks_like_text(text) else None


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """The text of one file, or a one-line :class:`DataError` naming it and saying why not.

    Newlines are normalised to ``\\n`` (as Python's text mode does) and a leading byte-order
    mark is dropped. ``encoding`` is any Python codec name.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a text file")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: the file is empty")
    kind = _binary_kind(data)
    if kind:
        raise DataError(f"{path}: looks like a binary file ({kind}), not text")
    wide_codec = codec.startswith(("utf-16", "utf-32"))
    if b"\x00" in data[:_SNIFF_BYTES] and not wide_codec:
        detected = detect_encoding(data)
        if detected and detected.startswith(("utf-16", "utf-32")):
            raise DataError(f"{path}: looks like {detected} text — choose that encoding to read it")
        raise DataError(f"{path}: looks like a binary file (it contains NUL bytes), not text")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        detected = detect_encoding(data)
        where = f"{path}: not valid {'UTF-8' if codec == 'utf-8' else codec} at byte {exc.start}"
        if detected and codecs.lookup(detected).name != codec:
            raise DataError(f"{where}; it looks like {detected} — choose that encoding to read it") from None
        raise DataError(f"{where}; choose the file's encoding (e.g. latin-1, cp1252, utf-16)") from None
    text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        raise DataError(f"{path}: the file is empty")
    return text


def collect_files(paths: Sequence[str | Path], extensions: Collection[str] = TEXT_EXTENSIONS) -> list[Path]:
    """Expand files and folders into a list of files, in a stable order, without duplicates.

    Files named explicitly are kept whatever their extension; folders are walked recursively in
    sorted order, skipping hidden files and folders and keeping only ``extensions``.
    """
    wanted = {e.lower() for e in extensions}
    found: dict[Path, None] = {}  # an ordered set
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found.setdefault(path, None)
            continue
        if not path.is_dir():
            raise DataError(f"{path}: no such file or folder")
        before = len(found)
        for root, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted:
                    found.setdefault(Path(root, name), None)
        if len(found) == before:
            listed = ", ".join(sorted(wanted))
            raise DataError(f"{path}: the folder has no text files ({listed})")
    return list(found)


def load_corpus_text(
    paths: Sequence[str | Path],
    readers: Mapping[str, Callable[[Path], str]] | None = None,
    encoding: str = "utf-8",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, list[FileInfo]]:
    """Read every file into one string (files joined by a blank line) plus per-file facts.

    ``readers`` maps an extension (``.jsonl``) to a read function from a corpus-reader plugin;
    other files are read with :func:`read_text_file`. A non-default ``encoding`` is the user's
    explicit choice for plain text, so it then overrides any reader for ``TEXT_EXTENSIONS``.
    ``progress(bytes_done, bytes_total)`` is called after each file.
    """
    readers = {ext.lower(): fn for ext, fn in (readers or {}).items()}
    files = collect_files(paths, (*TEXT_EXTENSIONS, *readers))
    if not files:
        raise DataError("no text files chosen; add a file or folder")
    explicit_encoding = _codec_name(encoding) != "utf-8"
    sizes = [f.stat().st_size for f in files]
    total, done = sum(sizes), 0
    texts: list[str] = []
    infos: list[FileInfo] = []
    for path, size in zip(files, sizes):
        ext = path.suffix.lower()
        reader = readers.get(ext)
        if reader is None or (explicit_encoding and ext in TEXT_EXTENSIONS):
            text, used = read_text_file(path, encoding), encoding
        else:
            text, used = _call_reader(reader, path), getattr(reader, "__name__", "reader")
        texts.append(text)
        infos.append(FileInfo(path=path, size_bytes=size, n_chars=len(text), encoding=used))
        done += size
        if progress is not None:
            progress(done, total)
    return "\n\n".join(texts), infos


def _codec_name(name: str) -> str:
    """Python's canonical name of a codec (latin1 → iso8859-1); unknown names unchanged."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        return name


def _call_reader(reader: Callable[[Path], str], path: Path) -> str:
    try:
        text = reader(path)
    except LMStudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader plugin's bug or a malformed file: name the file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {first})") from None
    if not isinstance(text, str):
        raise DataError(f"{path}: the reader returned {type(text).__name__}, not text")
    if not text:
        raise DataError(f"{path}: no text in the file")
    return text


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token ID: uint16 up to 65,536 tokens."""
    if vocab_size <= 0:
        raise DataError(f"vocabulary size {vocab_size}: a tokenizer needs at least one token")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocabulary size {vocab_size:,} is too large (at most {1 << 32:,} token IDs)")


class _TokenBuffer:
    """A growable token array: doubling in memory, spilling to a memory-mapped file when large."""

    def __init__(self, dtype: np.dtype, spill_path: Path | None, spill_threshold: int, initial: int) -> None:
        self.dtype = dtype
        self.spill_path = spill_path
        self.spill_threshold = spill_threshold
        self.array: np.ndarray = np.empty(max(initial, 16), dtype)
        self.size = 0
        self.mapped = False  # stays True once spilled, so discard() knows there is a file

    def extend(self, ids: Sequence[int]) -> None:
        n = len(ids)
        if self.size + n > len(self.array):
            self._grow(self.size + n)
        self.array[self.size : self.size + n] = ids
        self.size += n

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * len(self.array))
        if self.mapped:
            self._remap(capacity)
        elif self.spill_path is not None and capacity > self.spill_threshold:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            mapped = np.memmap(self.spill_path, self.dtype, mode="w+", shape=(capacity,))
            mapped[: self.size] = self.array[: self.size]
            self.array, self.mapped = mapped, True
        else:
            grown = np.empty(capacity, self.dtype)
            grown[: self.size] = self.array[: self.size]
            self.array = grown

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
        """The tokens written, trimmed: a compact copy, or the file mapped again read-only."""
        if not self.mapped:
            return self.array[: self.size].copy()
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

    @property
    def n_tokens(self) -> int:
        return int(len(self.train) + len(self.val))

    @property
    def chars_per_token(self) -> float:
        """Compression: how many characters one token covers on average."""
        return self.n_chars / self.n_tokens if self.n_tokens else 0.0


def iter_text_chunks(text: str, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Pieces of about ``chunk_chars`` characters, cut where tokenizing cannot be affected.

    The preferred cut is after a lone newline between two non-space characters (word and
    GPT-2-style pre-tokenizers split there anyway); failing that, before a single space
    between two non-space characters; failing that, anywhere.
    """
    if chunk_chars < 2:
        raise ParamError(f"chunk_chars: {chunk_chars} is below the minimum 2")
    start, n = 0, len(text)
    while n - start > chunk_chars:
        lo, hi = start + chunk_chars // 2, start + chunk_chars
        cut = _find_cut(text, lo, hi, "\n", after=True) or _find_cut(text, lo, hi, " ", after=False) or hi
        yield text[start:cut]
        start = cut
    if start < n:
        yield text[start:]


def _find_cut(text: str, lo: int, hi: int, sep: str, after: bool) -> int | None:
    """The last index in [lo, hi) of ``sep`` with non-space characters on both sides."""
    pos = text.rfind(sep, lo, hi)
    while pos > 0:
        if pos + 1 < len(text) and not text[pos - 1].isspace() and not text[pos + 1].isspace():
            return pos + 1 if after else pos
        pos = text.rfind(sep, lo, pos)
    return None


def split_text(text: str, val_fraction: float, val_split: str = "end") -> tuple[str, str]:
    """(train, val) by characters: with "end" the last ``val_fraction`` validates.

    The cut is exact, at character ``int(len(text) * (1 - val_fraction))`` (the usual
    convention, so numbers compare with published character-level benchmarks).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ParamError(f"data.val_fraction: {val_fraction} must be at least 0 and below 1")
    if val_split == "end":
        cut = int(len(text) * (1.0 - val_fraction))
        return text[:cut], text[cut:]
    if val_split == "start":
        cut = int(len(text) * val_fraction)
        return text[cut:], text[:cut]
    raise ParamError(f"data.val_split: {val_split!r} is not one of 'end', 'start'")


_ENCODE_CHUNK_CHARS = 1 << 18  # small enough for smooth progress, big enough to amortise calls
_CHUNKS_PER_BATCH = 8  # encode_batch runs these in parallel in the Rust library


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
    dtype = token_dtype(tokenizer.vocab_size)
    train_text, val_text = split_text(text, val_fraction, val_split)
    total, done = len(text), 0
    if progress is not None:
        progress(0, total)
    parts: dict[str, np.ndarray] = {}
    buffers: list[_TokenBuffer] = []
    try:
        for name, part in (("train", train_text), ("val", val_text)):
            spill = Path(memmap_dir) / f"{name}.bin" if memmap_dir is not None else None
            initial = min(len(part) + 1, 1 << 20, memmap_threshold_tokens if spill else 1 << 20)
            buffer = _TokenBuffer(dtype, spill, memmap_threshold_tokens, initial)
            buffers.append(buffer)
            chunks = iter_text_chunks(part, _ENCODE_CHUNK_CHARS)
            while batch := [c for _, c in zip(range(_CHUNKS_PER_BATCH), chunks)]:
                _check_cancel(cancel)
                for ids in tokenizer.encode_batch(batch):
                    buffer.extend(ids)
                done += sum(len(c) for c in batch)
                if progress is not None:
                    progress(done, total)
            parts[name] = buffer.finish()
    except BaseException:
        parts.clear()  # release finished memmaps before their files go
        for buffer in buffers:
            buffer.discard()
        raise
    return TokenizedCorpus(train=parts["train"], val=parts["val"], vocab_size=tokenizer.vocab_size,
                           n_chars=len(text))


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
