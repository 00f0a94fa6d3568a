"""Shared fixtures for the GUI tests (pytest-qt, offscreen). Any tests/gui/test_*.py may use them.

- ``lmstudio_home`` (autouse): ``LMSTUDIO_HOME`` → ``tmp_path/"home"`` and the plugin env switches
  unset, so settings, recent files, runs and the user plugin folder never touch the real home.
- ``modals`` (autouse): ``QDialog.exec`` and ``QMessageBox.exec`` record the dialog instead of
  blocking. ``modals.shown`` lists :class:`ShownDialog` records (kind, title, text, details);
  queue answers for the next message boxes with ``modals.answers.append(QMessageBox.StandardButton.Yes)``
  (default answer: No / Rejected).
- ``tiny_text_file``: a ~20 kB UTF-8 text file made of sentences of the demo grammar.
- ``tiny_config``: a RunConfig that trains in seconds: char tokenizer, gpt n_layer=1 n_embd=32
  n_head=2 context_length=16, batch 4, 40 steps, eval every 10, CPU, float32.
- ``registry``: ``PluginRegistry.discover(use_user_dir=False)`` (the built-ins via entry points).
- ``session``: ``Session(registry, tiny_config)`` reading ``tiny_text_file`` (tokenizer not built).
- ``events``: a fresh ``AppEvents`` over ``session`` (its events on the GUI thread).
- ``main_window``: a shown ``MainWindow`` over ``session``; closed (training stopped) at teardown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QDialog, QMessageBox

from lmstudio_app.config import RunConfig, load_preset
from lmstudio_app.resources import demo_corpus_path

TINY_PRESET = """
[tokenizer]
plugin = "char"

[model]
plugin = "gpt"
n_layer = 1
n_embd = 32
n_head = 2
context_length = 16

[train]
device = "cpu"
dtype = "float32"
batch_size = 4
max_steps = 40
warmup_steps = 5
eval_interval = 10
eval_batches = 2
log_interval = 1
sample_tokens = 16
checkpoint_interval = 0
"""


@dataclass
class ShownDialog:
    kind: str  # the dialog's class name, e.g. "ErrorDialog", "QMessageBox"
    title: str
    text: str
    details: str


@dataclass
class ModalRecorder:
    shown: list[ShownDialog] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)  # popped by the next QMessageBox.exec

    def record(self, dialog: QDialog) -> ShownDialog:
        text = dialog.text() if isinstance(dialog, QMessageBox) else getattr(dialog, "message", "")
        details = dialog.detailedText() if isinstance(dialog, QMessageBox) else getattr(dialog, "details", "")
        entry = ShownDialog(type(dialog).__name__, dialog.windowTitle(), text, details)
        self.shown.append(entry)
        return entry

    def of_kind(self, kind: str) -> list[ShownDialog]:
        return [d for d in self.shown if d.kind == kind]


@pytest.fixture(scope="session", autouse=True)
def gui_thread_gc(qapp):
    """As in the app: garbage cycles are collected by the GUI thread only, for every GUI test
    (a collection in a worker thread can free Qt objects there)."""
    from lmstudio_app.gui import gc_guard

    return gc_guard.install()


@pytest.fixture(autouse=True)
def lmstudio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LMSTUDIO_HOME", str(home))
    monkeypatch.delenv("LMSTUDIO_PLUGINS", raising=False)
    monkeypatch.delenv("LMSTUDIO_STRICT_PLUGINS", raising=False)
    return home


@pytest.fixture(autouse=True)
def modals(monkeypatch: pytest.MonkeyPatch) -> ModalRecorder:
    recorder = ModalRecorder()

    def dialog_exec(self: QDialog) -> int:
        recorder.record(self)
        return int(QDialog.DialogCode.Rejected.value)

    def message_box_exec(self: QMessageBox) -> int:
        recorder.record(self)
        answer = recorder.answers.pop(0) if recorder.answers else QMessageBox.StandardButton.No
        return int(getattr(answer, "value", answer))

    monkeypatch.setattr(QDialog, "exec", dialog_exec)
    monkeypatch.setattr(QMessageBox, "exec", message_box_exec)
    return recorder


@pytest.fixture
def tiny_text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    text = demo_corpus_path().read_text(encoding="utf-8")[:20_000]
    path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> RunConfig:
    preset = tmp_path / "tiny-preset.toml"
    preset.write_text(TINY_PRESET, encoding="utf-8")
    return load_preset(preset, RunConfig())


@pytest.fixture
def registry():
    from lmstudio_app.registry import PluginRegistry

    return PluginRegistry.discover(use_user_dir=False)


@pytest.fixture
def session(registry, tiny_config: RunConfig, tiny_text_file: Path):
    from lmstudio_app.session import Session

    sess = Session(registry, tiny_config)
    sess.set_files([tiny_text_file])
    return sess


@pytest.fixture
def events(qtbot, session):
    from lmstudio_app.gui.events import AppEvents

    relay = AppEvents(session)
    yield relay
    relay.detach()


@pytest.fixture
def main_window(qtbot, session):
    from lmstudio_app.gui.main_window import MainWindow

    window = MainWindow(session)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    yield window
    window.close()  # stops and joins a running training worker
