"""The truth beside the model: a synthetic corpus's exact odds in the predictions panel and the
loss plot (true p, KL, the entropy floor), nothing of it for an ordinary text, and the banner
shown while the weights probed are those kept at an earlier step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from lmstudio_app.gui.panels.predictions import PredictionsPanel
from lmstudio_app.gui.panels.training import TrainingPanel
from lmstudio_app.gui.widgets.loss_plot import KL_LABEL
from lmstudio_app.gui.widgets.probability_chart import COL_PROB, COL_TRUE
from lmstudio_app.resources import demo_corpus_path

WAIT_MS = 60_000  # generous: the CPU is shared with other test runs
PROMPT = "the cat sat on the"
NOT_A_GRAMMAR = ("Call me Ishmael. Some years ago, never mind how long precisely, having little or no money "
                 "in my purse, and nothing particular to interest me on shore, I thought I would sail about "
                 "a little and see the watery part of the world.\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def grammar_file(tmp_path: Path) -> Path:
    text = demo_corpus_path().read_text(encoding="utf-8")[:30_000]
    return write(tmp_path / "grammar.txt", text[: text.rfind("\n") + 1])


@pytest.fixture
def prose_file(tmp_path: Path) -> Path:
    return write(tmp_path / "prose.txt", NOT_A_GRAMMAR * 60)


def train_tiny_run(qtbot, session, events, text_file: Path) -> TrainingPanel:
    """The word tokenizer on ``text_file``, a 30-step run trained to its end; its training panel."""
    session.set_files([text_file])
    session.set_tokenizer("word", {})
    session.set_train({"max_steps": 30, "eval_interval": 10})
    session.set_prompt(PROMPT)
    panel = TrainingPanel(session, events)
    qtbot.addWidget(panel)
    panel.resize(1000, 600)
    panel.show()
    finished = []
    events.training_finished.connect(finished.append)
    panel.start_training()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert finished == ["finished"], finished
    return panel


def predictions_panel(qtbot, session, events) -> PredictionsPanel:
    widget = PredictionsPanel(session, events)
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    widget.show()
    wait_shown(qtbot, widget)
    return widget


def wait_shown(qtbot, panel: PredictionsPanel, view_step: int | None = None) -> None:
    answer = lambda: panel.scores.latest  # noqa: E731
    qtbot.waitUntil(lambda: (not panel.is_busy() and panel.prediction() is not None
                             and answer() is not None and answer().view_step == view_step), timeout=WAIT_MS)


def candidate_rows(panel: PredictionsPanel) -> dict[str, int]:
    """Row by candidate word (the table shows a space as a visible mark: read the candidates' text)."""
    candidates = panel.prediction().candidates
    assert panel.table.rowCount() == len(candidates)
    return {c.text: r for r, c in enumerate(candidates)}


def test_grammar_shows_true_odds_kl_and_entropy_floor(qtbot, session, events, grammar_file):
    training = train_tiny_run(qtbot, session, events, grammar_file)
    truth = session.truth()
    assert truth is not None and truth is session.trainer.truth
    panel = predictions_panel(qtbot, session, events)
    panel.sampling.rows_spin.setValue(200)  # every token of the small vocabulary: mat, floor, couch listed
    wait_shown(qtbot, panel)
    prediction = panel.prediction()

    # (b) the "true p" column: the grammar's exact odds for each listed token
    assert not panel.table.isColumnHidden(COL_TRUE)
    assert panel.table.horizontalHeaderItem(COL_TRUE).text() == "true p"
    rows = candidate_rows(panel)
    shown = {word: panel.table.value(rows[word], COL_TRUE) for word in (" mat", " floor", " couch")}
    assert shown == pytest.approx({" mat": 0.6, " floor": 0.25, " couch": 0.15}, abs=1e-12)
    assert panel.table.item(rows[" mat"], COL_TRUE).text() == "60.00%"
    others = [panel.table.value(r, COL_TRUE) for w, r in rows.items() if w not in shown]
    assert others and all(v == 0.0 for v in others)  # any other word: impossible here
    rows_shown = range(panel.table.rowCount())
    assert [panel.table.value(r, COL_PROB) for r in rows_shown] == [c.prob for c in prediction.candidates]

    # (a) the chart's third series, named after the truth
    true = truth.next_token(PROMPT)
    assert panel.chart.truth_heights() == pytest.approx([true.get(c.id, 0.0) for c in prediction.candidates])
    assert panel.chart.truth_legend() == "truth (demo grammar)"

    # (c) the KL in the summary is the truth's KL from the prediction shown
    expected_kl = truth.kl(true, prediction.probs)
    assert panel.kl_to_truth() == pytest.approx(expected_kl, rel=1e-12)
    assert f"KL(true ‖ model) = {expected_kl:.3f} nats" in panel.summary_label.text()
    assert "not listed" not in panel.summary_label.text()  # every true token is in the table
    panel.set_temperature(2.0)  # the KL follows the distribution shown
    qtbot.waitUntil(lambda: panel.prediction() is not None and panel.prediction().temperature == 2.0)
    hot_kl = truth.kl(true, panel.prediction().probs)
    assert hot_kl != pytest.approx(expected_kl) and f"= {hot_kl:.3f} nats" in panel.summary_label.text()

    # the loss plot: the evaluations' KL as a curve, the entropy floor as a line
    plot = training.loss_plot
    records = [r for r in session.trainer.run_dir.read_metrics() if r.get("kl_to_truth") is not None]
    assert [r["step"] for r in records] == [10, 20, 30]
    plot.redraw()
    x, y = plot.kl_curve.getData()
    assert list(x) == [10, 20, 30] and list(y) == pytest.approx([r["kl_to_truth"] for r in records])
    assert KL_LABEL in [label.text for _, label in plot.plot_item.legend.items]
    assert plot.floor_line.isVisible() and plot.floor_line.value() == pytest.approx(truth.entropy_rate())
    assert plot.floor_line.label.format == f"entropy floor {truth.entropy_rate():.3f}"
    plot.set_log_y(True)  # the line sits at the floor on a log axis too
    assert plot.floor_line.value() == pytest.approx(np.log10(truth.entropy_rate()))
    plot.set_log_y(False)

    # a resumed run replays the earlier KL into the plot
    plot.clear()
    assert plot.kl.size == 0 and not plot.floor_line.isVisible()
    for record in session.trainer.run_dir.read_metrics():
        plot.add_point(record["step"], record.get("train_loss"), record.get("lr"), record.get("val_loss"),
                       record.get("kl_to_truth"))
    assert list(plot.kl.y) == pytest.approx([r["kl_to_truth"] for r in records])


def test_ordinary_text_shows_no_truth(qtbot, session, events, prose_file):
    training = train_tiny_run(qtbot, session, events, prose_file)
    assert session.truth() is None
    panel = predictions_panel(qtbot, session, events)
    assert panel.table.isColumnHidden(COL_TRUE)
    assert all(panel.table.value(r, COL_TRUE) is None for r in range(panel.table.rowCount()))
    assert panel.chart.truth_heights() == [] and panel.chart.truth_legend() is None
    assert panel.kl_to_truth() is None and "KL" not in panel.summary_label.text()
    assert "cover" in panel.summary_label.text()  # the rest of the summary as before

    plot = training.loss_plot
    plot.redraw()
    assert plot.kl.size == 0 and not plot.floor_line.isVisible()
    assert KL_LABEL not in [label.text for _, label in plot.plot_item.legend.items]
    assert len(plot.val_curve.getData()[0]) == 3  # the validation points still arrive


def test_view_step_banner_and_back_to_live(qtbot, session, events, grammar_file):
    train_tiny_run(qtbot, session, events, grammar_file)
    panel = predictions_panel(qtbot, session, events)
    assert panel.view_step_banner.isHidden() and panel.view_step_text() == ""
    steps = session.viewable_steps()
    assert 0 in steps

    session.set_view_step(0)
    wait_shown(qtbot, panel, view_step=0)
    assert not panel.view_step_banner.isHidden()
    assert "model at step 0 of 30" in panel.view_step_text()
    # the truth is still beside the (untrained) model: KL of the step-0 prediction
    truth = session.truth()
    true = truth.next_token(PROMPT)
    assert panel.kl_to_truth() == pytest.approx(truth.kl(true, panel.prediction().probs))
    listed = {c.id for c in panel.prediction().candidates}
    unlisted = sum(p for token_id, p in true.items() if token_id not in listed)
    assert (f"true next tokens not listed: {unlisted:.1%}" in panel.summary_label.text()) == (unlisted > 1e-9)

    qtbot.mouseClick(panel.back_to_live_button, Qt.MouseButton.LeftButton)
    assert session.view_step is None
    assert panel.view_step_banner.isHidden() and panel.view_step_text() == ""
    wait_shown(qtbot, panel, view_step=None)
    assert panel.view_step_banner.isHidden()
