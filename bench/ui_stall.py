"""UI-stall benchmark: how long the app's event loop freezes while it trains and plots.

    python bench/ui_stall.py                                  # current code: the full table
    python bench/ui_stall.py --baseline /tmp/base             # side by side with another copy
    python bench/ui_stall.py --steps 100 --points 20000 --repeats 1   # quick smoke run

A copy to compare with, e.g. an earlier commit:
``mkdir /tmp/base && git archive COMMIT lmstudio_app resources | tar -x -C /tmp/base``.

Measurements (each in a fresh subprocess with the real MainWindow, offscreen, 1400x900):

- ``train``: the default preset on the demo corpus for ``--steps`` steps, started with the Start
  button. A 5 ms precise timer records the gaps between its ticks from the first step to the
  end: the worst gap, the 99th percentile and the median are the event loop's stalls. Also
  counted: loss-plot redraws (pushing the buffers to the curves) and plot paints, with their
  mean and worst durations.
- ``stream``: ``--points`` synthetic metrics fed into the Training dock's loss plot, 200 per
  millisecond tick (a very long run compressed into seconds), with the same gap probe, so the
  cost of a redraw as the buffers grow shows up as stalls.
- ``redraw``: the loss plot holding 1k / 10k / ``--points`` points; one more point arrives and
  the plot redraws and repaints (``redraw()`` + ``grab()``, a synchronous paint of the whole
  plot into a pixmap), 9 times: the median.

With ``--baseline DIR`` every measurement runs for both copies, alternating the order, and the
table shows both and their ratio (current / baseline; below 1 is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_harness import (
    GapProbe,
    make_app,
    open_window,
    process_until,
    run_worker,
    settle,
    spin,
    table,
    train_in_window,
)

STREAM_CHUNK = 200  # points per 1 ms feeding tick
REDRAW_REPEATS = 9


class Counters:
    """Wraps LossPlot.redraw and the plot view's paintEvent (class-level, before any window)."""

    def __init__(self) -> None:
        import pyqtgraph as pg

        from lmstudio_app.gui.widgets import loss_plot

        self.redraw_ms: list[float] = []
        self.paint_ms: list[tuple[int, float]] = []  # (id of the view, ms)
        original_redraw = loss_plot.LossPlot.redraw
        original_paint = pg.PlotWidget.paintEvent
        counters = self

        def redraw(plot: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = original_redraw(plot, *args, **kwargs)
            counters.redraw_ms.append((time.perf_counter() - started) * 1000)
            return result

        def paint(view: Any, event: Any) -> Any:
            started = time.perf_counter()
            result = original_paint(view, event)
            counters.paint_ms.append((id(view), (time.perf_counter() - started) * 1000))
            return result

        loss_plot.LossPlot.redraw = redraw
        pg.PlotWidget.paintEvent = paint

    def summary(self, plot: Any) -> dict[str, float]:
        """Redraws of any loss plot (there is one), paints of ``plot``'s view only."""
        paints = [ms for view, ms in self.paint_ms if view == id(plot.plot_widget)]
        # the timer calls redraw ~15 times a second; one that found nothing new returns at once
        real = [ms for ms in self.redraw_ms if ms > 0.05]
        return {"redraws": len(real), "redraw_mean_ms": statistics.fmean(real) if real else 0.0,
                "redraw_max_ms": max(real, default=0.0), "paints": len(paints),
                "paint_mean_ms": statistics.fmean(paints) if paints else 0.0, "paint_max_ms": max(paints, default=0.0)}


def worker_train(steps: int) -> dict[str, Any]:
    make_app()
    counters = Counters()
    window = open_window(steps)
    settle(window)
    probe = GapProbe()
    run = train_in_window(window, timeout_s=900, probe=probe)
    result = {**probe.summary(), **counters.summary(window.training_panel.loss_plot), "steps_per_s": run["steps"] / run["loop_wall_s"]}
    window.close()
    return result


def fill(plot: Any, start: int, count: int) -> None:
    steps = range(start + 1, start + count + 1)
    for step in steps:
        loss = 3.0 * 0.9999**step + 0.5 + 0.05 * ((step * 7919) % 13) / 13
        plot.add_point(step, loss, 1e-3 * min(1.0, step / 100), loss if step % 100 == 0 else None)


def worker_stream(points: int) -> dict[str, Any]:
    from PySide6.QtCore import Qt, QTimer

    make_app()
    counters = Counters()
    window = open_window(10)
    plot = window.training_panel.loss_plot
    settle(window)  # the window's first paints and previews are not part of the stream
    fed = [0]

    def feed() -> None:
        count = min(STREAM_CHUNK, points - fed[0])
        fill(plot, fed[0], count)
        fed[0] += count

    feeder = QTimer()
    feeder.setTimerType(Qt.TimerType.PreciseTimer)
    feeder.setInterval(1)
    feeder.timeout.connect(feed)
    probe = GapProbe()
    probe.start()
    feeder.start()
    process_until(lambda: fed[0] >= points, 900)
    feeder.stop()
    spin(0.3)  # the last redraw
    probe.stop()
    result = {**probe.summary(), **counters.summary(plot)}
    window.close()
    return result


def worker_redraw(sizes: list[int]) -> dict[str, Any]:
    make_app()
    window = open_window(10)
    plot = window.training_panel.loss_plot
    settle(window)
    result: dict[str, Any] = {}
    for size in sizes:
        plot.clear()
        fill(plot, 0, size)
        plot.redraw()
        plot.plot_widget.grab()
        times = []
        for extra in range(REDRAW_REPEATS):
            fill(plot, size + extra, 1)
            started = time.perf_counter()
            plot.redraw()
            plot.plot_widget.grab()  # a synchronous paint of the whole plot (autorange included)
            times.append((time.perf_counter() - started) * 1000)
        result[f"redraw_{size}_ms"] = statistics.median(times)
    window.close()
    return result


def run_all(args: argparse.Namespace) -> None:
    variants = [("current", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    jobs = [("train", ["--worker", "train", "--steps", str(args.steps)]),
            ("stream", ["--worker", "stream", "--points", str(args.points)]),
            ("redraw", ["--worker", "redraw", "--points", str(args.points)])]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name, _ in variants}
    script = Path(__file__).resolve()
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]
        for job, job_args in jobs:
            for name, impl in order:
                print(f"  repeat {repeat + 1}: {job} ({name})…", file=sys.stderr, flush=True)
                results[name].setdefault(job, []).append(run_worker(script, job_args, impl, timeout_s=1200))

    def value(name: str, job: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name][job])

    rows_spec = [("train", k, f"training {args.steps} steps: {label}") for k, label in (
        ("worst_ms", "worst stall ms"), ("p99_ms", "p99 gap ms"), ("median_ms", "median gap ms"),
        ("redraws", "plot redraws"), ("redraw_mean_ms", "redraw mean ms"), ("redraw_max_ms", "redraw max ms"),
        ("paints", "plot paints"), ("paint_mean_ms", "plot paint mean ms"), ("paint_max_ms", "plot paint max ms"),
        ("steps_per_s", "steps/s"))]
    rows_spec += [("stream", k, f"stream {args.points:,} points: {label}") for k, label in (
        ("worst_ms", "worst stall ms"), ("p99_ms", "p99 gap ms"), ("median_ms", "median gap ms"),
        ("redraws", "plot redraws"), ("redraw_max_ms", "redraw max ms"), ("paint_max_ms", "plot paint max ms"))]
    rows_spec += [("redraw", f"redraw_{n}_ms", f"redraw + repaint, {n:,} points ms") for n in redraw_sizes(args.points)]
    rows = []
    for job, key, label in rows_spec:
        row: list[object] = [label] + [f"{value(name, job, key):.1f}" for name, _ in variants]
        if args.baseline:
            base = value("baseline", job, key)
            row.append(f"{value('current', job, key) / base:.2f}" if base else "-")
        rows.append(row)
    headers = ["measurement"] + [name for name, _ in variants] + (["ratio"] if args.baseline else [])
    print(f"\nUI stalls (median of {args.repeats} repeat(s); 5 ms probe timer; offscreen 1400x900)\n")
    print(table(headers, rows))


def redraw_sizes(points: int) -> list[int]:
    return sorted({1_000, 10_000, points})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of the default preset")
    parser.add_argument("--points", type=int, default=100_000, help="points of the synthetic long run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", metavar="DIR", help="another copy of lmstudio_app to compare with")
    parser.add_argument("--worker", choices=("train", "stream", "redraw"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        run_all(args)
        return
    if args.worker == "train":
        result = worker_train(args.steps)
    elif args.worker == "stream":
        result = worker_stream(args.points)
    else:
        result = worker_redraw(redraw_sizes(args.points))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
