"""The run's timeline: how each watched prompt's predictions changed over training, and a step
slider that shows the whole app the model as it was at any kept step.

The trainer records its watched prompts at step 0 and at each evaluation (``timeline.jsonl``,
read back as :class:`~lmstudio_app.runs.timeline.Timeline`). Pick a prompt and the top chart
draws the probability of its candidates over the steps (the ~:data:`MAX_TOKENS` that reach the
highest probability among the tokens ever recorded in its top lists); the bottom one, the entropy
of the prediction and, for a corpus whose true odds are known, the KL divergence from them. A
token absent from a record's top list is drawn as a gap (its probability there is unknown, not 0).

The slider runs over the steps whose weights the run kept (:meth:`Session.viewable_steps`), with
"live" at its right end: moving it calls :meth:`Session.set_view_step`, and every panel that asks
the model follows ``view_step_changed``. The timeline is read again at most once a second.

Under the chart, the collapsible "Compare two moments" box puts two of those steps (or "live") side
by side on the session's prompt (:func:`~lmstudio_app.inference.compare.compare_moments`): how the
probability of each top candidate changed, KL(A ‖ B) of the two next-token distributions, and the
prompt's per-token surprise under each. It asks again when the prompt, the chosen steps or the
model change (with the timeline's once-a-second reads while training).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QMouseEvent, QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QStyle,
    QStyleOptionSlider,
    QVBoxLayout,
    QWidget,
)

from lmstudio_app.errors import LMStudioError
from lmstudio_app.inference.compare import MomentComparison, compare_moments
from lmstudio_app.inference.predictor import Predictor
from lmstudio_app.runs.timeline import Timeline
from lmstudio_app.session import Session

from .. import theme
from ..events import AppEvents
from ..queries import NO_MODEL_HINT, LatestQuery
from ..widgets.legend_row import legend_above
from ..widgets.moment_compare import MomentCompareView
from ..widgets.token_chips import visible_text

MAX_TOKENS = 6  # candidate curves drawn per prompt
REFRESH_INTERVAL_MS = 1000  # the timeline is read again at most this often
PLAY_INTERVAL_MS = 700  # one kept step per tick while playing
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_MAX_LABEL_CHARS = 16
COMPARE_K = 8  # top candidates of each moment in the comparison table
COMPARE_LIVE = -1  # the compare combos' item data for "live"

NO_RUN_MESSAGE = "No timeline yet: start training (step 0 is recorded before the first update)."
NOT_YET_MESSAGE = ("No timeline yet: the watched prompts are recorded at step 0 and at each evaluation; "
                   "the first record is on its way.")
OLD_RUN_MESSAGE = ("This run was trained before runs recorded their watched prompts: no timeline to show "
                   "(train a new run, or resume this one, to record one).")
NO_RECORDS_MESSAGE = "This run recorded no timeline (it stopped before its first record)."
PROB_TOOLTIP = ("Probability of this prompt's top candidates at each recorded step (step 0 and each "
                "evaluation).\nA gap means the token was not among the top candidates recorded at that step: "
                "its probability there was lower, but is unknown — it is not 0.")
COMPARE_TOOLTIP = ("Two moments of the model side by side on the current prompt (the Predictions panel's): "
                   "how each top candidate's probability changed, the KL divergence between the two "
                   "next-token predictions, and how surprising each token of the prompt was to each.")
INFO_TOOLTIP = ("Entropy of the next-token prediction (nats) and, for a corpus whose true odds are known, "
                "the KL divergence from them (nats; 0 = the model knows the grammar exactly).")


def _label(text: str) -> str:
    shown = visible_text(text)
    return repr(shown[:_MAX_LABEL_CHARS] + "…") if len(shown) > _MAX_LABEL_CHARS else repr(shown)


def top_tokens(history: list[tuple[int, dict[str, Any]]], limit: int = MAX_TOKENS) -> list[int]:
    """The token ids of ``history``'s top lists that reach the highest probability, best first."""
    best: dict[int, float] = {}
    for _step, entry in history:
        for token_id, prob in entry.get("top") or []:
            best[int(token_id)] = max(best.get(int(token_id), 0.0), float(prob))
    return sorted(best, key=lambda t: (-best[t], t))[:limit]


def token_series(history: list[tuple[int, dict[str, Any]]], token_id: int) -> np.ndarray:
    """The probability of ``token_id`` at each record of ``history``: NaN where it is not in the top list."""
    out = np.full(len(history), np.nan)
    for i, (_step, entry) in enumerate(history):
        for tid, prob in entry.get("top") or []:
            if int(tid) == token_id:
                out[i] = float(prob)
                break
    return out


