"""Tokenizer panel: pick a plugin, train it in the background, see chips with the right IDs."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSpinBox

from lmstudio_app.errors import Cancelled
from lmstudio_app.gui.panels.tokenizer import TokenizerPanel
from lmstudio_app.gui.widgets.param_form import ParamForm
from lmstudio_app.gui.widgets.token_chips import TokenChips, visible_text
from lmstudio_app.tokenizer import Token


@pytest.fixture
def panel(qtbot, session, events):
    widget = TokenizerPanel(session, events)
    qtbot.addWidget(widget)
    widget.resize(500, 700)
    widget.show()
    return widget


def choose(panel, name: str) -> None:
    panel.plugin_combo.setCurrentIndex(panel.plugin_combo.findData(name))


def train(qtbot, panel, events) -> None:
    with qtbot.waitSignal(events.corpus_tokenized, timeout=20000):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    assert not panel.is_busy()


def test_train_char_tokenizer_and_show_ids(qtbot, panel, session, events):
    choose(panel, "char")
    assert isinstance(panel.form, ParamForm)
    assert panel.vocab_label.text() == "—"
    train(qtbot, panel, events)
    assert session.tokenizer is not None and session.corpus is not None
    assert panel.vocab_label.text() == f"{session.tokenizer.vocab_size:,}"
    assert panel.tokens_label.text() == f"{session.corpus.n_tokens:,}"
    assert panel.compression_label.text() == f"{session.corpus.chars_per_token:.2f}"
    panel.sample_edit.setText("the cat sat")
    expected = session.tokenizer.encode("the cat sat")
    assert [t.id for t in panel.chips.tokens()] == expected
    assert panel.sample_count_label.text().startswith(f"{len(expected)} tokens")
    assert panel.chips.chip_text(3) == "·"  # the space after "the", made visible


def test_changing_settings_updates_session(qtbot, panel, session, events):
    choose(panel, "bpe")
    assert session.config.tokenizer.plugin == "bpe"
    spin = panel.form.widget_for("vocab_size")
    assert isinstance(spin, QSpinBox)
    with qtbot.waitSignal(events.tokenizer_changed, timeout=1000):
        spin.setValue(320)
    assert session.config.tokenizer.params["vocab_size"] == 320
    assert panel.train_button.text() == "Train tokenizer"
    choose(panel, "byte")
    assert panel.train_button.text() == "Build tokenizer"


def test_a_bpe_that_learns_fewer_tokens_than_asked_says_so(qtbot, panel, session, events):
    choose(panel, "bpe")
    panel.form.widget_for("vocab_size").setValue(60_000)  # far more than the tiny corpus holds
    with qtbot.waitSignal(events.corpus_tokenized, timeout=60_000):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=30_000)  # the task ends just after the signal
    learned = session.tokenizer.vocab_size
    assert learned < 60_000
    qtbot.waitUntil(lambda: f"learned {learned:,} of the 60,000 tokens asked for" in panel.status_label.text(),
                    timeout=10_000)


def test_invalid_value_is_reported_and_not_applied(qtbot, panel, session):
    choose(panel, "bpe")
    before = dict(session.config.tokenizer.params)
    panel.form.widget_for("vocab_size").setValue(5)
    assert "tokenizer.vocab_size" in panel.form.error()
    assert session.config.tokenizer.params == before


def test_progress_and_cancel(qtbot, panel, session, monkeypatch):
    import threading

    started = threading.Event()

    def slow_build(progress=None, cancel=None):  # stands in for a long BPE training
        for done in range(10_000):
            progress(done, 10_000)
            started.set()
            if cancel():
                raise Cancelled("building the tokenizer was cancelled")
            time.sleep(0.001)
        raise AssertionError("the cancel flag never reached the worker")

    monkeypatch.setattr(session, "build_tokenizer", slow_build)
    panel.train()
    assert panel.is_busy() and not panel.train_button.isEnabled() and panel.cancel_button.isEnabled()
    assert started.wait(5)
    qtbot.waitUntil(lambda: panel.progress_bar.maximum() == 10_000, timeout=5000)
    assert "Training the tokenizer" in panel.progress_bar.format()
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=5000)
    assert panel.status_label.text() == "Cancelled"
    assert panel.train_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert not panel.progress_bar.isVisible()


def test_external_change_resyncs_form(qtbot, panel, session, events):
    session.set_tokenizer("word", {"vocab_size": 1000})
    events.tokenizer_changed.emit()
    assert panel.plugin() == "word"
    assert panel.form.values()["vocab_size"] == 1000


def test_chips_widget(qtbot):
    chips = TokenChips()
    qtbot.addWidget(chips)
    chips.resize(120, 50)
    tokens = [Token(i, t, 0, 0) for i, t in enumerate(["The", " cat", "\n", "\t", "sat"])]
    chips.set_tokens(tokens, tooltips=["", "p = 0.5"])
    chips.show()
    assert [chips.chip_text(i) for i in range(5)] == ["The", "·cat", "⏎", "→", "sat"]
    assert visible_text("") == "∅"
    # narrow widget: the chips wrap onto several rows
    assert len({chips.chip_rect(i).top() for i in range(5)}) > 1
    assert chips.heightForWidth(120) > chips.heightForWidth(2000)
    assert "id 1" in chips.chip_tooltip(1) and "p = 0.5" in chips.chip_tooltip(1)
    assert chips.chip_color(0) != chips.chip_color(1)  # alternating pastels
    with qtbot.waitSignal(chips.token_clicked) as blocker:
        qtbot.mouseClick(chips, Qt.MouseButton.LeftButton, pos=chips.chip_rect(2).center())
    assert blocker.args == [2] and chips.selected() == 2
