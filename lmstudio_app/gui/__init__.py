"""The desktop app: a thin Qt view over the core (``lmstudio_app.session``)."""

from . import qt_refcounts

# Before any widget exists: a PySide6 that leaks references to None/True/False would otherwise
# abort the interpreter hours into a training run (see qt_refcounts.py).
qt_refcounts.protect()
