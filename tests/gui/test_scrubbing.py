"""Going back in time: the predictions table shows the model as it was at the chosen step."""

from __future__ import annotations

import pytest

from lmstudio_app.gui.panels.pipeline import PipelineView
from lmstudio_app.gui.panels.predictions import PredictionsPanel
from lmstudio_app.gui.widgets.probability_chart import COL_ID, COL_PROB
from lmstudio_app.inference.predictor import load_predictor

WAIT_MS = 30_000


def test_scrubbing_to_a_step_shows_that_steps_numbers_in_the_table(qtbot, session, events, registry, tmp_path):
    trainer = session.create_trainer(tmp_path / "run")
    session.run.start(lambda: trainer)  # through the run controller: the probe follows the weights
    qtbot.waitUntil(lambda: not session.run.state.active, timeout=WAIT_MS)
    panel = PredictionsPanel(session, events)
    pipeline = PipelineView(session, events)
    for widget in (panel, pipeline):
        qtbot.addWidget(widget)
        widget.show()
    prompt = panel.prompt()
    qtbot.waitUntil(lambda: not pipeline.is_busy() and pipeline.position() > 1, timeout=WAIT_MS)
    pipeline.set_position(1)  # follow the second token: its loss is about the third

    def table():
        return [(panel.table.value(r, COL_ID), panel.table.value(r, COL_PROB)) for r in range(panel.table.rowCount())]

    for step in (0, 10, None):  # two kept snapshots, then back to the live (final) weights
        session.set_view_step(step)
        predictor = load_predictor(tmp_path / "run", registry, "cpu", step=step) if step is not None else \
            trainer.predictor()
        expected = predictor.next_token(prompt, k=panel.sampling.rows())
        wanted = [(c.id, c.prob) for c in expected.candidates]
        qtbot.waitUntil(lambda wanted=wanted: not panel.is_busy() and [i for i, _ in table()] == [i for i, _ in wanted],
                        timeout=WAIT_MS)
        assert [p for _, p in table()] == pytest.approx([p for _, p in wanted], abs=1e-9)
        # the pipeline view and the chips' surprise follow the same moment
        surprise = predictor.surprise(prompt)
        assert f"p = {surprise[1].prob:.4f}" in panel.chips.chip_tooltip(1)
        qtbot.waitUntil(lambda: not pipeline.is_busy(), timeout=WAIT_MS)
        assert pipeline.position() == 1 and pipeline.loss() == pytest.approx(surprise[2].loss)
