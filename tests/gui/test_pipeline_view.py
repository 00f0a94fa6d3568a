"""Pipeline view: the boxes show the core's IDs, probabilities and loss for the chosen position."""

from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import Qt

from lmstudio_app.gui.panels.pipeline import PipelineView
from lmstudio_app.gui.panels.predictions import NO_MODEL_HINT, PredictionsPanel
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.params import build_params


@pytest.fixture
def predictor(session):
    """The session's tiny GPT, freshly initialised: its outputs are as checkable as a trained one's."""
    torch.manual_seed(0)
    tokenizer = session.build_tokenizer()
    spec = session.registry.model(session.config.model.plugin)
    model = spec.build(build_params(spec.params, session.config.model.params, "model"), tokenizer.vocab_size)
    return Predictor(model.eval(), tokenizer)


@pytest.fixture
def view(qtbot, session, events, predictor, monkeypatch):
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    monkeypatch.setattr(session, "has_model", lambda: True)
    events.prompt_scores.refresh()  # the scorer first asked before the predictor was patched in
    widget = PipelineView(session, events)
    qtbot.addWidget(widget)
    widget.resize(1200, 400)
    widget.show()
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=5000)
    return widget


def settle(qtbot, view):
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=5000)


def test_position_shows_ids_and_loss(qtbot, view, predictor, session):
    prompt = "the cat sat"
    session.set_prompt(prompt)  # as the predictions panel does
    settle(qtbot, view)
    tokens = predictor.tokens(prompt)
    surprise = predictor.surprise(prompt)
    assert view.position() == len(tokens) - 1  # follows the last token by default
    assert view.loss() is None and "—" in view.stage_text("loss")

    view.set_position(4)
    settle(qtbot, view)
    ids_text = view.stage_text("ids")
    for tok in tokens[:5]:
        assert f"→ {tok.id}" in ids_text
    assert view.loss() == pytest.approx(surprise[5].loss)
    assert f"{surprise[5].loss:.4f}" in view.stage_text("loss")
    assert f"id {tokens[5].id}" in view.stage_text("loss")
    expected = predictor.next_token(prompt, position=4, k=5)
    assert f"{expected.candidates[0].logit:+.3f}" in view.stage_text("logits")
    assert f"{expected.candidates[0].prob:.2%}" in view.stage_text("softmax")
    assert "Σ over" in view.stage_text("softmax") and "1.000000" in view.stage_text("softmax")
    assert prompt in view.stage_text("text")


def test_clicking_a_chip_selects_the_position(qtbot, view, predictor):
    view.set_prompt("a dog ran")
    settle(qtbot, view)
    with qtbot.waitSignal(view.position_changed) as blocker:
        qtbot.mouseClick(view.chips, Qt.MouseButton.LeftButton, pos=view.chips.chip_rect(2).center())
    assert blocker.args == [2]
    settle(qtbot, view)
    assert view.loss() == pytest.approx(predictor.surprise("a dog ran")[3].loss)


def test_follows_the_predictions_panel(qtbot, view, session, events):
    panel = PredictionsPanel(session, events)
    qtbot.addWidget(panel)
    panel.set_prompt("the mat")
    settle(qtbot, view)
    assert view.prompt() == "the mat"
    assert view.chips.tokens() == session.predictor().tokens("the mat")


def test_without_model(qtbot, session, events):
    widget = PipelineView(session, events)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=3000)
    assert widget.message_label.text() == NO_MODEL_HINT
    assert widget.stage_text("tokenizer") == "not built yet"
    session.build_tokenizer()  # the session announces its new tokenizer
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=3000)
    assert [t.id for t in widget.chips.tokens()] == session.tokenizer.encode(widget.prompt())


def test_refreshes_when_the_weights_change(qtbot, view, predictor, events):
    view.set_prompt("the cat")
    settle(qtbot, view)
    view.set_position(2)
    settle(qtbot, view)
    before = view.loss()
    assert before == pytest.approx(predictor.surprise("the cat")[3].loss)
    with torch.no_grad():  # what a training step does, as far as the view can tell
        for weight in predictor.model.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    events.model_updated.emit()
    expected = predictor.surprise("the cat")[3].loss
    assert expected != pytest.approx(before)
    qtbot.waitUntil(lambda: not view.is_busy() and view.loss() == pytest.approx(expected), timeout=5000)
