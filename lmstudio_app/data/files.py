"""The data path: text files → one corpus string (here) → token arrays → batches (corpus.py).

Everything here is Qt-free. Reading is strict and explains itself (one-line :class:`DataError`
messages that name the file and say what to do), reports progress per file and can be
cancelled between files. Every file is vetted before any is read (a regular file, not a FIFO,
a device or a symlink loop, within :data:`CORPUS_FILE_LIMIT`; the corpus within the memory
available) and read through :mod:`lmstudio_app.file_reads`; NUL bytes are looked for in the whole
file, not a sample. The token arrays, tokenizing and batch sampling live in
:mod:`lmstudio_app.data.corpus`.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Cancelled, DataError, LMStudioError
from ..file_reads import GIB, check_regular_file, human_size, read_bytes

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
# The largest single corpus file read: the text is held in memory as one string (and its tokens
# beside it), so a bigger file is refused before a byte is read instead of exhausting memory.
CORPUS_FILE_LIMIT = 8 * GIB
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
    if not os.path.lexists(path):
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a text file")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r}") from None
    # A FIFO, a device (a symlink to /dev/zero), a folder or a symlink loop is refused before any
    # read, a file rewritten while it is read is read again: see file_reads.
    data = read_bytes(path, what="corpus file", max_bytes=CORPUS_FILE_LIMIT, error=DataError)
    if not data:
        raise DataError(f"{path}: the file is empty")
    kind = _binary_kind(data)
    if kind:
        raise DataError(f"{path}: looks like a binary file ({kind}), not text")
    wide_codec = codec.startswith(("utf-16", "utf-32"))
    # The whole file, not a sample: a NUL byte found by memchr costs ~0.1 s per GB, and one past
    # the first block would otherwise enter the vocabulary as a character.
    nul = -1 if wide_codec else data.find(b"\x00")
    if nul >= 0:
        detected = detect_encoding(data)
        if detected and detected.startswith(("utf-16", "utf-32")):
            raise DataError(f"{path}: looks like {detected} text — choose that encoding to read it")
        raise DataError(f"{path}: looks like a binary file (it contains NUL bytes), not text; "
                        f"the first is at byte {nul:,}")
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
    _refuse_nul(path, text)
    return text


def _refuse_nul(path: Path, text: str) -> None:
    """A NUL character in decoded text (UTF-16 ``00 00``, a JSON ``\\u0000``) is binary data too."""
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(f"{path}: contains a NUL character at character {nul:,}; is it a binary file?")


def _refuse_surrogates(path: Path, text: str) -> None:
    """A lone surrogate (a JSON ``\\ud800`` from a reader) is no character: no tokenizer can take it."""
    step = 1 << 24  # in slices: the check never holds a second copy of a big text
    for start in range(0, len(text), step):
        try:
            text[start : start + step].encode("utf-8")
        except UnicodeEncodeError as exc:
            at = start + exc.start
            raise DataError(f"{path}: contains a lone surrogate (U+{ord(text[at]):04X}) at character "
                            f"{at:,}, which is not text") from None


def collect_files(paths: Sequence[str | Path], extensions: Collection[str] = TEXT_EXTENSIONS) -> list[Path]:
    """Expand files and folders into a list of files, in a stable order, without duplicates.

    Files named explicitly are kept whatever their extension; folders are walked recursively in
    sorted order, skipping hidden files and folders and keeping only ``extensions``.
    """
    wanted = {e.lower() for e in extensions}
    found: dict[Path, None] = {}  # an ordered set
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            if not os.path.lexists(path):
                raise DataError(f"{path}: no such file or folder")
            _check_corpus_file(path)  # a FIFO, a device, a symlink loop: named now, never opened
            found.setdefault(path, None)
            continue
        before = len(found)
        for root, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in wanted:
                    file = Path(root, name)
                    _check_corpus_file(file)
                    found.setdefault(file, None)
        if len(found) == before:
            listed = ", ".join(sorted(wanted))
            raise DataError(f"{path}: the folder has no text files ({listed})")
    return list(found)


def _check_corpus_file(path: Path) -> int:
    """The size of a corpus file that is a regular file within :data:`CORPUS_FILE_LIMIT`.

    A folder's ``*.txt`` that is a FIFO would block ``open()`` forever and one that links to
    ``/dev/zero`` would never end: each is refused by name before any file is read.
    """
    return check_regular_file(path, what="corpus file", max_bytes=CORPUS_FILE_LIMIT, error=DataError)


def _check_total(files: Sequence[Path], sizes: Sequence[int]) -> None:
    """Refuse a corpus that cannot fit in memory before reading any of it (the text is one string)."""
    total = sum(sizes)
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # no figure on this platform: the per-file limit still holds
        return
    if total > available:
        raise DataError(
            f"{files[0].parent if len(files) > 1 else files[0]}: the corpus is {human_size(total)} in "
            f"{len(files)} files, more than the {human_size(available)} of memory available; use fewer files"
        )


def load_corpus_text(
    paths: Sequence[str | Path],
    readers: Mapping[str, Callable[[Path], str]] | None = None,
    encoding: str = "utf-8",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[str, list[FileInfo]]:
    """Read every file into one string (files joined by a blank line) plus per-file facts.

    ``readers`` maps an extension (``.jsonl``) to a read function from a corpus-reader plugin;
    other files are read with :func:`read_text_file`. A non-default ``encoding`` is the user's
    explicit choice for plain text that is not UTF-8, so it then overrides any reader for
    ``TEXT_EXTENSIONS``; files that are valid UTF-8 are still read as UTF-8.
    ``progress(bytes_done, bytes_total)`` is called after each file; ``cancel()`` is checked
    before each file and raises :class:`Cancelled` (a folder of thousands of files takes a while).
    """
    readers = {ext.lower(): fn for ext, fn in (readers or {}).items()}
    files = collect_files(paths, (*TEXT_EXTENSIONS, *readers))
    if not files:
        raise DataError("no text files chosen; add a file or folder")
    explicit_encoding = _codec_name(encoding) != "utf-8"
    sizes = [_check_corpus_file(f) for f in files]
    _check_total(files, sizes)
    total, done = sum(sizes), 0
    texts: list[str] = []
    infos: list[FileInfo] = []
    for path, size in zip(files, sizes):
        if cancel is not None and cancel():
            raise Cancelled(f"reading cancelled after {len(infos)} of {len(files)} files")
        ext = path.suffix.lower()
        reader = readers.get(ext)
        if reader is None or (explicit_encoding and ext in TEXT_EXTENSIONS):
            text, used = _read_as(path, encoding)
        else:
            text, used = _call_reader(reader, path), getattr(reader, "__name__", "reader")
            _refuse_nul(path, text)
            _refuse_surrogates(path, text)
        texts.append(text)
        infos.append(FileInfo(path=path, size_bytes=size, n_chars=len(text), encoding=used))
        done += size
        if progress is not None:
            progress(done, total)
    return "\n\n".join(texts), infos


def _read_as(path: Path, encoding: str) -> tuple[str, str]:
    """(text, codec used): files that are valid UTF-8 stay UTF-8 whatever encoding was chosen.

    The person picks another encoding for the file that was not UTF-8; applying it to every
    file of a mixed corpus would silently garble the others (UTF-8 read as latin-1 or UTF-16).
    """
    if _codec_name(encoding) != "utf-8":
        try:
            return read_text_file(path, "utf-8"), "utf-8"
        except DataError:
            pass  # not UTF-8 (or not readable at all: the chosen encoding says why below)
    return read_text_file(path, encoding), encoding


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
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {first})") from None
    if not isinstance(text, str):
        raise DataError(f"{path}: the reader returned {type(text).__name__}, not text")
    if not text:
        raise DataError(f"{path}: no text in the file")
    return text


