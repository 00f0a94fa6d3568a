"""Bounded reads of regular files: the one way the app reads a file it did not just write.

A path the user (or someone else's run folder) hands us may be a FIFO that blocks ``open()``
forever, a symlink to ``/dev/zero`` that never ends, a directory, a symlink loop, or a regular
file far larger than anything sensible for its role. Every reader here opens without blocking,
checks on the *open* descriptor that it is a regular file (so a swap between check and open
cannot slip a FIFO through), refuses files over the caller's size limit before reading a byte,
never reads more than that limit even if the file grows meanwhile, and reads a file again when
it was rewritten during the read (its inode, size or times moved), so no caller ever gets part
of the old and part of the new content.

Errors are raised as the caller's own error class (``DataError`` for a corpus,
``CheckpointError`` for a run folder, ...) with a one-line message naming the path.
Imports nothing from the app but ``errors``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from lmstudio_app.errors import LMStudioError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Size limits for the app's own small files (a run's JSON and TOML, settings, presets): far
# above anything the app writes, far below what could exhaust memory.
SMALL_FILE_LIMIT = 16 * MIB
# tokenizer.json of a 1M-token BPE vocabulary is ~100 MB.
TOKENIZER_FILE_LIMIT = 512 * MIB


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_stat(path: Path, st: os.stat_result, what: str, max_bytes: int | None,
                error: type[LMStudioError]) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: the {what} is {_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(
            f"{path}: the {what} is {human_size(st.st_size)}, more than the {human_size(max_bytes)} "
            f"this app reads for a {what}"
        )
    return st.st_size


def _os_error(path: Path, what: str, exc: OSError, error: type[LMStudioError]) -> LMStudioError:
    if exc.errno == errno.ELOOP:
        return error(f"{path}: the {what} is a symbolic link that loops back on itself")
    if exc.errno == errno.ENOENT:
        return error(f"{path}: the {what} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return error(f"{path}: no permission to read the {what}")
    return error(f"{path}: cannot read the {what} ({exc.strerror or exc})")


def check_regular_file(path: str | Path, *, what: str = "file", max_bytes: int | None = None,
                       error: type[LMStudioError] = LMStudioError) -> int:
    """The size of ``path`` if it is a regular file (symlinks followed) within ``max_bytes``.

    Does not open the file, so it is safe on a FIFO; use it to vet a folder's files before
    reading any of them. Readers still re-check on the open descriptor.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, what, exc, error) from None
    return _check_stat(path, st, what, max_bytes, error)


def open_regular(path: str | Path, *, what: str = "file", max_bytes: int | None = None,
                 error: type[LMStudioError] = LMStudioError) -> tuple[int, int]:
    """Open ``path`` for reading without ever blocking: ``(fd, size)``; the caller closes ``fd``.

    ``O_NONBLOCK`` makes ``open()`` of a FIFO return at once instead of waiting for a writer;
    the descriptor is then checked with ``fstat`` and put back into blocking mode.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, what, exc, error) from None
    try:
        size = _check_stat(path, os.fstat(fd), what, max_bytes, error)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


# A file whose size, modification time or inode moved during the read was rewritten meanwhile: the
# bytes may mix the old and the new content. Read it again this many times, then refuse.
CHANGED_REREADS = 2


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the open file (a seam the tests use to rewrite a file mid-read)."""
    with os.fdopen(os.dup(fd), "rb", closefd=True) as fh:
        return fh.read(limit)


def read_bytes(path: str | Path, *, what: str = "file", max_bytes: int = SMALL_FILE_LIMIT,
               error: type[LMStudioError] = LMStudioError) -> bytes:
    """All of a regular file of at most ``max_bytes`` bytes (refused, unread, when larger).

    The file's identity (inode, size, modification and change times) is compared before and after
    the read; a file rewritten while it was read is read again (:data:`CHANGED_REREADS` times), and
    refused if it keeps changing, so no caller ever gets half of the old and half of the new file.
    """
    path = Path(path)
    for _attempt in range(CHANGED_REREADS + 1):
        fd, _size = open_regular(path, what=what, max_bytes=max_bytes, error=error)
        try:
            before = _identity(os.fstat(fd))
            # One byte past the limit tells a file that grew after the check from one that did not.
            data = _read_fd(fd, max_bytes + 1)
            after = _identity(os.fstat(fd))
        except OSError as exc:
            raise _os_error(path, what, exc, error) from None
        finally:
            os.close(fd)
        if len(data) > max_bytes:
            raise error(f"{path}: the {what} grew past {human_size(max_bytes)} while it was read")
        if before == after:
            return data
    raise error(
        f"{path}: the {what} kept changing while it was read ({CHANGED_REREADS + 1} tries); "
        "wait for the program writing it to finish, or copy it and read the copy"
    )


def read_text(path: str | Path, *, what: str = "file", max_bytes: int = SMALL_FILE_LIMIT,
              error: type[LMStudioError] = LMStudioError, encoding: str = "utf-8") -> str:
    """A regular text file of at most ``max_bytes`` bytes, decoded (a bad byte names its offset)."""
    data = read_bytes(path, what=what, max_bytes=max_bytes, error=error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{Path(path)}: the {what} is not valid {encoding} at byte {exc.start}") from None
    except LookupError:
        raise error(f"{Path(path)}: unknown text encoding {encoding!r}") from None
