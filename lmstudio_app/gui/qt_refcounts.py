"""A guard against PySide6 builds that drop references to ``None``, ``True`` and ``False``.

PySide6 6.12.0 returns ``True`` from ``SignalInstance.emit()`` without a new reference, and
loses a reference to ``None`` on every call into a Python slot (a timer tick, a queued signal,
``QObject.sender()``). On Python 3.12+ these singletons are immortal (PEP 683) and nothing
happens. On 3.10/3.11 every leak lowers their reference count until the interpreter aborts with
"Fatal Python error: none_dealloc" (or ``bool_dealloc``): after minutes to hours of training,
depending on how fast the app emits — a long run would cost the person their session.

:func:`protect` measures the leak on the PySide6 that is installed and, only if there is one,
does what Python 3.12 does: gives the three singletons a reference count so large (2**40) that
no realistic number of leaks can bring it to zero. PySide6 6.11.x has no leak (and pyproject
excludes 6.12.0); this keeps an environment that already has 6.12.0 from crashing.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6.QtCore import QObject, Signal

_IMMORTAL_BOOST = 1 << 40  # refcount added to each singleton: ~10^12 leaks before trouble
_PROBE_CALLS = 200
_SINGLETONS: dict[str, object] = {"None": None, "True": True, "False": False}

protected: list[str] = []  # the singletons :func:`protect` boosted in this process


class _Probe(QObject):
    signal = Signal(object)


def _add_references(obj: object, count: int) -> None:
    ctypes.c_ssize_t.from_address(id(obj)).value += count  # ob_refcnt, the first field of every object


def _supported() -> bool:
    """CPython < 3.12 in a release build: the refcount is the object's first word and not immortal."""
    return (sys.version_info < (3, 12) and sys.implementation.name == "cpython"
            and not hasattr(sys, "gettotalrefcount"))


def leaks() -> dict[str, int]:
    """References to None/True/False that ``_PROBE_CALLS`` emits and ``sender()`` calls lose.

    The probe gives back what it lost itself, so measuring is harmless on a leaking build.
    """
    probe = _Probe()
    before = {name: sys.getrefcount(obj) for name, obj in _SINGLETONS.items()}
    for i in range(_PROBE_CALLS):
        probe.signal.emit(i)  # 6.12.0 loses a True here
        probe.sender()  # ... and a None here (outside a slot it returns None)
    lost = {name: before[name] - sys.getrefcount(obj) for name, obj in _SINGLETONS.items()}
    if _supported():
        for name, count in lost.items():
            if count > 0:
                _add_references(_SINGLETONS[name], count)
    # A healthy build loses nothing (give or take a cached object or two).
    return {name: count for name, count in lost.items() if count >= _PROBE_CALLS // 2}


def protect() -> list[str]:
    """Make None/True/False effectively immortal if (and only if) this PySide6 leaks them."""
    if protected or not _supported():
        return protected  # already done, or already immortal (3.12+), or not a refcount we can read
    if leaks():  # one leaking path means the build is broken: protect all three singletons
        for name, obj in _SINGLETONS.items():
            _add_references(obj, _IMMORTAL_BOOST)
            protected.append(name)
    return protected


def warning() -> str | None:
    """One line for the terminal when :func:`protect` had to step in."""
    if not protected:
        return None
    from PySide6 import __version__ as pyside_version

    return (f"PySide6 {pyside_version} loses references to {', '.join(protected)} on Python "
            f"{sys.version_info.major}.{sys.version_info.minor}; lmstudio compensates, but installing "
            "PySide6-Essentials 6.11.3 (or using Python 3.12+) fixes it properly")
