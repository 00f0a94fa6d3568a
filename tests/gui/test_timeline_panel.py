"""Timeline panel: the watched prompts' recorded probabilities over training, and the step slider
that shows the whole app the model as it was at a kept step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import QPoint, Qt

from lmstudio_app.gui.panels import timeline as timeline_module
from lmstudio_app.gui.panels.timeline import (
    NO_RUN_MESSAGE,
    OLD_RUN_MESSAGE,
    TimelinePanel,
    token_series,
    top_tokens,
)
from lmstudio_app.gui.queries import NO_MODEL_HINT
from lmstudio_app.gui.widgets.moment_compare import format_kl
from lmstudio_app.gui.widgets.token_chips import visible_text
from lmstudio_app.inference.compare import compare_moments
from lmstudio_app.inference.predictor import load_predictor


@pytest.fixture
def trained(session, tmp_path):
    """A tiny run trained to the end (40 steps, evaluated every 10): its folder holds a timeline."""
    run = tmp_path / "run"
    trainer = session.create_trainer(run)
    session.run.start(lambda: trainer)  # through the run controller, as the app does: the probe follows
    assert session.run.wait(120) and trainer.step == trainer.config.train.max_steps
    return run


def make_panel(qtbot, session, events) -> TimelinePanel:
    panel = TimelinePanel(session, events)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    qtbot.waitExposed(panel)
    panel.refresh()
    return panel


def slider_click_pos(panel: TimelinePanel, value: int) -> QPoint:
    """Where on the slider's groove a click lands on ``value`` (the handle's centre there)."""
    slider = panel.slider
    handle_w = 20
    span = slider.width() - handle_w
    x = handle_w // 2 + round(span * (value - slider.minimum()) / max(1, slider.maximum() - slider.minimum()))
    return QPoint(x, slider.height() // 2)


def test_without_a_run_says_what_is_missing(qtbot, session, events):
    panel = make_panel(qtbot, session, events)
    assert panel.message() == NO_RUN_MESSAGE
    assert panel.chart.isHidden() and panel.prompt_combo.count() == 0
    assert not panel.slider.isEnabled()


def test_curves_hold_the_recorded_probabilities(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    timeline = session.timeline()
    assert timeline is not None and panel.message() == ""
    combo = panel.prompt_combo
    assert [combo.itemData(i) for i in range(combo.count())] == timeline.prompts
    for index in range(len(timeline.prompts)):
        panel.set_prompt_index(index)
        history = timeline.history(index)
        steps = [s for s, _ in history]
        assert steps[0] == 0 and steps[-1] == 40
        data = panel.curve_data()
        expected_tokens = top_tokens(history)
        assert list(data) == expected_tokens and 0 < len(expected_tokens) <= timeline_module.MAX_TOKENS
        for token_id, (xs, ys) in data.items():
            assert list(xs) == steps
            for (_step, entry), y in zip(history, ys):
                recorded = {int(t): p for t, p in entry["top"]}
                if token_id in recorded:
                    assert y == recorded[token_id]
                else:
                    assert np.isnan(y)  # a gap, not 0
            np.testing.assert_array_equal(ys, token_series(history, token_id))
        labels = panel.curve_labels()
        for token_id in expected_tokens:
            assert labels[token_id] == repr(visible_text(session.tokenizer.token_string(token_id)))
        entropy = panel.entropy_curve.yData
        np.testing.assert_allclose(entropy, [e["entropy"] for _s, e in history])
    assert "not 0" in panel.prob_plot.toolTip()


def test_log_x_is_labelled_and_plots_step_plus_one(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    qtbot.mouseClick(panel.log_x, Qt.MouseButton.LeftButton)
    assert panel.log_x.isChecked()
    curve = next(iter(panel.curves.values()))
    assert curve.xData[0] == 1  # step 0 drawn at step + 1
    assert "step + 1" in panel.info_plot.getAxis("bottom").labelText
    assert np.isfinite(curve.getData()[0]).all()  # log10(step + 1): nothing infinite


def test_slider_shows_the_app_an_earlier_model(qtbot, session, events, trained, registry):
    panel = make_panel(qtbot, session, events)
    steps = sorted(session.viewable_steps())
    assert steps[0] == 0 and panel.slider.maximum() == len(steps)  # the right end: live
    assert session.view_step is None and panel.step_label.text() == "live model (step 40)"
    assert not panel.live_button.isEnabled()

    seen = []
    events.view_step_changed.connect(seen.append)
    qtbot.mouseClick(panel.slider, Qt.MouseButton.LeftButton, pos=slider_click_pos(panel, 0))
    assert panel.slider.value() == 0
    assert session.view_step == 0 and seen == [0]
    assert panel.step_label.text() == "model at step 0 of 40"
    assert panel.view_lines[0].value() == 0

    prompt = "the cat sat on"
    got = session.predictor().next_token(prompt)
    torch.manual_seed(0)
    expected = load_predictor(trained, registry, "cpu", step=0).next_token(prompt)
    np.testing.assert_allclose(got.probs, expected.probs, rtol=1e-5, atol=1e-7)
    session.set_view_step(None)
    live = session.predictor().next_token(prompt)
    assert not np.allclose(live.probs, expected.probs)  # the live model is another one
    session.set_view_step(0)

    assert panel.live_button.isEnabled()
    qtbot.mouseClick(panel.live_button, Qt.MouseButton.LeftButton)
    assert session.view_step is None
    assert panel.slider.value() == panel.slider.maximum()
    assert panel.step_label.text() == "live model (step 40)"


def test_follows_a_step_set_elsewhere_and_keeps_space(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    steps = sorted(session.viewable_steps())
    session.set_view_step(steps[1])  # e.g. from another panel
    assert panel.slider.value() == 1 and panel.step_label.text() == f"model at step {steps[1]} of 40"
    panel.slider.setFocus()
    qtbot.keyClick(panel.slider, Qt.Key.Key_Space)
    assert panel.slider.value() == 1 and session.view_step == steps[1]
    for button in (panel.play_button, panel.live_button, panel.log_x):
        assert button.focusPolicy() == Qt.FocusPolicy.NoFocus


def test_play_steps_through_the_kept_weights(qtbot, session, events, trained, monkeypatch):
    panel = make_panel(qtbot, session, events)
    panel._play_timer.setInterval(20)
    steps = sorted(session.viewable_steps())
    seen = []
    events.view_step_changed.connect(seen.append)
    qtbot.mouseClick(panel.play_button, Qt.MouseButton.LeftButton)
    assert panel.play_button.text() == "Pause"
    qtbot.waitUntil(lambda: not panel.play_button.isChecked(), timeout=5000)
    assert seen == steps and session.view_step == steps[-1]
    assert panel.play_button.text() == "Play"


def test_an_older_run_without_timeline(qtbot, session, events, trained):
    (trained / "timeline.jsonl").unlink()
    panel = make_panel(qtbot, session, events)
    session.load_run(trained)
    qtbot.waitUntil(lambda: panel.message() == OLD_RUN_MESSAGE, timeout=3000)
    assert panel.chart.isHidden() and panel.prompt_combo.count() == 0


def test_grows_with_a_live_run_at_most_once_a_second(qtbot, session, events, tmp_path):
    panel = make_panel(qtbot, session, events)
    reads = []
    real = session.timeline

    def counted():
        reads.append(1)
        return real()

    session.timeline = counted  # type: ignore[method-assign]
    trainer = session.create_trainer(tmp_path / "live")
    session.run.start(lambda: trainer)
    qtbot.waitUntil(lambda: not session.run.state.active, timeout=30_000)
    qtbot.waitUntil(lambda: bool(panel.curves) and max(panel.curve_data().values().__iter__().__next__()[0]) == 40,
                    timeout=5000)
    assert panel.step_label.text() == "live model (step 40)"
    assert len(reads) <= 6  # model_updated came 5+ times, plus state changes: throttled reads


def test_compare_two_moments_step_0_against_live(qtbot, session, events, trained, registry):
    panel = make_panel(qtbot, session, events)
    assert not panel.compare_box.isChecked() and panel.compare_body.isHidden()  # folded: the chart keeps the room
    steps = sorted(session.viewable_steps())
    combo = panel.compare_a
    assert [combo.itemData(i) for i in range(combo.count())] == steps + [timeline_module.COMPARE_LIVE]
    assert panel.compare_a.currentData() == 0 and panel.compare_b.currentData() == timeline_module.COMPARE_LIVE

    panel.set_compare_steps(0, None)
    assert panel.compare_box.isChecked() and panel.compare_body.isVisible()
    qtbot.waitUntil(lambda: panel.comparison() is not None and not panel.is_comparing(), timeout=10_000)
    prompt = session.prompt
    result = panel.comparison()
    assert result.text == prompt
    at_0 = load_predictor(trained, registry, "cpu", step=0).next_token(prompt).probs
    live = session.predictor(fresh=False).next_token(prompt).probs
    assert len(result.rows) >= timeline_module.COMPARE_K  # the union of two top-8 lists
    view = panel.compare_view
    shown = view.row_values()
    assert len(shown) == len(result.rows)
    for row, cells in zip(result.rows, shown):
        np.testing.assert_allclose(row.p_a, at_0[row.token_id], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(row.p_b, live[row.token_id], rtol=1e-6, atol=1e-9)
        assert cells[1] == f"{row.p_a:.4f}" and cells[2] == f"{row.p_b:.4f}" and cells[3] == f"{row.change:+.4f}"
    expected = compare_moments(load_predictor(trained, registry, "cpu", step=0), session.predictor(fresh=False),
                               prompt)
    assert view.kl_label.text() == format_kl(expected.kl_ab) and expected.kl_ab > 0
    assert [s.token.id for s in result.surprise_a] == [t.id for t in session.predictor().tokens(prompt)]
    assert [view.chips_a.chip_text(i) for i in range(len(view.chips_a.tokens()))] == \
        [visible_text(s.token.text) for s in result.surprise_a]
    assert "step 0" in view.name_a.text() and "live" in view.name_b.text()

    # the same moment twice: nothing changed
    panel.set_compare_steps(steps[1], steps[1])
    qtbot.waitUntil(lambda: not panel.is_comparing() and panel.comparison() is not None
                    and panel.comparison().kl_ab == 0.0, timeout=10_000)
    assert view.kl_label.text() == format_kl(0.0)

    # a new prompt is compared again
    session.set_prompt("the dog")
    qtbot.waitUntil(lambda: not panel.is_comparing() and panel.comparison() is not None
                    and panel.comparison().text == "the dog", timeout=10_000)


def test_compare_without_a_run_says_what_is_missing(qtbot, session, events):
    panel = make_panel(qtbot, session, events)
    panel.compare_box.setChecked(True)
    assert panel.comparison() is None
    assert panel.compare_view.message_label.text() == NO_MODEL_HINT
