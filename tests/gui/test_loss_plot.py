"""The loss plot: bounded buffers, the EMA, peak decimation, and redraws that stay cheap.

The redraw rules checked here are what keeps the UI responsive in long runs (the timings
themselves are in bench/ui_stall.py): a curve never gets more than ~2 x MAX_BINS points,
whatever the buffer holds; nothing is redrawn when nothing changed or the plot is hidden.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmstudio_app.gui.widgets.loss_plot import (
    MAX_BINS,
    MAX_MARKERS,
    MAX_REDRAW_INTERVAL_MS,
    REDRAW_BUDGET,
    REDRAW_INTERVAL_MS,
    LossPlot,
)
from lmstudio_app.gui.widgets.plot_data import PeakDecimator, SeriesBuffer, ema


def reference_peaks(x: np.ndarray, y: np.ndarray, start: int, stop: int, max_bins: int):
    """Brute force: the aligned blocks of 2^k points touching [start, stop), their min and max,
    then the slice's last point."""
    count = stop - start
    if count <= 2 * max_bins:
        return x[start:stop], y[start:stop]
    block = 1 << max(int(np.ceil(np.log2(count / max_bins))), 1)
    xs, ys = [], []
    for first in range(start // block * block, stop, block):
        segment = y[first : first + block]
        xs += [x[first], x[first]]
        ys += [segment.min(), segment.max()]
    return np.array(xs + [x[stop - 1]]), np.array(ys + [y[stop - 1]])


@pytest.fixture
def plot(qtbot):
    widget = LossPlot(max_points=50_000)
    qtbot.addWidget(widget)
    widget.resize(600, 300)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def fill(plot: LossPlot, steps: np.ndarray, losses: np.ndarray) -> None:
    for step, loss in zip(steps, losses):
        plot.add_point(float(step), float(loss), lr=1e-3, val_loss=float(loss) if step % 1000 == 0 else None)


def test_series_buffer_grows_and_thins_older_points():
    buffer = SeriesBuffer(max_points=8, capacity=2)
    for i in range(8):
        buffer.append(i, i * 10)
    assert list(buffer.x) == list(range(8))
    version = buffer.version
    buffer.append(8, 80)  # full: the older half (0..3) is thinned 2:1, the recent half kept
    assert list(buffer.x) == [0, 2, 4, 5, 6, 7, 8]
    assert buffer.version > version  # caches built on the old points must start over
    for i in range(9, 10_000):
        buffer.append(i, i)
    assert buffer.size <= 8 and buffer.x[-1] == 9999 and np.all(np.diff(buffer.x) > 0)


def test_ema_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    for smoothing in (0.0, 0.3, 0.9, 0.99):
        expected, state = [], 0.0
        for t, v in enumerate(values, start=1):
            state = smoothing * state + (1 - smoothing) * v
            expected.append(state / (1 - smoothing**t) if smoothing else state)
        assert np.allclose(ema(values, smoothing), expected)


def test_peak_decimation_matches_brute_force_as_points_arrive():
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(size=70_000))
    x = np.arange(1, len(y) + 1, dtype=np.float64) * 10  # steps logged every 10
    decimator = PeakDecimator(max_bins=100)
    for n in (150, 199, 200, 201, 1_000, 4_097, 33_333, 70_000):  # grows: the caches only extend
        for lo, hi in ((None, None), (x[n // 3], x[n // 2]), (x[n // 2] + 5, None), (None, x[n // 7])):
            got_x, got_y = decimator.decimate(x[:n], y[:n], lo, hi)
            start = 0 if lo is None else max(int(np.searchsorted(x[:n], lo, side="right")) - 1, 0)
            stop = n if hi is None else min(int(np.searchsorted(x[:n], hi, side="left")) + 1, n)
            want_x, want_y = reference_peaks(x[:n], y[:n], start, stop, 100)
            assert len(got_x) <= 2 * 100 + 3
            np.testing.assert_array_equal(got_x, want_x)
            np.testing.assert_array_equal(got_y, want_y)
    decimator.decimate(x[:500], -y[:500])  # shorter than before: it starts over by itself
    np.testing.assert_array_equal(decimator.decimate(x[:5000], -y[:5000])[1],
                                  reference_peaks(x[:5000], -y[:5000], 0, 5000, 100)[1])


def test_a_stale_cache_is_dropped_after_reset():
    x = np.arange(10_000, dtype=np.float64)
    decimator = PeakDecimator(max_bins=50)
    decimator.decimate(x, np.zeros_like(x))
    changed = np.zeros_like(x)
    changed[17] = 5.0  # an old point changed (the buffer thinned, say): the caller resets
    decimator.reset()
    assert decimator.decimate(x, changed)[1].max() == 5.0


def test_redraws_send_a_bounded_number_of_points_and_keep_the_spikes(plot):
    n = 45_000
    losses = 3.0 * np.exp(-np.arange(n) / 10_000) + 0.5
    losses[31_234] = 9.0  # a spike that decimation must not drop
    fill(plot, np.arange(1, n + 1), losses)
    plot.redraw()
    x, y = plot.train_raw_curve.getData()
    assert len(x) <= 2 * MAX_BINS + 3 < n
    assert y.max() == 9.0 and y.min() == losses.min()
    assert x[0] == 1 and x[-1] == n and np.all(np.diff(x) >= 0)
    lr_x, _ = plot.lr_curve.getData()
    assert len(lr_x) <= 2 * MAX_BINS + 3
    assert list(plot.val_curve.getData()[0]) == list(range(1000, n + 1, 1000))  # few: drawn as they are
    assert plot.val_curve.opts["symbol"] == "o"  # ... with a marker each


def test_many_validation_points_are_drawn_as_a_line(plot):
    for step in range(1, MAX_MARKERS + 2):
        plot.add_point(step, 2.0, val_loss=1.0 + 1 / step)
    plot.redraw()
    assert len(plot.val_curve.getData()[0]) == MAX_MARKERS + 1 and plot.val_curve.opts["symbol"] is None
    plot.plot_item.setXRange(1, 50, padding=0)  # zoomed in: few enough for markers again
    plot.redraw()
    assert plot.val_curve.opts["symbol"] == "o"


def test_zooming_in_shows_the_visible_steps_in_full_detail(qtbot, plot):
    n = 40_000
    fill(plot, np.arange(1, n + 1), np.linspace(3, 1, n))
    plot.redraw()
    plot.plot_item.setXRange(20_000, 20_500, padding=0)  # as a mouse zoom does
    plot.redraw()
    x, _ = plot.train_raw_curve.getData()
    assert x[0] <= 20_000 and x[-1] >= 20_500 and len(x) < 600  # the raw points of that slice
    assert np.all(np.diff(x) == 1)
    plot.plot_item.enableAutoRange()  # the "A" button: everything again, decimated
    plot.redraw()
    assert plot.train_raw_curve.getData()[0][-1] == n


def test_redraws_are_paced_by_what_a_frame_costs(qtbot, plot):
    """Each frame holds the GIL the training thread needs: costly frames come less often."""

    def frames(paint_s: float, count: int = 30) -> int:
        for _ in range(count):
            plot.plot_widget.paint_s = paint_s  # what the last paint took
            plot.add_point(plot.redraw_count + 1, 1.0, 1e-3)
            plot.redraw()
        return plot._timer.interval()

    cheap = frames(0.0)
    assert REDRAW_INTERVAL_MS <= cheap < MAX_REDRAW_INTERVAL_MS
    assert frames(2 * REDRAW_BUDGET * MAX_REDRAW_INTERVAL_MS / 1000) == MAX_REDRAW_INTERVAL_MS  # at least 1 Hz
    assert frames(0.0) < MAX_REDRAW_INTERVAL_MS  # cheap again: faster again


def test_a_zoom_by_hand_is_redrawn_promptly_whatever_the_pace(qtbot, plot):
    fill(plot, np.arange(1, 20_001), np.linspace(3, 1, 20_000))
    plot.redraw()
    plot._timer.setInterval(60_000)  # data redraws far apart
    count = plot.redraw_count
    plot.plot_item.vb.sigRangeChangedManually.emit([True, False])  # what a mouse zoom emits
    plot.plot_item.setXRange(5_000, 5_300, padding=0)
    qtbot.waitUntil(lambda: plot.redraw_count > count, timeout=2000)
    assert len(plot.train_raw_curve.getData()[0]) < 400


def test_nothing_is_redrawn_when_nothing_changed_or_the_plot_is_hidden(qtbot, plot):
    plot.add_point(1, 3.0, 1e-3)
    plot.redraw()
    count = plot.redraw_count
    plot.redraw()
    plot.redraw()
    assert plot.redraw_count == count  # no new data: no work
    plot.hide()
    plot.add_point(2, 2.5, 1e-3)
    plot.redraw()
    assert plot.redraw_count == count and len(plot.train_raw_curve.getData()[0]) == 1
    plot.show()  # shown again: it catches up at once
    assert plot.redraw_count == count + 1 and len(plot.train_raw_curve.getData()[0]) == 2


def test_a_fixed_step_range_is_kept_while_points_arrive(qtbot, plot):
    plot.set_step_range(600)
    for step in range(1, 50):
        plot.add_point(step, 3.0 / step, 1e-3)
        plot.redraw()
    x_min, x_max = plot.plot_item.vb.viewRange()[0]
    assert x_min <= 0 and 600 <= x_max < 620  # the whole run, not just the 49 steps so far
    plot.clear()
    assert plot.plot_item.vb.state["autoRange"][0]  # a cleared plot follows its data again


def test_auto_range_moves_in_steps_not_at_every_point(qtbot, plot):
    """Re-ranging re-lays out the ticks and grid: the loss axis must not follow every new low."""
    view = plot.plot_item.vb
    ranges: list[tuple[float, float]] = []
    view.sigYRangeChanged.connect(lambda *_: ranges.append(tuple(view.viewRange()[1])))
    steps = np.arange(1, 301)
    losses = 3.0 * np.exp(-steps / 50) + 0.5 + 0.05 * np.sin(steps)
    for step, loss in zip(steps, losses):
        plot.add_point(float(step), float(loss), lr=1e-3 * min(1.0, step / 30))
        plot.redraw()
        plot.plot_widget.grab()  # a paint: pyqtgraph auto-ranges just before painting
    assert 1 <= len(ranges) <= 10  # a few moves (plain auto-range: a new range at almost every point)
    low, high = view.viewRange()[1]
    assert low <= 0 < losses.max() <= high < 1.5 * losses.max()  # from zero, all the data in view
    lr_low, lr_high = plot.lr_view.viewRange()[1]
    assert lr_low <= 0 and 1e-3 <= lr_high < 1.5e-3
    view.setYRange(1.0, 1.2)  # a zoom is left alone...
    plot.add_point(301.0, 0.4)
    plot.redraw()
    plot.plot_widget.grab()
    assert view.viewRange()[1] == pytest.approx([1.0, 1.2], abs=0.05)
    view.enableAutoRange()  # ... until the "A" button fits the data again
    plot.plot_widget.grab()
    assert view.viewRange()[1][0] <= 0 and view.viewRange()[1][1] < 1.5 * losses.max()


def test_smoothing_slider_and_log_scale(qtbot, plot):
    n = 20_000
    fill(plot, np.arange(1, n + 1), 3.0 * np.exp(-np.arange(n) / 5_000) + 0.5)
    incremental = plot.smoothed.y.copy()
    assert np.allclose(incremental, ema(plot.train.y, 0.6))  # kept up point by point
    for value in (10, 35, 80):  # a drag: many values, one recomputation at the next redraw
        plot.smoothing_slider.setValue(value)
    assert plot.smoothing_label.text() == "0.80" and plot.smoothing == 0.6
    plot.redraw()
    assert plot.smoothing == 0.8 and np.allclose(plot.smoothed.y, ema(plot.train.y, 0.8))
    plot.add_point(n + 1, 0.4)  # the incremental EMA goes on from the recomputed one
    assert np.allclose(plot.smoothed.y, ema(plot.train.y, 0.8))
    plot.smoothing_slider.setValue(0)
    plot.redraw()
    assert np.allclose(plot.smoothed.y, plot.train.y)
    plot.log_checkbox.setChecked(True)
    assert plot.plot_item.ctrl.logYCheck.isChecked()
    plot.redraw()
    assert np.all(np.isfinite(plot.train_raw_curve.getData()[1]))


def test_memory_stays_bounded_in_a_long_run(qtbot):
    plot = LossPlot(max_points=5_000)
    qtbot.addWidget(plot)
    plot.show()
    fill(plot, np.arange(1, 20_001), np.linspace(3, 1, 20_000))
    assert plot.train.size <= 5_000 and plot.train.x[-1] == 20_000
    plot.redraw()
    x, y = plot.train_raw_curve.getData()
    assert x[0] == 1 and x[-1] == 20_000 and y.max() == 3.0  # thinned, decimated, still the whole run


def test_plots_follow_a_dark_system_theme(qtbot, monkeypatch):
    from lmstudio_app.gui import theme

    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.plot_widget.backgroundBrush().color().name() == theme.plot_palette().background
    monkeypatch.setattr(theme, "is_dark", lambda: True)
    relay = plot.findChild(theme._Relay)
    relay.fire()  # what QStyleHints.colorSchemeChanged triggers
    assert plot.plot_widget.backgroundBrush().color().name() == theme.DARK.background
    assert plot.train_curve.opts["pen"].color().name() == theme.DARK.train
    monkeypatch.undo()
    theme.apply_theme()  # pyqtgraph's colours are global: leave them as the next test expects
