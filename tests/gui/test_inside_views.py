"""The Inside dock's four views (attention, logit lens, embeddings, loss over text) on a really
trained tiny model: what they show, real clicks, a model without the inspection contract, the
timeline's step, and that a hidden view asks nothing."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from lmstudio_app.gui.panels.inside import InsidePanel
from lmstudio_app.gui.panels.inside_base import Answer, InsideView, Problem
from lmstudio_app.gui.panels.inside_loss import pieces_of, summary
from lmstudio_app.gui.queries import NO_MODEL_HINT
from lmstudio_app.gui.widgets.token_chips import visible_text
from lmstudio_app.inference.inspection import Inspector

PROMPT = "the cat sat on the"


def _train(session, run_dir, plugin: str | None = None) -> None:
    if plugin is not None:
        session.set_model(plugin, {})
    trainer = session.create_trainer(run_dir)
    session.run.start(lambda: trainer)  # through the run controller, as the app does: the probe follows
    assert session.run.wait(120) and trainer.step == trainer.config.train.max_steps


@pytest.fixture
def trained(session, tmp_path):
    _train(session, tmp_path / "run")
    session.set_prompt(PROMPT)
    return tmp_path / "run"


def make_panel(qtbot, session, events) -> InsidePanel:
    panel = InsidePanel(session, events)
    qtbot.addWidget(panel)
    panel.resize(1000, 640)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def shown(qtbot, panel: InsidePanel, view: InsideView) -> Answer | Problem:
    """Bring ``view``'s tab to the front and wait for what it shows."""
    with qtbot.waitSignal(view.answered, timeout=30_000) as blocker:
        if panel.tabs.currentWidget() is view:
            view.refresh()
        else:
            panel.show_view(view)
    return blocker.args[0]


def prompt_tokens(session) -> list[str]:
    predictor = session.predictor()
    return [t.text for t in predictor.tokens(session.prompt)][-predictor.context_length:]


