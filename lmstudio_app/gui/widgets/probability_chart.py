"""The next-token distribution: a ranked table, a bar chart and the controls that reshape it.

The table holds the exact floats of :class:`~lmstudio_app.inference.distributions.Candidate` in
``Qt.UserRole`` (the text is only their rounding), so what a test or a person reads is what the
core computed. The chart draws two bars per candidate: the softmax probability at the chosen
temperature (wide) and, inside it, what sampling uses after top-k / top-p filtering (narrow).
Candidates cut by the filters keep their wide bar but no inner one, so the effect of
top-k/top-p is visible at once. When the corpus's exact odds are known (a synthetic corpus), a
hollow outline per candidate marks its true probability, and the table's "true p" column shows
it; without them the outlines and the column are hidden. The "in text" column is another thing:
each candidate's share of what followed the prompt's last tokens in the training text (counts in
one text, any corpus), hidden until that index is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyqtgraph as pg
from PySide6.QtCore import QModelIndex, QPointF, QRect, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSlider,
    QSpinBox,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.inference.distributions import Candidate

from .legend_row import legend_above
from .token_chips import visible_text

_PROB_BRUSH = (90, 140, 230, 200)
_SAMPLE_BRUSH = (240, 150, 50, 230)
_TRUTH_PEN = (20, 160, 90, 255)  # the true probability: an outline the model's bar should fill
_PROB_BAR_WIDTH = 0.8  # in x units, one per candidate; a click within a bar picks its candidate
_SAMPLE_BAR_WIDTH = 0.35  # the inner bar
_TRUTH_BAR_WIDTH = 0.92  # the truth's outline, a little wider than the bar it frames
_MAX_LABEL_CHARS = 8
_LABEL_GAP_PX = 6  # at least this much space between two bar labels


class ProbabilityChart(QWidget):
    """Bars of ``Candidate.prob`` (and ``sample_prob``); click a bar → ``bar_clicked(index)``."""

    bar_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._candidates: list[Candidate] = []
        self._ticks: list[tuple[int, str]] = []
        self.plot = pg.PlotWidget(background=None)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.showGrid(y=True, alpha=0.2)
        self.plot.setLabel("left", "probability")
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # 0.2, 0.4 rather than 200 x 0.001
        self.plot.setMinimumHeight(150)  # the legend's row(s) included
        self._prob_bars = pg.BarGraphItem(x=[], height=[], width=_PROB_BAR_WIDTH,
                                          brush=pg.mkBrush(*_PROB_BRUSH), pen=None)
        self._sample_bars = pg.BarGraphItem(x=[], height=[], width=_SAMPLE_BAR_WIDTH,
                                            brush=pg.mkBrush(*_SAMPLE_BRUSH), pen=None)
        self._truth_bars = pg.BarGraphItem(x=[], height=[], width=_TRUTH_BAR_WIDTH, brush=None,
                                           pen=pg.mkPen(_TRUTH_PEN, width=2))
        self.plot.addItem(self._prob_bars)
        self.plot.addItem(self._sample_bars)
        self.plot.addItem(self._truth_bars)
        self.legend = legend_above(self.plot.getPlotItem(), columns=3)  # above the bars, never over them
        self.legend.addItem(self._prob_bars, "softmax(logits / T)")
        self.legend.addItem(self._sample_bars, "after top-k / top-p")
        self._truth_label: str | None = None  # the truth's legend entry, while one is shown
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.plot.getPlotItem().vb.sigResized.connect(self._set_ticks)  # the room per label changed
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def set_candidates(self, candidates: Sequence[Candidate], truth: Mapping[int, float] | None = None,
                       truth_label: str = "truth") -> None:
        """Redraw for a new prediction (an empty list clears the chart). ``truth``: the exact
        next-token odds by token ID (a synthetic corpus's), drawn as an outline per candidate."""
        self._candidates = list(candidates)
        xs = list(range(len(self._candidates)))
        probs = [c.prob for c in self._candidates]
        samples = [c.sample_prob for c in self._candidates]
        self._prob_bars.setOpts(x=xs, height=probs)
        self._sample_bars.setOpts(x=xs, height=samples)
        trues = [float(truth.get(c.id, 0.0)) for c in self._candidates] if truth is not None else []
        self._truth_bars.setOpts(x=xs if truth is not None else [], height=trues)
        self._truth_bars.setVisible(truth is not None)
        self._set_truth_legend(truth_label if truth is not None else None)
        self._set_ticks()
        top = max(probs + samples + trues, default=0.0)
        # Zoom to the tallest bar: a flat distribution must still show its shape.
        self.plot.setYRange(0.0, max(0.02, min(1.0, top * 1.1)), padding=0)
        self.plot.setXRange(-0.6, max(len(xs), 1) - 0.4, padding=0)

    def tick_labels(self) -> list[tuple[int, str]]:
        """The bar labels drawn under the bars: (candidate index, text); some may be skipped."""
        return list(self._ticks)

    def label_slot_width(self) -> float:
        """The pixels one bar's label may use (the distance between two bars)."""
        width = self.plot.getPlotItem().vb.width()
        return width / max(len(self._candidates), 1)

    def _set_ticks(self) -> None:
        """Labels that fit between their neighbours: elided to a bar's width, and where even a
        short label does not fit, only every n-th bar labelled."""
        axis = self.plot.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.font())
        slot = self.label_slot_width()
        room = max(int(slot) - _LABEL_GAP_PX, 0)
        labels = [_short_label(c.text) for c in self._candidates]
        every = 1
        narrowest = metrics.horizontalAdvance("W…")
        if room < narrowest:
            every = math.ceil((narrowest + _LABEL_GAP_PX) / max(slot, 1.0))
            room = int(slot * every) - _LABEL_GAP_PX
        self._ticks = [(i, metrics.elidedText(label, Qt.TextElideMode.ElideRight, room))
                       for i, label in enumerate(labels) if i % every == 0]
        axis.setTicks([self._ticks])

    def heights(self) -> list[float]:
        """The drawn probability bars, in candidate order."""
        return list(self._prob_bars.opts.get("height", []))

    def truth_heights(self) -> list[float]:
        """The drawn true probabilities, in candidate order ([] without a truth)."""
        return list(self._truth_bars.opts.get("height", [])) if self._truth_bars.isVisible() else []

    def truth_legend(self) -> str | None:
        """The truth's legend entry, while one is shown."""
        return self._truth_label

    def _set_truth_legend(self, label: str | None) -> None:
        if label == self._truth_label:
            return
        if self._truth_label is not None:
            self.legend.removeItem(self._truth_bars)
        if label is not None:
            self.legend.addItem(self._truth_bars, label)
        self._truth_label = label

    def _on_click(self, event: object) -> None:
        pos: QPointF = event.scenePos()  # type: ignore[attr-defined]
        if not self.plot.sceneBoundingRect().contains(pos):
            return
        x = self.plot.getPlotItem().vb.mapSceneToView(pos).x()
        index = round(x)
        if 0 <= index < len(self._candidates) and abs(x - index) <= _PROB_BAR_WIDTH / 2:
            self.bar_clicked.emit(index)


