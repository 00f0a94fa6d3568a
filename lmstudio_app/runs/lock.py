"""One writer per run folder: an OS lock held while a process trains in it.

Two processes training one run folder would interleave their metrics, truncate each other's
records and race on the same temporary checkpoint folder. :class:`RunLock` takes an exclusive,
non-blocking lock on ``<run>/.lock`` for as long as a trainer writes there; a second trainer (another
process, or another trainer in this one) is refused with one line naming the holder's pid.

The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so a
process killed with ``kill -9`` releases it with its last file descriptor: a stale lock is simply
taken over. The pid written into the file is only for the message. Where neither exists, the pid
file alone is the lock and a pid that no longer runs counts as stale.

Readers (predict, eval, the app opening a run to look at it) never take the lock.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from ..errors import CheckpointError

LOCK_FILE = ".lock"
_HOLDER_BYTES = 256  # "pid host\n": all that is read back from the lock file

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

# Windows locks are mandatory: lock a byte far past the pid so the message can still read it.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


class RunLock:
    """The exclusive lock on one run folder (see the module docstring); re-entrant per object."""

    def __init__(self, run_path: str | Path) -> None:
        self.run_path = Path(run_path)
        self.path = self.run_path / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise CheckpointError naming the process that holds it."""
        if self._fd is not None:
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags, 0o666)  # the umask applies, like any file the app writes
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CheckpointError(f"{self.path}: the run's lock file is a symbolic link; delete it") from None
            raise CheckpointError(f"{self.path}: cannot create the run's lock file ({exc.strerror or exc})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CheckpointError(f"{self.path}: the run's lock file is not a regular file; delete it")
            if not self._lock(fd):
                holder = self._holder(fd)
                if holder == f"pid {os.getpid()}":  # e.g. the app resuming a run it is still training
                    raise CheckpointError(f"{self.run_path}: a training run in this process ({holder}) is "
                                          "already writing to this run folder; stop it first")
                raise CheckpointError(
                    f"{self.run_path}: another process is training in this run folder ({holder}); "
                    "wait for it to finish or stop it first"
                )
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if fcntl is None and msvcrt is None:  # the pid file is the lock: remove it
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)  # closing releases an OS lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a trainer dropped without finishing must not keep the folder locked
        try:
            self.release()
        except Exception:
            pass

    # -- the platform's lock ------------------------------------------------------------------

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: a second trainer here is refused too
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise CheckpointError(f"{self.path}: cannot lock the run folder ({exc.strerror or exc})") from None
            return True
        if msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                return False
            return True
        # Neither: the pid file alone, taken over when its process is gone.  # pragma: no cover
        pid = self._holder_pid(fd)
        return pid is None or not _pid_alive(pid)

    def _holder_pid(self, fd: int) -> int | None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, _HOLDER_BYTES).decode("utf-8", "replace")
        except OSError:
            return None
        try:
            return int(text.split()[0])
        except (IndexError, ValueError):
            return None

    def _holder(self, fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            words = os.read(fd, _HOLDER_BYTES).decode("utf-8", "replace").split()
        except OSError:
            words = []
        if not words or not words[0].isdigit():
            return "pid unknown"
        host = f" on {words[1][:64]}" if len(words) > 1 and words[1] != socket.gethostname() else ""
        return f"pid {words[0]}{host}"
