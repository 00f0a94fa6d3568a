"""The bar chart of next-token candidates: a click on a bar names its candidate."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt

from lmstudio_app.gui.widgets.probability_chart import ProbabilityChart
from lmstudio_app.inference.distributions import Candidate

CANDIDATES = [
    Candidate(id=3, text=" the", logit=2.0, prob=0.5, sample_prob=0.6),
    Candidate(id=7, text="a", logit=1.0, prob=0.3, sample_prob=0.4),
    Candidate(id=9, text="\n", logit=0.1, prob=0.2, sample_prob=0.0),
]


@pytest.fixture
def chart(qtbot):
    chart = ProbabilityChart()
    qtbot.addWidget(chart)
    chart.resize(500, 300)
    chart.show()
    qtbot.waitExposed(chart)
    chart.set_candidates(CANDIDATES)
    return chart


def _click_at(qtbot, chart: ProbabilityChart, x: float, y: float) -> None:
    """A left click at view coordinates (candidate index, probability)."""
    scene = chart.plot.getPlotItem().vb.mapViewToScene(QPointF(x, y))
    pos: QPoint = chart.plot.mapFromScene(scene)
    qtbot.mouseClick(chart.plot.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def test_bars_show_the_probabilities(chart):
    assert chart.heights() == pytest.approx([c.prob for c in CANDIDATES])


def test_a_click_on_a_bar_names_its_candidate(qtbot, chart):
    with qtbot.waitSignal(chart.bar_clicked, timeout=2000) as blocker:
        _click_at(qtbot, chart, 1.3, 0.1)  # inside the second bar, off its centre
    assert blocker.args == [1]


def test_a_click_between_bars_names_none(qtbot, chart):
    clicked: list[int] = []
    chart.bar_clicked.connect(clicked.append)
    _click_at(qtbot, chart, 1.5, 0.1)  # halfway between two bars
    qtbot.wait(50)
    assert clicked == []
