"""Bits per byte in the app: the tokenizer panel's bytes per token, the loss plot's y choice."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lmstudio_app.gui.panels.tokenizer import TokenizerPanel
from lmstudio_app.gui.widgets.loss_plot import NO_BPB_LABEL, Y_LABELS, LossPlot
from lmstudio_app.training.trainer import Trainer

# One-, two- and three-byte characters: bytes per token and characters per token differ.
TEXT = "the café sat on the mat .\n東京 の 猫 が 寝た .\n" * 60


@pytest.fixture
def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_tokenizer_panel_shows_bytes_per_token(qtbot, session, events, mixed_file):
    panel = TokenizerPanel(session, events)
    qtbot.addWidget(panel)
    assert panel.bytes_per_token_label.text() == "—"
    session.set_files([mixed_file])
    corpus = session.tokenize()
    panel.update_stats()
    expected = len(TEXT.encode("utf-8")) / corpus.n_tokens
    assert panel.bytes_per_token_label.text() == f"{expected:.2f}"
    assert panel.bytes_per_token_label.text() != panel.compression_label.text()  # chars are not bytes here


def test_loss_plot_switches_validation_to_bits_per_byte(qtbot, session, mixed_file):
    session.set_files([mixed_file])
    session.config.train.max_steps, session.config.train.eval_interval = 4, 2
    trainer = Trainer(session.config, session.registry, write_run=False)
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(600, 300)
    plot.show()
    qtbot.waitExposed(plot)
    reports = list(trainer.steps())
    for metrics in reports:
        plot.add_metrics(metrics)
    evaluated = [m for m in reports if m.val_loss is not None]
    assert [m.step for m in evaluated] == [2, 4]
    plot.redraw()
    _, shown = plot.val_curve.getData()
    assert list(shown) == pytest.approx([m.val_loss for m in evaluated])

    plot.y_combo.setCurrentIndex(plot.y_combo.findData("bpb"))  # as the user picks it
    assert plot.y_unit == "bpb"
    _, shown = plot.val_curve.getData()
    factor = len(trainer.corpus.val) / (trainer.corpus.val_bytes * math.log(2))
    assert list(shown) == pytest.approx([m.val_loss * factor for m in evaluated])
    assert not plot.train_curve.isVisible() and not plot.train_raw_curve.isVisible()  # nats/token: not mixed in
    assert plot.plot_item.getAxis("left").labelText == Y_LABELS["bpb"]

    plot.set_y_unit("loss")
    assert plot.y_combo.currentData() == "loss" and plot.train_curve.isVisible()
    _, shown = plot.val_curve.getData()
    assert list(shown) == pytest.approx([m.val_loss for m in evaluated])


def test_an_old_run_without_bits_per_byte_still_draws(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.show()
    qtbot.waitExposed(plot)
    for step in (1, 2, 3, 4):  # records written before val_bpb existed
        plot.add_point(step, 3.0 - 0.1 * step, 1e-3, 3.1 if step % 2 == 0 else None)
    plot.set_y_unit("bpb")
    x, _ = plot.val_curve.getData()
    assert x is None or len(x) == 0  # nothing to show in that unit, and no error
    assert plot.plot_item.getAxis("left").labelText == NO_BPB_LABEL  # says why the plot is empty
    plot.set_y_unit("loss")
    x, y = plot.val_curve.getData()
    assert list(x) == [2, 4] and np.allclose(y, 3.1)
    assert plot.plot_item.getAxis("left").labelText == Y_LABELS["loss"]