def _short_label(text: str) -> str:
    shown = visible_text(text)
    return shown if len(shown) <= _MAX_LABEL_CHARS else shown[: _MAX_LABEL_CHARS - 1] + "…"


COLUMNS = ("#", "token", "id", "logit", "probability", "sampled", "true p", "in text", "")
COL_RANK, COL_TOKEN, COL_ID, COL_LOGIT, COL_PROB, COL_SAMPLE, COL_TRUE, COL_TEXT, COL_BAR = range(len(COLUMNS))


class _BarDelegate(QStyledItemDelegate):
    """Paints the probability stored in the cell's UserRole as a horizontal bar."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        super().paint(painter, option, index)
        value = index.data(Qt.ItemDataRole.UserRole)
        if not isinstance(value, float):
            return
        rect: QRect = option.rect.adjusted(3, 4, -3, -4)
        width = int(rect.width() * max(0.0, min(1.0, value)))
        painter.save()
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(*_PROB_BRUSH))
        painter.drawRect(QRect(rect.left(), rect.top(), max(width, 1), rect.height()))
        painter.restore()


class CandidateTable(QTableWidget):
    """Ranked candidates; rows cut by top-k/top-p are greyed. ``candidate_clicked(row)``."""

    candidate_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(COLUMNS))
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.setMinimumWidth(380)
        header = self.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_BAR, QHeaderView.ResizeMode.Stretch)
        self.setItemDelegateForColumn(COL_BAR, _BarDelegate(self))
        self.setToolTip("Click a candidate to append it to the prompt")
        self.cellClicked.connect(lambda row, _col: self.candidate_clicked.emit(row))
        self.horizontalHeaderItem(COL_TRUE).setToolTip("The exact probability of this token next, in the "
                                                       "corpus's generating grammar")
        self.setColumnHidden(COL_TRUE, True)  # shown only when the corpus's odds are known
        self.horizontalHeaderItem(COL_TEXT).setToolTip(
            "How often this token followed the prompt's last tokens in the training text, as a share of "
            "all that followed them there (counts in one text, not the true odds; blank: never)")
        self.setColumnHidden(COL_TEXT, True)  # shown once the training text's index is built

    def set_candidates(self, candidates: Sequence[Candidate], truth: Mapping[int, float] | None = None,
                       in_text: Mapping[int, float] | None = None) -> None:
        """Fill the rows; ``truth`` (exact next-token odds by token ID) fills the "true p" column,
        which is hidden without it; ``in_text`` (each token's share of what followed the prompt's
        end in the training text, by token ID) fills the "in text" column, hidden without it."""
        # Columns sized to their contents would re-measure every cell after each setItem (~30 ms
        # for ten rows, all of it holding the GIL that training needs): fill with fixed sections,
        # then measure once.
        header = self.horizontalHeader()
        modes = [header.sectionResizeMode(col) for col in range(header.count())]
        for col in range(header.count()):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
        self.setColumnHidden(COL_TRUE, truth is None)
        self.setColumnHidden(COL_TEXT, in_text is None)
        # Other candidates (another prompt, other sampling settings): a row highlighted for the
        # old ones would point at a token that is no longer there.
        self.clearSelection()
        self.setCurrentItem(None)
        try:
            self._fill(candidates, truth, in_text)
        finally:
            for col, mode in enumerate(modes):
                header.setSectionResizeMode(col, mode)

    def _fill(self, candidates: Sequence[Candidate], truth: Mapping[int, float] | None,
              in_text: Mapping[int, float] | None) -> None:
        self.setRowCount(len(candidates))
        dim = self.palette().placeholderText().color()
        for row, cand in enumerate(candidates):
            true = float(truth.get(cand.id, 0.0)) if truth is not None else None
            seen = float(in_text.get(cand.id, 0.0)) if in_text is not None else None
            cells = [
                (str(row + 1), None),
                (visible_text(cand.text), None),
                (str(cand.id), cand.id),
                (f"{cand.logit:.3f}", cand.logit),
                (f"{cand.prob:.2%}" if cand.prob >= 1e-4 else f"{cand.prob:.2e}", cand.prob),
                ("cut" if cand.sample_prob == 0 else f"{cand.sample_prob:.2%}", cand.sample_prob),
                ("" if true is None else f"{true:.2%}" if true >= 1e-4 or true == 0 else f"{true:.2e}", true),
                ("" if not seen else f"{seen:.1%}" if seen >= 1e-3 else f"{seen:.1e}", seen),  # blank: never
                ("", cand.prob),
            ]
            for col, (text, value) in enumerate(cells):
                item = QTableWidgetItem(text)
                if value is not None:
                    item.setData(Qt.ItemDataRole.UserRole, value)
                if col in (COL_ID, COL_LOGIT, COL_PROB, COL_SAMPLE, COL_TRUE, COL_TEXT):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if cand.sample_prob == 0:  # filtered out by top-k/top-p: sampling never picks it
                    item.setForeground(dim)
                    item.setToolTip("Cut by top-k / top-p: never sampled")
                self.setItem(row, col, item)

    def preferred_width(self) -> int:
        """The width that shows every visible column (the bar column at a readable minimum)
        without a horizontal scroll bar."""
        header = self.horizontalHeader()
        columns = sum(header.sectionSize(c) for c in range(self.columnCount())
                      if c != COL_BAR and not self.isColumnHidden(c))
        scroll = self.verticalScrollBar().sizeHint().width()
        return columns + 60 + scroll + 2 * self.frameWidth()

    def value(self, row: int, col: int) -> float | int | None:
        """The exact number behind a cell (id, logit, probability, sampled or true probability,
        share in the text; None for "true p" without a truth and "in text" without an index)."""
        return self.item(row, col).data(Qt.ItemDataRole.UserRole)


def slider_to_temperature(value: int) -> float:
    """Slider 0–200 → 0.1–3.0, logarithmic in each half, exactly 1.0 in the middle."""
    t = 0.1 * 10 ** (value / 100) if value <= 100 else 3.0 ** ((value - 100) / 100)
    return float(f"{t:.3g}")  # the shown value is the value used


def temperature_to_slider(temperature: float) -> int:
    t = min(max(temperature, 0.1), 3.0)
    return round(100 * math.log10(t / 0.1)) if t <= 1.0 else round(100 + 100 * math.log(t) / math.log(3.0))


class SamplingControls(QWidget):
    """Temperature slider (0.1–3.0, value shown), top-k, top-p and how many rows to list."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.temperature_slider = QSlider(Qt.Orientation.Horizontal)
        self.temperature_slider.setRange(0, 200)
        self.temperature_slider.setValue(temperature_to_slider(1.0))
        self.temperature_slider.setToolTip("Divide the logits by T before the softmax: low T sharpens, high T flattens")
        self.temperature_label = QLabel()
        self.temperature_label.setMinimumWidth(60)
        self.top_k_spin = QSpinBox()
        self.top_k_spin.setRange(0, 100_000)
        self.top_k_spin.setSpecialValueText("off")
        self.top_k_spin.setToolTip("Sample only from the k most likely tokens (0 = off)")
        self.top_p_spin = QDoubleSpinBox()
        self.top_p_spin.setRange(0.01, 1.0)
        self.top_p_spin.setSingleStep(0.05)
        self.top_p_spin.setValue(1.0)
        self.top_p_spin.setToolTip("Sample from the smallest set of tokens whose probability reaches p (1 = off)")
        self.rows_spin = QSpinBox()
        self.rows_spin.setRange(1, 200)
        self.rows_spin.setValue(10)
        self.rows_spin.setToolTip("How many candidates to list")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label, widget in (("Temperature", self.temperature_slider), ("", self.temperature_label),
                              ("top-k", self.top_k_spin), ("top-p", self.top_p_spin), ("rows", self.rows_spin)):
            if label:
                layout.addWidget(QLabel(label))
            layout.addWidget(widget, 2 if widget is self.temperature_slider else 0)
        self._show_temperature()
        self.temperature_slider.valueChanged.connect(self._show_temperature)
        for control in (self.temperature_slider, self.top_k_spin, self.top_p_spin, self.rows_spin):
            control.valueChanged.connect(self.changed)

    def temperature(self) -> float:
        return slider_to_temperature(self.temperature_slider.value())

    def set_temperature(self, temperature: float) -> None:
        self.temperature_slider.setValue(temperature_to_slider(temperature))

    def top_k(self) -> int | None:
        return self.top_k_spin.value() or None

    def top_p(self) -> float | None:
        value = self.top_p_spin.value()
        return None if value >= 1.0 else value  # 1.0 keeps every token: no filtering at all

    def rows(self) -> int:
        return self.rows_spin.value()

    def _show_temperature(self) -> None:
        self.temperature_label.setText(f"T = {self.temperature():.3g}")