def test_attention_shows_the_prompt_and_a_click_selects_a_head(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    view = panel.attention
    answer = shown(qtbot, panel, view)
    assert isinstance(answer, Answer), answer
    tokens = prompt_tokens(session)
    assert view.maps is not None and view.maps.tokens == tokens
    assert [label.rsplit(" [", 1)[0] for label in view.heatmap.row_labels()] == [visible_text(t) for t in tokens]
    assert view.heatmap.col_labels() == view.heatmap.row_labels()
    layers, heads = view.grid.shape()
    assert (layers, heads) == (1, 2)  # the tiny config: 1 layer × 2 heads
    assert view.selection() == (0, 0)
    np.testing.assert_allclose(view.heatmap.values(), view.maps.weights[0, 0], rtol=1e-6)
    # a real click on the second head's thumbnail shows that head large
    qtbot.mouseClick(view.grid, Qt.MouseButton.LeftButton, pos=view.grid.thumb_rect(0, 1).center())
    assert view.selection() == (0, 1)
    np.testing.assert_allclose(view.heatmap.values(), view.maps.weights[0, 1], rtol=1e-6)
    assert "head 2" in view.head_label.text()
    # hovering a cell names the pair and its weight
    q, k = len(tokens) - 1, 1
    qtbot.mouseMove(view.heatmap, view.heatmap.cell_center(q, k))
    qtbot.waitUntil(lambda: f"{float(view.maps.weights[0, 1, q, k]):.3f}" in view.hover_label.text())
    assert repr(visible_text(tokens[q])) in view.hover_label.text()


def test_logit_lens_last_row_is_the_predictions_top_token(qtbot, session, events, trained):
    from lmstudio_app.gui.panels.predictions import PredictionsPanel

    predictions = PredictionsPanel(session, events)
    qtbot.addWidget(predictions)
    panel = make_panel(qtbot, session, events)
    answer = shown(qtbot, panel, panel.lens)
    assert isinstance(answer, Answer), answer
    lens = panel.lens.lens
    assert lens is not None and lens.tokens == prompt_tokens(session)
    assert panel.lens.heatmap.row_labels() == ["embedding", "block 1"]
    qtbot.waitUntil(lambda: predictions._prediction is not None, timeout=30_000)
    top = predictions._prediction.candidates[0]
    assert lens.top_tokens[-1][-1] == session.predictor().tokenizer.token_string(top.id)
    token_line, prob_line = panel.lens.heatmap.cell_text(1, len(lens.tokens) - 1).split("\n")
    assert token_line == visible_text(lens.top_tokens[-1][-1])
    assert prob_line == f"{top.prob:.0%}"
    assert math.isclose(float(lens.top_probs[-1, -1]), top.prob, rel_tol=1e-4)
    panel.lens.set_colour("actual")
    assert np.isnan(panel.lens.heatmap.values()[:, -1]).all()  # nothing follows the last token


def test_a_click_on_an_embedding_point_lists_its_neighbours(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    view = panel.embeddings
    answer = shown(qtbot, panel, view)
    assert isinstance(answer, Answer), answer
    emap = view.map
    assert emap is not None and emap.counts is not None
    assert int(emap.counts.sum()) == len(session.corpus.train)  # coloured by the corpus's own counts
    index = int(np.argmax(emap.counts))  # the most frequent token: drawn, labelled
    assert view.neighbour_list.count() == 0
    plot = view.view.plot
    qtbot.mouseClick(plot.viewport(), Qt.MouseButton.LeftButton, pos=view.view.scene_pos(index))
    qtbot.waitUntil(lambda: view.neighbour_list.count() > 0, timeout=5000)
    assert view.selected_id is not None
    expected = emap.neighbours(view.selected_id, k=10)
    assert view.neighbours_shown()[0].startswith(repr(visible_text(expected[0][0])))
    assert len(view.neighbours_shown()) == len(expected)


def test_loss_over_text_shows_the_cores_mean_and_bits_per_byte(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    view = panel.loss
    answer = shown(qtbot, panel, view)
    assert isinstance(answer, Answer), answer
    text, start, stop, name = answer.extra
    assert name == "validation text" and text and session.text[start:stop] == text
    expected = Inspector(session.predictor()).text_loss(text)
    label = view.summary_label.text()
    assert f"{expected.mean_nats:.3f} nats/token" in label and f"{expected.bits_per_byte:.3f} bits/byte" in label
    pieces = view.text_view.pieces()
    assert "".join(p.text for p in pieces) == text  # the whole stretch, as it reads
    assert [p.loss for p in pieces[1:]] == [x.loss for x in expected.losses]
    tip = view.text_view.tooltip_text(3)
    assert f"rank {expected.losses[2].rank}" in tip and f"p = {expected.losses[2].p:.4f}" in tip
    # another place in the text: another stretch
    with qtbot.waitSignal(view.answered, timeout=30_000) as blocker:
        view.set_offset(view.slider.maximum() // 2)
    assert blocker.args[0].extra[1] > start


def test_pieces_and_summary_follow_the_text():
    from lmstudio_app.inference.inspection import TextLoss, TokenLoss

    text = "ab cd"
    loss = TextLoss(tokens=["ab", "cd"], losses=[TokenLoss("cd", math.log(4), 0.25, 3, 3, 1, 3, 5)],
                    mean_nats=math.log(4), bits_per_byte=2 / 3, n_bytes=3)
    pieces = pieces_of(text, loss)
    assert [p.text for p in pieces] == ["ab", " cd"] and pieces[0].p is None and pieces[1].rank == 3
    assert "1.386 nats/token" in summary(loss) and "0.667 bits/byte" in summary(loss)


def test_a_model_without_the_contract_says_so_in_each_view(qtbot, tiny_config, tiny_text_file, tmp_path):
    from lmstudio_app.gui.events import AppEvents
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.session import Session

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "plugins" / "good_plugin.py", plugins)
    session = Session(PluginRegistry.discover([plugins], use_user_dir=False), tiny_config)
    session.set_files([tiny_text_file])
    _train(session, tmp_path / "plain", plugin="test-tiny")  # forward only: no inspection contract
    events = AppEvents(session)
    panel = make_panel(qtbot, session, events)
    messages = {}
    for view in (panel.attention, panel.lens, panel.embeddings):
        answer = shown(qtbot, panel, view)
        assert isinstance(answer, Problem) and answer.not_exposed, answer
        messages[view.title] = view.message()
    assert messages == {"Attention": "this model does not expose attention",
                        "Logit lens": "this model does not expose hidden states",
                        "Embeddings": "this model does not expose token embeddings"}
    assert panel.attention.message_label.text() == messages["Attention"]
    assert panel.lens.heatmap.message() == messages["Logit lens"]
    assert panel.embeddings.view.message() == messages["Embeddings"]
    answer = shown(qtbot, panel, panel.loss)  # the loss needs only forward: any model has it
    assert isinstance(answer, Answer)
    events.detach()


def test_without_a_model_the_views_say_how_to_get_one(qtbot, session, events):
    panel = make_panel(qtbot, session, events)
    answer = shown(qtbot, panel, panel.attention)
    assert isinstance(answer, Problem) and answer.text == NO_MODEL_HINT


def test_following_a_timeline_step_changes_the_views(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    view = panel.attention
    shown(qtbot, panel, view)
    live = view.maps.weights.copy()
    with qtbot.waitSignal(view.answered, timeout=30_000) as blocker:
        session.set_view_step(0)
    answer = blocker.args[0]
    assert isinstance(answer, Answer) and answer.view_step == 0
    assert "step 0" in view.head_label.text()
    assert not np.allclose(view.maps.weights, live)  # the untrained weights attend differently
    np.testing.assert_allclose(view.maps.weights, Inspector(session.predictor_at(0)).attention(PROMPT).weights,
                               rtol=1e-5, atol=1e-6)


def test_hidden_views_ask_nothing(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    shown(qtbot, panel, panel.attention)
    before = {view.title: view.requests for view in panel.views()}
    with qtbot.waitSignal(panel.attention.answered, timeout=30_000):
        session.set_prompt("the dog")
    qtbot.wait(50)
    after = {view.title: view.requests for view in panel.views()}
    assert after["Attention"] == before["Attention"] + 1
    assert after["Logit lens"] == before["Logit lens"]  # another tab: asks when shown
    answer = shown(qtbot, panel, panel.lens)
    assert panel.lens.lens.tokens == [t.text for t in session.predictor().tokens("the dog")], answer


def test_the_main_window_has_the_inside_dock(qtbot, main_window):
    assert isinstance(main_window.panels["inside"], InsidePanel)
    dock = main_window.docks["inside"]
    assert dock in main_window.tabifiedDockWidgets(main_window.docks["timeline"])
    view = main_window.panels["inside"].attention
    qtbot.wait(100)
    assert not view.is_shown() and view.requests == 0  # tabbed behind the predictions: no work
    with qtbot.waitSignal(view.answered, timeout=30_000):
        dock.raise_()
    assert view.is_shown() and view.requests == 1 and view.message() == NO_MODEL_HINT


def test_hover_on_the_heatmap_reports_cells(qtbot):
    from lmstudio_app.gui.widgets.heatmap import HeatmapWidget

    heatmap = HeatmapWidget()
    qtbot.addWidget(heatmap)
    heatmap.resize(400, 300)
    heatmap.show()
    qtbot.waitExposed(heatmap)
    heatmap.set_data(np.array([[1.0, 0.0], [0.25, 0.75]]), ["a", "b"], ["a", "b"])
    with qtbot.waitSignal(heatmap.cell_hovered) as blocker:
        qtbot.mouseMove(heatmap, heatmap.cell_center(1, 0))
    assert blocker.args == [1, 0]
    assert heatmap.cell_at(QPoint(0, 0)) is None
    assert "0.250" in heatmap.tooltip_text(1, 0)


def test_embedding_axes_hold_still_and_restart_with_a_new_model(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    view = panel.embeddings
    shown(qtbot, panel, view)
    box = view.view.plot.getViewBox()
    first_range, first_xy = box.viewRange(), view.map.xy.copy()
    projector = view.projector
    shown(qtbot, panel, view)  # the same weights again: the aligned map lands on the same points
    np.testing.assert_allclose(view.map.xy, first_xy, atol=1e-5)
    assert box.viewRange() == first_range
    events.model_changed.emit()  # another model: fresh axes, fresh alignment
    assert view.projector is not projector and view.selected_id is None


def test_while_training_an_open_view_asks_at_most_once_a_second(qtbot, session, events, tmp_path):
    import time

    session.set_train({"max_steps": 60, "eval_interval": 1, "eval_batches": 1, "sample_tokens": 0})  # moves every step
    panel = make_panel(qtbot, session, events)
    view = panel.attention
    shown(qtbot, panel, view)  # no model yet
    before = view.requests
    trainer = session.create_trainer(tmp_path / "run")
    started = time.monotonic()
    session.run.start(lambda: trainer)
    qtbot.waitUntil(lambda: not session.run.state.active, timeout=120_000)
    seconds = time.monotonic() - started
    qtbot.waitUntil(lambda: not view.is_busy(), timeout=30_000)
    asked = view.requests - before
    # once a second, plus the tokenizer and the model of the new run, and the end (the weights hold still)
    assert 1 <= asked <= math.ceil(seconds) + 4 and asked < 60 // 2, (asked, seconds)
    assert isinstance(view.answer, Answer) and view.answer.step == 60


def test_a_loaded_run_is_shown(qtbot, session, events, trained):
    panel = make_panel(qtbot, session, events)
    shown(qtbot, panel, panel.lens)
    with qtbot.waitSignal(panel.lens.answered, timeout=30_000) as blocker:
        session.load_run(trained)  # File › Open run
    answer = blocker.args[0]
    assert isinstance(answer, Answer) and session.loaded_run == trained
    expected = Inspector(session.predictor()).logit_lens(session.prompt)
    assert panel.lens.lens.top_tokens == expected.top_tokens