def entry_series(history: list[tuple[int, dict[str, Any]]], key: str) -> np.ndarray:
    return np.array([float(e[key]) if isinstance(e.get(key), (int, float)) else np.nan for _s, e in history])


class _JumpSlider(QSlider):
    """A slider that jumps to where it is clicked (instead of a page towards it)."""

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            option = QStyleOptionSlider()
            self.initStyleOption(option)
            handle = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, option,
                                                 QStyle.SubControl.SC_SliderHandle, self)
            if not handle.contains(event.position().toPoint()):
                groove = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, option,
                                                     QStyle.SubControl.SC_SliderGroove, self)
                x = int(event.position().x()) - groove.x() - handle.width() // 2
                span = max(1, groove.width() - handle.width())
                self.setValue(QStyle.sliderValueFromPosition(self.minimum(), self.maximum(), x, span))
                event.accept()
                return
        super().mousePressEvent(event)


_LOG_TICKS = [m * 10 ** e for e in range(0, 8) for m in (1, 2, 5)]  # 1, 2, 5, 10, 20, 50, ...


class TimelinePanel(QWidget):
    """The watched prompts' predictions over training, and the step the app shows the model at."""

    def __init__(self, session: Session, events: AppEvents, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.events = events
        self.timeline: Timeline | None = None
        self.steps: list[int] = []  # the kept steps: the slider's positions (then "live")
        self.curves: dict[int, pg.PlotDataItem] = {}  # token id -> its probability curve
        self._history: list[tuple[int, dict[str, Any]]] = []
        self._last_refresh = -math.inf
        self._dirty = True

        self.prompt_combo = QComboBox()
        self.prompt_combo.setToolTip("The run's watched prompts (recorded at step 0 and at each evaluation)")
        self.prompt_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.prompt_combo.setMinimumContentsLength(24)
        self.prompt_combo.currentIndexChanged.connect(lambda _i: self._draw())
        self.target_label = QLabel()
        self.log_x = QCheckBox("log x (step + 1)")
        self.log_x.setToolTip("A logarithmic step axis: the early steps, where most happens, get the room. "
                              "Steps start at 0, so the axis shows step + 1.")
        self.log_x.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.log_x.toggled.connect(lambda _on: self._draw())
        header = QHBoxLayout()
        header.addWidget(QLabel("Prompt"))
        header.addWidget(self.prompt_combo, 1)
        header.addWidget(self.target_label)
        header.addWidget(self.log_x)

        self.message_label = QLabel(NO_RUN_MESSAGE)
        self.message_label.setWordWrap(True)
        self.message_label.setAlignment(Qt.AlignmentFlag.AlignCenter)

        palette = theme.plot_palette()
        self.prob_plot = pg.PlotWidget(background=palette.background)
        self.prob_plot.setToolTip(PROB_TOOLTIP)
        self.prob_plot.setMenuEnabled(False)
        self.prob_plot.showGrid(x=True, y=True, alpha=palette.grid_alpha)
        self.prob_plot.setLabel("left", "probability")
        self.prob_plot.getAxis("left").enableAutoSIPrefix(False)
        self.prob_plot.setYRange(0, 1, padding=0.02)
        self.prob_plot.setMouseEnabled(y=False)
        # Legends in a row above each plot: over the plot they covered the curves they name.
        self.legend = legend_above(self.prob_plot.getPlotItem(), columns=5, labelTextSize="8pt")
        self.info_plot = pg.PlotWidget(background=palette.background)
        self.info_plot.setToolTip(INFO_TOOLTIP)
        self.info_plot.setMenuEnabled(False)
        self.info_plot.showGrid(x=True, y=True, alpha=palette.grid_alpha)
        self.info_plot.setLabel("left", "nats")
        self.info_plot.getAxis("left").enableAutoSIPrefix(False)
        self.info_plot.setMouseEnabled(y=False)
        self.info_plot.setXLink(self.prob_plot)
        self.info_legend = legend_above(self.info_plot.getPlotItem(), columns=2, labelTextSize="8pt")
        self.entropy_curve = self.info_plot.plot([], [], pen=pg.mkPen("#7f7f7f", width=2), name="entropy")
        self.kl_curve = self.info_plot.plot([], [], pen=pg.mkPen("#d62728", width=2), name="KL to truth")
        self.view_lines = []
        for plot in (self.prob_plot, self.info_plot):
            line = pg.InfiniteLine(angle=90, movable=False)
            plot.addItem(line, ignoreBounds=True)
            self.view_lines.append(line)
        self._set_axis_labels()

        self.chart = QWidget()
        chart_layout = QVBoxLayout(self.chart)
        chart_layout.setContentsMargins(0, 0, 0, 0)
        chart_layout.addWidget(self.prob_plot, 3)
        chart_layout.addWidget(self.info_plot, 1)

        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Step through the kept weights, one every "
                                    f"{PLAY_INTERVAL_MS / 1000:.1f} s: the whole app shows each")
        self.play_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Space stays pause/resume
        self.play_button.toggled.connect(self._on_play)
        self.slider = _JumpSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("The step whose kept weights every panel shows (right end: the live model)")
        self.slider.setPageStep(1)
        self.slider.setRange(0, 0)
        self.slider.valueChanged.connect(self._on_slider_value)
        self.slider.sliderReleased.connect(self._apply_slider)
        self.live_button = QPushButton("Live")
        self.live_button.setToolTip("Show the latest weights again")
        self.live_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.live_button.clicked.connect(self.go_live)
        self.step_label = QLabel()
        self.step_label.setMinimumWidth(170)
        footer = QHBoxLayout()
        footer.addWidget(self.play_button)
        footer.addWidget(self.slider, 1)
        footer.addWidget(self.live_button)
        footer.addWidget(self.step_label)

        self._build_compare_box()

        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.message_label, 1)
        layout.addWidget(self.chart, 1)
        layout.addWidget(self.compare_box)
        layout.addLayout(footer)

        self._play_timer = QTimer(self, interval=PLAY_INTERVAL_MS)
        self._play_timer.timeout.connect(self._play_tick)
        self._refresh_timer = QTimer(self, singleShot=True)
        self._refresh_timer.timeout.connect(self._timed_refresh)
        for signal in (events.model_updated, events.model_changed, events.run_loaded, events.run_state_changed):
            signal.connect(self.schedule_refresh)
        events.view_step_changed.connect(self._on_view_step_changed)
        events.prompt_changed.connect(lambda _text: self.compare())
        self.refresh()

    # ----- public API ----------------------------------------------------------------------

    def schedule_refresh(self, *_args: Any) -> None:
        """Read the timeline again soon: at most once every :data:`REFRESH_INTERVAL_MS`."""
        self._dirty = True
        if self._refresh_timer.isActive():
            return
        since_ms = (time.monotonic() - self._last_refresh) * 1000
        self._refresh_timer.start(int(max(0.0, REFRESH_INTERVAL_MS - since_ms)))

    def _timed_refresh(self) -> None:
        if self.isVisible():
            self.refresh()  # else (another tab) when shown again: _dirty stays set

    def refresh(self) -> None:
        """Read the timeline and the kept steps from the session now, and redraw."""
        self._refresh_timer.stop()
        self._last_refresh = time.monotonic()
        self._dirty = False
        self.timeline = self.session.timeline()
        try:
            self.steps = sorted(self.session.viewable_steps())
        except (LMStudioError, OSError):
            self.steps = []
        self._fill_prompts()
        self._update_slider()
        self._draw()
        self._fill_compare_steps()
        self.compare()

    def prompt_index(self) -> int:
        return self.prompt_combo.currentIndex()

    def set_prompt_index(self, index: int) -> None:
        self.prompt_combo.setCurrentIndex(index)

    def set_step(self, step: int | None) -> None:
        """Show the model at a kept ``step`` (None: live), as moving the slider does."""
        self.slider.setValue(self.steps.index(step) if step is not None else len(self.steps))
        self._apply_slider()

    def go_live(self) -> None:
        self.play_button.setChecked(False)
        self.set_step(None)

    def curve_data(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Token id -> (steps, probabilities) as drawn (NaN: not in that record's top list)."""
        return {tid: (np.asarray(self._steps_drawn()), np.asarray(curve.yData)) for tid, curve in self.curves.items()}

    def curve_labels(self) -> dict[int, str]:
        return {tid: curve.name() for tid, curve in self.curves.items()}

    def message(self) -> str:
        """The sentence shown instead of the chart ("" while the chart is shown)."""
        return self.message_label.text() if not self.message_label.isHidden() else ""

    def latest_step(self) -> int:
        """The step of the latest weights: the live trainer's, else the run's last kept or recorded one."""
        trainer = self.session.trainer
        if trainer is not None:
            return int(trainer.step)
        recorded = [s for s, _ in self._history]
        return max(self.steps + recorded, default=0)

    def shutdown(self) -> None:
        self._play_timer.stop()
        self._refresh_timer.stop()

    # ----- reading the timeline ------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._dirty:
            self.schedule_refresh()
        elif self._compare_pending:
            self.compare()

    def _fill_prompts(self) -> None:
        prompts = self.timeline.prompts if self.timeline is not None else []
        current = [self.prompt_combo.itemData(i) for i in range(self.prompt_combo.count())]
        if current == prompts:
            return
        previous = self.prompt_combo.currentData()
        self.prompt_combo.blockSignals(True)
        self.prompt_combo.clear()
        for prompt in prompts:
            self.prompt_combo.addItem(repr(prompt.replace("\n", "⏎")), prompt)  # quoted: end spaces show
        self.prompt_combo.setCurrentIndex(prompts.index(previous) if previous in prompts else (0 if prompts else -1))
        self.prompt_combo.blockSignals(False)

    def _missing_message(self) -> str:
        session = self.session
        if session.trainer is not None:
            return NOT_YET_MESSAGE
        folder = session.run_folder()
        if folder is not None:
            recorded = session.config.watch.prompts and folder.timeline_path.is_file()
            return NO_RECORDS_MESSAGE if recorded else OLD_RUN_MESSAGE
        return NO_RUN_MESSAGE

    def _tokenizer(self) -> Any:
        tokenizer = self.session.tokenizer
        if tokenizer is None and self.session.trainer is not None:
            tokenizer = self.session.trainer.tokenizer
        return tokenizer

    def _token_text(self, token_id: int) -> str:
        tokenizer = self._tokenizer()
        if tokenizer is None:
            return f"#{token_id}"
        try:
            return _label(tokenizer.token_string(token_id))
        except (LMStudioError, IndexError, KeyError, ValueError):
            return f"#{token_id}"

    # ----- drawing -------------------------------------------------------------------------

    def _steps_drawn(self) -> list[int]:
        return [s for s, _ in self._history]

    def _x(self, steps: list[int] | np.ndarray) -> np.ndarray:
        x = np.asarray(steps, dtype=float)
        return x + 1 if self.log_x.isChecked() else x

    def _set_axis_labels(self) -> None:
        log = self.log_x.isChecked()
        self.info_plot.setLabel("bottom", "training step + 1 (log scale)" if log else "training step")
        # pyqtgraph labels a log axis's minor ticks too, and they run into each other: plain
        # 1-2-5 ticks per decade instead (positions in log10 units, as the axis draws them).
        ticks = [[(math.log10(v), f"{v:,}") for v in _LOG_TICKS], []] if log else None
        for plot in (self.prob_plot, self.info_plot):
            plot.setLogMode(x=log, y=False)
            plot.getAxis("bottom").setTicks(ticks)

    def _draw(self) -> None:
        timeline = self.timeline
        has_chart = timeline is not None and bool(timeline.prompts)
        self.message_label.setText("" if has_chart else self._missing_message())
        self.message_label.setVisible(not has_chart)
        self.chart.setVisible(has_chart)
        self.prompt_combo.setEnabled(has_chart)
        for curve in self.curves.values():
            self.prob_plot.removeItem(curve)
            self.legend.removeItem(curve)
        self.curves = {}
        self._history = []
        self.target_label.setText("")
        self._set_axis_labels()
        index = self.prompt_index()
        if timeline is None or not has_chart or index < 0:
            self.entropy_curve.setData([], [])
            self.kl_curve.setData([], [])
            self._update_label()
            return
        history = timeline.history(index)
        self._history = history
        x = self._x([s for s, _ in history])
        for n, token_id in enumerate(top_tokens(history)):
            color = _COLORS[n % len(_COLORS)]
            curve = self.prob_plot.plot(x, token_series(history, token_id), pen=pg.mkPen(color, width=2),
                                        symbol="o", symbolSize=4, symbolPen=None, symbolBrush=color,
                                        connect="finite", name=self._token_text(token_id))
            self.curves[token_id] = curve
        target = timeline.targets[index] if index < len(timeline.targets) else ""
        errors = [e["error"] for _s, e in history if "error" in e]
        if errors:
            self.target_label.setText(f"not recorded: {errors[-1]}")
            self.target_label.setStyleSheet(theme.ERROR_STYLE)
        elif target:
            self.target_label.setText(f"really follows: {_label(target)}")
            self.target_label.setStyleSheet("")
        self.entropy_curve.setData(x, entry_series(history, "entropy"), connect="finite")
        kl = entry_series(history, "kl_to_truth")
        self.kl_curve.setData(x, kl, connect="finite")
        self.kl_curve.setVisible(bool(np.isfinite(kl).any()))
        self.info_legend.removeItem(self.kl_curve)
        if np.isfinite(kl).any():
            self.info_legend.addItem(self.kl_curve, "KL to truth")
        self.prob_plot.enableAutoRange(axis="x")
        self._update_label()

    # ----- the viewed step -----------------------------------------------------------------

    def _update_slider(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self.steps))  # the last position: live
        view = self.session.view_step
        self.slider.setValue(self.steps.index(view) if view in self.steps else len(self.steps))
        self.slider.blockSignals(False)
        enabled = bool(self.steps)
        self.slider.setEnabled(enabled)
        self.play_button.setEnabled(enabled)
        self.live_button.setEnabled(view is not None)
        self._update_label()

    def _slider_step(self) -> int | None:
        value = self.slider.value()
        return self.steps[value] if value < len(self.steps) else None

    def _update_label(self) -> None:
        step = self._slider_step()
        latest = self.latest_step()
        if not self.steps and self.session.run_folder() is None:
            self.step_label.setText("no model yet")
        elif step is None:
            self.step_label.setText(f"live model (step {latest:,})")
        else:
            self.step_label.setText(f"model at step {step:,} of {latest:,}")
        shown = step if step is not None else latest
        for line in self.view_lines:
            # items other than curves are placed in view coordinates: log10 of the data on a log axis
            line.setValue(math.log10(shown + 1) if self.log_x.isChecked() else float(shown))
            line.setVisible(bool(self._history))
            line.setPen(pg.mkPen("#888888" if step is None else "#e08000", width=1 if step is None else 2,
                                 style=Qt.PenStyle.DashLine if step is None else Qt.PenStyle.SolidLine))

    def _on_slider_value(self, _value: int) -> None:
        self._update_label()
        if not self.slider.isSliderDown():  # a drag applies on release
            self._apply_slider()

    def _apply_slider(self) -> None:
        step = self._slider_step()
        try:
            self.session.set_view_step(step)
        except LMStudioError as exc:  # the kept steps changed meanwhile (e.g. a checkpoint pruned)
            self.events.status_message.emit(str(exc))
            self.refresh()
            return
        self.live_button.setEnabled(step is not None)
        self._update_label()

    def _on_view_step_changed(self, step: object) -> None:
        if step is not None and step not in self.steps:
            self.refresh()  # a step kept since the last read
            return
        self.slider.blockSignals(True)
        self.slider.setValue(self.steps.index(step) if step is not None else len(self.steps))
        self.slider.blockSignals(False)
        self.live_button.setEnabled(step is not None)
        self._update_label()
        if COMPARE_LIVE in (self.compare_a.currentData(), self.compare_b.currentData()):
            self.compare()  # what "live" can be compared on depends on the viewed step

    def _on_play(self, playing: bool) -> None:
        self.play_button.setText("Pause" if playing else "Play")
        if not playing:
            self._play_timer.stop()
            return
        if self._slider_step() is None or self.slider.value() >= len(self.steps) - 1:
            self.slider.setValue(0)  # from the start
        self._play_timer.start()

    def _play_tick(self) -> None:
        if self.slider.value() >= len(self.steps) - 1:
            self.play_button.setChecked(False)
            return
        self.slider.setValue(self.slider.value() + 1)

    # ----- comparing two moments -----------------------------------------------------------

    def _build_compare_box(self) -> None:
        self._compare_pending = False
        self.compare_box = QGroupBox("Compare two moments")
        self.compare_box.setToolTip(COMPARE_TOOLTIP)
        self.compare_box.setCheckable(True)  # the check box folds it: the chart keeps the room
        self.compare_box.setChecked(False)
        self.compare_a, self.compare_b = QComboBox(), QComboBox()
        self.compare_a.setToolTip("Moment A: a kept step, or the live model")
        self.compare_b.setToolTip("Moment B: a kept step, or the live model")
        for combo in (self.compare_a, self.compare_b):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            combo.currentIndexChanged.connect(lambda _i: self.compare())
        self.compare_prompt = QLabel()
        self.compare_prompt.setToolTip("The prompt compared: edit it in the Predictions panel")
        self.compare_view = MomentCompareView()
        row = QHBoxLayout()
        row.addWidget(QLabel("A"))
        row.addWidget(self.compare_a)
        row.addWidget(QLabel("vs B"))
        row.addWidget(self.compare_b)
        row.addWidget(self.compare_prompt, 1)
        self.compare_body = QWidget()
        body = QVBoxLayout(self.compare_body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addLayout(row)
        body.addWidget(self.compare_view)
        box = QVBoxLayout(self.compare_box)
        box.addWidget(self.compare_body)
        self.compare_body.setVisible(False)
        self.compare_box.toggled.connect(self._on_compare_toggled)
        self._compare_query = LatestQuery(self)
        self._compare_query.answered.connect(self._on_compared)
        self._compare_query.failed.connect(
            lambda exc, _details: self.compare_view.show_message(f"Could not compare: {exc}", error=True))

    def set_compare_steps(self, a: int | None, b: int | None) -> None:
        """Compare the model at kept step ``a`` with the one at ``b`` (None: live); opens the box."""
        for combo, step in ((self.compare_a, a), (self.compare_b, b)):
            index = combo.findData(COMPARE_LIVE if step is None else step)
            if index < 0:
                raise ValueError(f"step {step}: not one of the kept steps")
            combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
        if self.compare_box.isChecked():
            self.compare()
        else:
            self.compare_box.setChecked(True)  # compares

    def comparison(self) -> MomentComparison | None:
        """The comparison shown (None while there is none)."""
        return self.compare_view.comparison

    def is_comparing(self) -> bool:
        return self._compare_query.is_busy()

    def _on_compare_toggled(self, on: bool) -> None:
        self.compare_body.setVisible(on)
        if on:
            self.compare()

    def _fill_compare_steps(self) -> None:
        items = [(f"step {s:,}", s) for s in self.steps] + [("live", COMPARE_LIVE)]
        for combo, fallback in ((self.compare_a, self.steps[0] if self.steps else COMPARE_LIVE),
                                (self.compare_b, COMPARE_LIVE)):
            current = [combo.itemData(i) for i in range(combo.count())]
            if current == [data for _text, data in items]:
                continue
            previous = combo.currentData() if combo.count() > 1 else fallback
            combo.blockSignals(True)
            combo.clear()
            for text, data in items:
                combo.addItem(text, data)
            index = combo.findData(previous)
            combo.setCurrentIndex(index if index >= 0 else combo.findData(fallback))
            combo.blockSignals(False)

    def _moment_name(self, step: int) -> str:
        return f"step {step:,}" if step != COMPARE_LIVE else f"live, step {self.latest_step():,}"

    def compare(self) -> None:
        """Compare the two chosen moments on the session's prompt again (in the background)."""
        if not self.compare_box.isChecked():
            return
        if not self.isVisible():  # another tab: when shown again
            self._compare_pending = True
            return
        self._compare_pending = False
        session, text = self.session, self.session.prompt
        self.compare_prompt.setText(f"prompt: {_label(text)}" if text else "")
        if self.compare_a.count() == 0 or not session.has_model():
            self._compare_query.cancel()
            self.compare_view.show_message(NO_MODEL_HINT)
            return
        if not text:
            self._compare_query.cancel()
            self.compare_view.show_message("Type a prompt in the Predictions panel to compare the moments on it.")
            return
        a, b = int(self.compare_a.currentData()), int(self.compare_b.currentData())
        names = [self._moment_name(a), self._moment_name(b)]

        def at(step: int) -> Predictor | None:  # the session loads (and keeps a few of) the kept steps
            return session.predictor_at(None if step == COMPARE_LIVE else step, fresh=False)

        def job() -> tuple[MomentComparison | str, list[str]]:
            try:
                pa, pb = at(a), at(b)
                if pa is None or pb is None:
                    return NO_MODEL_HINT, names
                return compare_moments(pa, pb, text, k=COMPARE_K), names
            except LMStudioError as exc:  # unreadable weights, an empty prompt, a plugin's failure
                return str(exc), names

        self._compare_query.request(job)

    def _on_compared(self, answer: tuple[MomentComparison | str, list[str]]) -> None:
        result, (name_a, name_b) = answer
        if isinstance(result, str):
            self.compare_view.show_message(result, error=result != NO_MODEL_HINT)
        else:
            self.compare_view.show_comparison(result, name_a, name_b)
