"""The predictions panel shows exactly what the core's Predictor computes, off the UI thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt

from lmstudio_app.gui.panels.predictions import NO_MODEL_HINT, PredictionsPanel
from lmstudio_app.gui.widgets.probability_chart import (
    COL_ID,
    COL_LOGIT,
    COL_PROB,
    COL_SAMPLE,
    temperature_to_slider,
)
from lmstudio_app.inference.distributions import softmax
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.params import build_params


def tiny_predictor(session, steps: int = 30) -> Predictor:
    """A 1-layer GPT trained for a few steps on the session's text (a hand-built Predictor)."""
    torch.manual_seed(0)
    tokenizer = session.build_tokenizer()
    spec = session.registry.model(session.config.model.plugin)
    model = spec.build(build_params(spec.params, session.config.model.params, "model"), tokenizer.vocab_size)
    ids = torch.tensor(tokenizer.encode(session.text[:5000]), dtype=torch.long)
    ctx = model.context_length
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - ctx - 1, (8,))
        x = torch.stack([ids[s : s + ctx] for s in starts])
        y = torch.stack([ids[s + 1 : s + ctx + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return Predictor(model, tokenizer)


@pytest.fixture
def predictor(session):
    return tiny_predictor(session)


@pytest.fixture
def panel(qtbot, session, events, predictor, monkeypatch):
    monkeypatch.setattr(session, "predictor", lambda fresh=True: predictor)
    monkeypatch.setattr(session, "has_model", lambda: True)
    events.prompt_scores.refresh()  # the scorer first asked before the predictor was patched in
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    widget.show()
    qtbot.waitUntil(lambda: widget.prediction() is not None and not widget.is_busy(), timeout=20_000)
    return widget


def wait_for(qtbot, panel, prompt=None, temperature=None):
    def shown():
        pred = panel.prediction()
        if panel.is_busy() or pred is None:
            return False
        text = "".join(t.text for t in pred.tokens)
        return (prompt is None or text == prompt) and (temperature is None or pred.temperature == temperature)

    qtbot.waitUntil(shown, timeout=5000)
    return panel.prediction()


def table_rows(panel):
    table = panel.table
    return [(table.value(r, COL_ID), table.value(r, COL_LOGIT), table.value(r, COL_PROB), table.value(r, COL_SAMPLE))
            for r in range(table.rowCount())]


def test_table_equals_core_prediction(qtbot, panel, predictor):
    panel.set_prompt("the dog")
    shown = wait_for(qtbot, panel, "the dog")
    expected = predictor.next_token("the dog", k=10)
    assert table_rows(panel) == [(c.id, c.logit, c.prob, c.sample_prob) for c in expected.candidates]
    assert abs(shown.probs.sum() - 1.0) < 1e-6
    assert np.allclose(shown.probs, expected.probs)
    assert panel.chart.heights() == pytest.approx([c.prob for c in expected.candidates])
    covered = sum(c.prob for c in expected.candidates)
    assert f"cover {covered:.1%}" in panel.summary_label.text()
    # the chips are the prompt's tokens, coloured by the core's surprise
    assert [t.id for t in panel.chips.tokens()] == predictor.tokenizer.encode("the dog")
    surprise = predictor.surprise("the dog")
    assert f"p = {surprise[1].prob:.4f}" in panel.chips.chip_tooltip(1)


def test_temperature_reshapes_distribution(qtbot, panel, predictor):
    base = wait_for(qtbot, panel)
    panel.sampling.temperature_slider.setValue(temperature_to_slider(2.0))
    assert panel.temperature() == 2.0
    assert "2" in panel.sampling.temperature_label.text()
    hot = wait_for(qtbot, panel, temperature=2.0)
    expected = softmax(hot.logits, 2.0)
    assert np.allclose(hot.probs, expected)
    for _, logit, prob, _ in table_rows(panel):
        assert prob == pytest.approx(float(softmax(hot.logits, 2.0)[np.argmax(hot.logits == logit)]))
    # a hotter softmax is flatter: the top candidate loses probability
    assert table_rows(panel)[0][2] < base.candidates[0].prob
    panel.set_temperature(0.2)
    cold = wait_for(qtbot, panel, temperature=0.2)
    assert cold.candidates[0].prob > base.candidates[0].prob


def test_top_k_greys_out_filtered_rows(qtbot, panel):
    panel.sampling.top_k_spin.setValue(3)
    qtbot.waitUntil(lambda: not panel.is_busy() and panel.prediction().top_k == 3, timeout=5000)
    samples = [row[3] for row in table_rows(panel)]
    assert all(s > 0 for s in samples[:3]) and all(s == 0 for s in samples[3:])
    assert sum(samples) == pytest.approx(1.0)
    assert panel.table.item(5, COL_SAMPLE).text() == "cut"


def test_clicking_candidate_appends_it(qtbot, panel):
    prompt = panel.prompt()
    first = panel.prediction().candidates[1]
    rect = panel.table.visualItemRect(panel.table.item(1, 1))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert panel.prompt() == prompt + first.text
    wait_for(qtbot, panel, prompt + first.text)


def test_generate_streams_the_seeded_continuation(qtbot, panel, predictor):
    panel.seed_spin.setValue(7)
    panel.max_tokens_spin.setValue(20)
    with qtbot.waitSignal(panel.generation_finished, timeout=10000) as blocker:
        qtbot.mouseClick(panel.generate_button, Qt.MouseButton.LeftButton)
    expected = predictor.generate(panel.prompt(), max_tokens=20, temperature=1.0, seed=7)
    assert blocker.args[0] == expected and expected
    assert panel.output_edit.toPlainText() == expected
    assert panel.generate_button.text() == "Generate"


def test_empty_prompt_shows_message(qtbot, panel, events):
    errors = []
    events.error.connect(lambda *args: errors.append(args))
    panel.set_prompt("")
    qtbot.waitUntil(lambda: not panel.is_busy() and "empty" in panel.message(), timeout=5000)
    assert panel.prediction() is None and panel.table.rowCount() == 0
    assert errors == []
    panel.set_prompt("the")
    wait_for(qtbot, panel, "the")
    assert panel.message() == ""


def test_stale_results_are_dropped(qtbot, panel, predictor):
    for text in ("a", "a c", "a ca", "a cat"):
        panel.set_prompt(text)  # no debounce: each starts or queues a query, and they race
    shown = wait_for(qtbot, panel, "a cat")
    assert [c.id for c in shown.candidates] == [c.id for c in predictor.next_token("a cat").candidates]


def test_hint_without_model(qtbot, session, events):
    session.build_tokenizer()
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: widget.message() == NO_MODEL_HINT and not widget.is_busy(), timeout=3000)
    assert [t.id for t in widget.chips.tokens()] == session.tokenizer.encode(widget.prompt())
    widget.generate()
    assert widget.message() == NO_MODEL_HINT and widget.output_edit.toPlainText() == ""


def test_follows_the_live_model_while_training(qtbot, session, events, tmp_path):
    session.set_train({"max_steps": 12})
    trainer = session.create_trainer(tmp_path / "run")
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    widget.show()
    before = wait_for(qtbot, widget)
    session.run.start(lambda: trainer)  # trains on the run's thread; the probe follows its evaluations
    qtbot.waitUntil(lambda: not session.run.state.active, timeout=30_000)
    assert trainer.step == 12
    expected = session.predictor().next_token(widget.prompt(), k=10)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.prediction() is not None
                    and table_rows(widget) == [(c.id, c.logit, c.prob, c.sample_prob) for c in expected.candidates],
                    timeout=5000)
    assert not np.allclose(widget.prediction().logits, before.logits)  # the weights moved
    assert session.probe_step == 12  # the probe holds the final weights
