"""The reliability matrix, GUI side: every bad input and fault ends in one clear line (a dialog or
an inline message naming the file, key, value or plugin) and the app stays usable — the corpus
as it was, the buttons back to a startable state. docs/reliability.md lists the whole matrix."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import types
from dataclasses import make_dataclass
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QToolBar

from lmstudio_app import hookimpl
from lmstudio_app.data import files as data_module
from lmstudio_app.gui.app import open_main_window
from lmstudio_app.gui.panels.data import DataPanel
from lmstudio_app.gui.panels.predictions import PredictionsPanel
from lmstudio_app.gui.panels.training import TrainingPanel
from lmstudio_app.gui.plugins_dialog import PluginsDialog
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.params import build_params, param
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.specs import ModelSpec, TokenizerSpec
from lmstudio_app.training.control import StepMetrics, TrainingControl

WAIT_MS = 30_000
TEST_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


@pytest.fixture
def data_panel(qtbot, session, events):
    widget = DataPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    return widget


@pytest.fixture
def training_panel(qtbot, session, events):
    widget = TrainingPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    widget.stop_and_wait()


def one_error_dialog(modals) -> str:
    errors = modals.of_kind("ErrorDialog")
    assert len(errors) == 1, modals.shown
    assert "\n" not in errors[0].text and "Traceback" not in errors[0].text, errors[0].text
    return errors[0].text


def start_and_wait_for_the_end(qtbot, panel, events) -> list[str]:
    finished: list[str] = []
    events.training_finished.connect(finished.append)
    assert panel.start_button.isEnabled()
    qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.state.active and (bool(finished) or not panel.is_training()), timeout=WAIT_MS)
    return finished


def assert_startable(panel) -> None:
    assert not panel.state.active and panel.start_button.isEnabled() and not panel.stop_button.isEnabled()
    assert panel.form.isEnabled()


# -- bad input --------------------------------------------------------------------------------------


BAD_FILES = {
    "empty": (b"", "the file is empty"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file (PNG image)"),
    "utf-16, offer declined": ("UTF-16 text here\n".encode("utf-16-le") * 30, "looks like utf-16-le"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_shows_one_line_and_keeps_the_corpus(qtbot, data_panel, session, modals, tmp_path, case):
    data, needle = BAD_FILES[case]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(data)
    before = session.text
    data_panel.load_paths([bad], replace=False)
    qtbot.waitUntil(lambda: bool(modals.of_kind("ErrorDialog")) and not data_panel.is_busy(), timeout=WAIT_MS)
    message = one_error_dialog(modals)
    assert str(bad) in message and needle in message
    assert session.text == before and "Nothing changed" in data_panel.status.text()
    assert data_panel.add_files_button.isEnabled() and data_panel.tokenize_button.isEnabled()


def test_a_utf16_file_added_to_a_utf8_corpus_is_read_in_the_offered_encoding(
        qtbot, data_panel, session, modals, tmp_path, tiny_text_file):
    wide = tmp_path / "wide.txt"
    wide.write_bytes("grüße aus UTF-16\n".encode("utf-16-le") * 30)
    modals.answers.append(QMessageBox.StandardButton.Yes)
    data_panel.load_paths([wide], replace=False)
    qtbot.waitUntil(lambda: len(session.file_infos) == 2 and not data_panel.is_busy(), timeout=WAIT_MS)
    assert "Read the file(s) as utf-16-le?" in modals.shown[0].text
    # each file in its own encoding: the UTF-8 one is not garbled by the choice made for the other
    assert [(Path(i.path).name, i.encoding) for i in session.file_infos] == [
        (tiny_text_file.name, "utf-8"), ("wide.txt", "utf-16-le")]
    assert "grüße aus UTF-16" in session.text and tiny_text_file.read_text(encoding="utf-8")[:50] in session.text


def test_a_folder_of_thousands_of_files_shows_progress_and_cancels(qtbot, data_panel, session, modals, tmp_path,
                                                                     monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1500):
        (folder / f"f{i:04d}.txt").write_text(f"file {i}: the cat sat.\n", encoding="utf-8")
    real_read = data_module.read_text_file

    gate = threading.Event()  # holds the reading after a few files, however loaded the machine is
    reads: list[Path] = []

    def slow_read(path, encoding="utf-8"):  # as if on a slow network drive
        reads.append(path)
        if len(reads) > 10:
            gate.wait(WAIT_MS / 1000)
        return real_read(path, encoding)

    monkeypatch.setattr(data_module, "read_text_file", slow_read)
    before = session.text
    data_panel.load_paths([folder], replace=True)
    qtbot.waitUntil(lambda: data_panel.progress.value() > 0, timeout=WAIT_MS)
    assert data_panel.progress.isVisible() and data_panel.cancel_button.isEnabled()
    qtbot.mouseClick(data_panel.cancel_button, Qt.MouseButton.LeftButton)
    gate.set()
    qtbot.waitUntil(lambda: not data_panel.is_busy(), timeout=WAIT_MS)
    assert re.match(r"reading cancelled after \d+ of 1500 files: the corpus is as it was", data_panel.status.text())
    assert session.text == before and modals.shown == [] and not data_panel.progress.isVisible()

    monkeypatch.setattr(data_module, "read_text_file", real_read)
    data_panel.load_paths([folder], replace=True)
    qtbot.waitUntil(lambda: not data_panel.is_busy(), timeout=WAIT_MS)
    assert data_panel.table.rowCount() == 1500 and "file 1499" in session.text
    started = time.perf_counter()
    data_panel.refresh()  # what the GUI thread does with the list: it must not freeze the window
    assert time.perf_counter() - started < 3


def test_a_corpus_shorter_than_the_context_is_explained_at_start(qtbot, training_panel, session, events, modals,
                                                                   tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the cat sat", encoding="utf-8")
    session.set_files([short])
    start_and_wait_for_the_end(qtbot, training_panel, events)
    message = one_error_dialog(modals)
    assert "fewer than the context length 16 + 1" in message and "model.context_length" in message
    assert_startable(training_panel)


def test_a_prompt_with_unknown_characters_says_which(qtbot, session, events, monkeypatch):
    tokenizer = session.build_tokenizer()
    spec = session.registry.model("bigram")
    predictor = Predictor(spec.build(build_params(spec.params, {}, "model"), tokenizer.vocab_size), tokenizer)
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    events.prompt_scores.refresh()  # the scorer first asked before the predictor was patched in
    panel = PredictionsPanel(session, events)
    qtbot.addWidget(panel)
    panel.show()
    panel.set_prompt("the cat ☃ sat")
    qtbot.waitUntil(lambda: "☃" in panel.message() and not panel.is_busy(), timeout=WAIT_MS)
    assert panel.message() == "characters the tokenizer does not know: ☃"
    assert panel.prediction() is not None  # still predicted, from the unknown token


# -- faults during training --------------------------------------------------------------------------


def test_nan_loss_stops_with_the_reason_and_a_lower_learning_rate_and_keeps_the_checkpoint(
        qtbot, training_panel, session, events, modals, monkeypatch):
    real_create = session.create_trainer

    def poisoned_trainer():
        trainer = real_create()
        forward = trainer.model.forward
        trainer.model.forward = lambda idx: forward(idx) * float("nan") if trainer.step >= 12 else forward(idx)
        return trainer

    monkeypatch.setattr(session, "create_trainer", poisoned_trainer)
    start_and_wait_for_the_end(qtbot, training_panel, events)
    message = one_error_dialog(modals)
    assert message.startswith("loss became nan at step 13; the last good checkpoint is step 10")
    assert "try a lower train.learning_rate" in message
    assert_startable(training_panel)
    assert (session.trainer.run_dir.checkpoints_dir / "step_00000010").is_dir()


def test_out_of_memory_halves_the_micro_batch_and_the_run_goes_on(qtbot, training_panel, session, events,
                                                                   modals, monkeypatch):
    real_create = session.create_trainer

    def small_device():
        trainer = real_create()
        forward = trainer.model.forward

        def limited(idx):
            if idx.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
            return forward(idx)

        trainer.model.forward = limited
        return trainer

    monkeypatch.setattr(session, "create_trainer", small_device)
    warnings: list[str] = []
    events.training_step.connect(lambda m: warnings.append(m.warning) if m.warning else None)
    finished = start_and_wait_for_the_end(qtbot, training_panel, events)
    assert finished == ["finished"] and modals.shown == []
    assert len(warnings) == 1 and "now 2 micro-batches of 2 per step" in warnings[0]
    assert session.trainer.config.train.grad_accum == 2 and session.trainer.step == 40


def _boom_registry(where: str) -> PluginRegistry:
    params = make_dataclass("BoomParams", [("context_length", int, param(16, min=2))])
    gpt = PluginRegistry.discover(use_user_dir=False).model("gpt")

    def build(p, vocab_size):
        if where == "build":
            raise ValueError("bad width")
        model = gpt.build(gpt.params(n_layer=1, n_head=2, n_embd=16, context_length=p.context_length), vocab_size)

        def forward(idx):
            raise IndexError("index out of range in self")

        model.forward = forward
        return model

    def build_tokenizer(p, texts, progress):
        raise KeyError("missing merges")

    char = PluginRegistry.discover(use_user_dir=False).tokenizer("char")
    module = types.ModuleType("boom_plugin")
    module.lmstudio_models = hookimpl(lambda: [ModelSpec("boom", "fails", params, build)])
    module.lmstudio_tokenizers = hookimpl(lambda: [TokenizerSpec("boomtok", "fails", char.params, build_tokenizer)])
    registry = PluginRegistry.discover(use_user_dir=False)
    registry.register_module(module, "boom_plugin", "test")
    return registry


@pytest.mark.parametrize("where, what", [("build", "building model 'boom': ValueError: bad width"),
                                         ("forward", "the training step: IndexError: index out of range in self"),
                                         ("tokenizer", "building tokenizer 'boomtok': KeyError: 'missing merges'")])
def test_a_failing_plugin_is_named_and_the_panel_recovers(qtbot, session, events, modals, where, what):
    session.registry = _boom_registry(where)
    if where == "tokenizer":
        session.set_tokenizer("boomtok", {})
    else:
        session.set_model("boom", {})
    panel = TrainingPanel(session, events)
    qtbot.addWidget(panel)
    panel.show()
    start_and_wait_for_the_end(qtbot, panel, events)
    assert one_error_dialog(modals) == f"plugin 'boom_plugin' failed in {what}"
    assert_startable(panel)
    panel.stop_and_wait()


def test_a_plugin_failing_while_probed_shows_inline_not_a_traceback(qtbot, session, events, modals, monkeypatch):
    registry = _boom_registry("forward")
    tokenizer = session.build_tokenizer()
    spec = registry.model("boom")
    model = spec.build(build_params(spec.params, {}, "model"), tokenizer.vocab_size)
    predictor = Predictor(model, tokenizer, owner=registry.owner("model", "boom"))
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    events.prompt_scores.refresh()  # the scorer first asked before the predictor was patched in
    panel = PredictionsPanel(session, events)
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitUntil(lambda: "boom_plugin" in panel.message() and not panel.is_busy(), timeout=WAIT_MS)
    assert panel.message().startswith("plugin 'boom_plugin' failed in running the model on a prompt: IndexError")
    assert modals.shown == [] and panel.prediction() is None


class _ChattyTrainer:
    """Reports as fast as it can: far faster than a GUI thread that is busy elsewhere."""

    def __init__(self, count: int) -> None:
        self.control = TrainingControl()
        self.count = count
        self.produced = 0
        self.stop_reason: str | None = None

    def steps(self):
        for step in range(1, self.count + 1):
            if self.control.stop_requested:
                break
            self.produced = step
            yield StepMetrics(step=step, max_steps=self.count, elapsed_s=0.0, train_loss=1.0, lr=1e-3,
                              tokens_per_s=1.0, tokens_seen=step)
        self.stop_reason = "finished" if self.produced == self.count else "stopped"


def test_reports_queued_for_a_busy_gui_thread_stay_bounded(qtbot, session, events):
    trainer = _ChattyTrainer(5000)
    received: list[int] = []
    events.training_step.connect(lambda m: received.append(m.step))
    session.run.start(lambda: trainer)  # type: ignore[arg-type, return-value]
    time.sleep(1.0)  # the GUI thread is busy: no event is processed
    assert trainer.produced <= events.max_pending + 1 and events.pending == events.max_pending
    qtbot.waitUntil(lambda: not session.run.state.active, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(received) == 5000, timeout=WAIT_MS)
    assert received == list(range(1, 5001))  # nothing lost, in order

    stalled = _ChattyTrainer(100_000)  # a stop is never held up by a full queue (closing joins the thread)
    session.run.start(lambda: stalled)  # type: ignore[arg-type, return-value]
    time.sleep(0.3)
    started = time.perf_counter()
    assert session.run.stop_and_wait(10) and time.perf_counter() - started < 2
    assert stalled.stop_reason == "stopped"


# -- untrusted files and plugins ------------------------------------------------------------------


def test_opening_a_damaged_run_is_refused_and_the_session_is_untouched(qtbot, main_window, session, modals,
                                                                         tmp_path):
    run = tmp_path / "damaged"
    run.mkdir()
    (run / "config.toml").write_text("[model\n", encoding="utf-8")
    before = session.config.to_dict()
    main_window.load_run(run)
    qtbot.waitUntil(lambda: bool(modals.shown), timeout=WAIT_MS)
    message = one_error_dialog(modals)
    assert str(run / "config.toml") in message and "invalid TOML" in message
    assert session.config.to_dict() == before and session.loaded_run is None


def test_the_plugins_dialog_says_plugins_are_code(qtbot):
    dialog = PluginsDialog(PluginRegistry.discover(use_user_dir=False))
    qtbot.addWidget(dialog)
    warning = dialog.findChild(QLabel, "pluginTrustWarning")
    assert warning is not None and "Plugins are Python code and run with your permissions" in warning.text()


def _close(window) -> None:
    window.close()
    window.deleteLater()


def test_safe_mode_starts_with_no_third_party_plugin_and_a_banner(qtbot, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_PLUGINS", "none")
    window = open_main_window([str(TEST_PLUGINS)])  # a folder holding good and broken plugins
    qtbot.addWidget(window)
    try:
        registry = window.session.registry  # listed, but not one line of their code was imported
        assert [p.name for p in registry.plugins if p.enabled] == ["builtins"] and registry.errors == []
        assert "good_plugin" in {p.name for p in registry.plugins} and "test-tiny" not in registry.models()
        bar = window.findChild(QToolBar, "safeModeBar")
        assert bar is not None and bar.isVisible()
        banner = bar.findChild(QLabel, "safeModeBanner")
        assert banner.isVisible() and "LMSTUDIO_PLUGINS=none" in banner.text()
        assert window.training_panel.start_button.isEnabled()  # the app is usable
    finally:
        _close(window)


def test_without_safe_mode_broken_plugins_are_named_in_the_status_bar(qtbot):
    window = open_main_window([str(TEST_PLUGINS)])
    qtbot.addWidget(window)
    try:
        assert window.findChild(QToolBar, "safeModeBar") is None
        assert "good_plugin" in {p.name for p in window.session.registry.plugins}
        message = window.statusBar().currentMessage()
        assert "plugin(s) failed to load" in message and "import_error_plugin" in message
    finally:
        _close(window)


EMITS = """
import sys
{guard}
from PySide6.QtCore import QObject, Signal

class Emitter(QObject):
    signal = Signal(object)

emitter = Emitter()
for i in range(300_000):  # a few hours of a training run's signals and timer ticks
    emitter.signal.emit(i)
    emitter.sender()
print("survived", flush=True)
"""


def test_a_pyside6_that_loses_references_cannot_abort_a_long_run():
    from lmstudio_app.gui import qt_refcounts

    guarded = subprocess.run([sys.executable, "-c", EMITS.format(guard="import lmstudio_app.gui")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert guarded.returncode == 0 and "survived" in guarded.stdout, guarded.stderr[-2000:]
    if qt_refcounts.protected:  # this PySide6 leaks (6.12.0 on Python < 3.12): without the guard it aborts
        bare = subprocess.run([sys.executable, "-c", EMITS.format(guard="")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert bare.returncode != 0 and "dealloc" in bare.stderr
