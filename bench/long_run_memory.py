"""Long runs keep memory flat: RSS of a 100k-step run, and the loss plot fed 100k points.

    python bench/long_run_memory.py                       # 100k steps + plot (about 3-4 minutes)
    python bench/long_run_memory.py --steps 20000         # quicker
    python bench/long_run_memory.py --gui-steps 20000     # also train through the app's run controller and plot

Part 1, the engine, headless: the real :class:`~lmstudio_app.training.trainer.Trainer` on a tiny model
(1-layer GPT, width 16, context 8, batch 4) with ``log_interval = 1``, so every step produces a
metrics record, written to ``metrics.jsonl`` and consumed into bounded buffers exactly like the
GUI's (:class:`~lmstudio_app.gui.widgets.loss_plot.SeriesBuffer`, capped here at 20k points so the
thinning runs too); evaluation and a checkpoint every 10k steps. The table shows, at each
milestone, the resident set size, the live Python objects and ``metrics.jsonl``'s size: the first
two must stay flat from 1k to 100k steps (the file grows by design, on disk).

Part 2, the plot: 100k points through ``LossPlot.add_point`` and ``redraw`` in an offscreen
window, with the time per redraw (the plot's timer redraws at ~15 Hz) and the RSS.

Part 3 (``--gui-steps``): the trainer driven by the app's run controller (training thread,
queued signals, bounded queue) into a shown ``LossPlot``, reporting RSS and the longest stall of
the GUI thread (a 20 ms timer's worst lateness) while it trains.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from lmstudio_app.config import RunConfig, config_from_dict
from lmstudio_app.gui.widgets.loss_plot import SeriesBuffer
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.training.trainer import Trainer
from lmstudio_builtins.demo_grammar import generate_demo_corpus

MB = 1 << 20
PROCESS = psutil.Process()


def rss_mb() -> float:
    return PROCESS.memory_info().rss / MB


def tiny_config(corpus: Path, steps: int, eval_every: int) -> RunConfig:
    return config_from_dict({
        "data": {"files": [str(corpus)]},
        "tokenizer": {"plugin": "char"},
        "model": {"plugin": "gpt", "n_layer": 1, "n_embd": 16, "n_head": 2, "context_length": 8},
        "train": {"device": "cpu", "dtype": "float32", "threads": 1, "batch_size": 4, "max_steps": steps,
                  "log_interval": 1, "eval_interval": eval_every, "eval_batches": 4, "sample_tokens": 16,
                  "warmup_steps": 10, "learning_rate": 3e-3, "min_lr": 3e-4},
    }, "bench")


def milestones(steps: int) -> list[int]:
    marks = [m for m in (1_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000, 1_000_000) if m < steps]
    return [*marks, steps]


def engine_part(registry: PluginRegistry, corpus: Path, work: Path, steps: int) -> None:
    config = tiny_config(corpus, steps, eval_every=max(steps // 10, 1))
    trainer = Trainer(config, registry, work / "run")
    buffers = {name: SeriesBuffer(max_points=20_000) for name in ("train", "val", "lr")}
    marks = set(milestones(steps))
    print(f"\nPart 1 — engine, headless: {steps:,} steps, a metrics record every step")
    print(f"{'step':>9} {'RSS MB':>8} {'Python objects':>15} {'metrics.jsonl MB':>17} {'buffered points':>16} {'s':>6}")
    start = time.perf_counter()
    for metrics in trainer.steps():
        buffers["train"].append(metrics.step, metrics.train_loss)
        buffers["lr"].append(metrics.step, metrics.lr)
        if metrics.val_loss is not None:
            buffers["val"].append(metrics.step, metrics.val_loss)
        if metrics.step in marks:
            gc.collect()
            size = trainer.run_dir.metrics_path.stat().st_size / MB
            print(f"{metrics.step:9,} {rss_mb():8.1f} {len(gc.get_objects()):15,} {size:17.2f} "
                  f"{buffers['train'].size:16,} {time.perf_counter() - start:6.0f}", flush=True)
    print(f"({(time.perf_counter() - start) / steps * 1e3:.2f} ms per step; final loss {metrics.train_loss:.3f})")


def plot_part(points: int) -> None:
    from PySide6.QtWidgets import QApplication

    from lmstudio_app.gui.widgets.loss_plot import LossPlot

    app = QApplication.instance() or QApplication([])
    plot = LossPlot()
    plot.resize(1200, 600)
    plot.show()
    app.processEvents()
    before = rss_mb()
    print(f"\nPart 2 — LossPlot: {points:,} points (offscreen window 1200x600)")
    start = time.perf_counter()
    for step in range(1, points + 1):
        val = 2.0 + 1.0 / step if step % 1000 == 0 else None
        plot.add_point(step, 4.0 / (1 + step / 5000) + 0.05 * ((step * 7919) % 13) / 13, 1e-3, val)
    added = time.perf_counter() - start
    timings = []
    for _ in range(10):  # what the plot's timer does when new points keep arriving
        plot.add_point(points + 1, 1.0)
        t0 = time.perf_counter()
        plot.redraw()
        app.processEvents()  # includes painting the downsampled curves
        timings.append(time.perf_counter() - t0)
    print(f"add_point: {added / points * 1e6:.1f} µs each; redraw + paint: median "
          f"{sorted(timings)[len(timings) // 2] * 1e3:.1f} ms, worst {max(timings) * 1e3:.1f} ms; "
          f"RSS {before:.0f} → {rss_mb():.0f} MB")
    plot.close()


def gui_part(registry: PluginRegistry, corpus: Path, work: Path, steps: int) -> None:
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from lmstudio_app.gui.events import AppEvents
    from lmstudio_app.gui.widgets.loss_plot import LossPlot
    from lmstudio_app.session import Session

    app = QApplication.instance() or QApplication([])
    plot = LossPlot()
    plot.resize(1200, 600)
    plot.show()
    session = Session(registry)  # its run controller trains; AppEvents delivers the reports, bounded
    events = AppEvents(session)
    trainer = Trainer(tiny_config(corpus, steps, eval_every=max(steps // 10, 1)), registry, work / "gui-run")
    marks, rows = set(milestones(steps)), []
    clock, worst = QElapsedTimer(), [0]
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:  # how late a 20 ms timer fires = how long the GUI thread was busy
        now = clock.elapsed()
        worst[0] = max(worst[0], now - last[0] - 20)
        last[0] = now

    def on_step(metrics: object) -> None:
        plot.add_metrics(metrics)
        if metrics.step in marks:  # type: ignore[attr-defined]
            rows.append((metrics.step, rss_mb(), worst[0], events.pending))  # type: ignore[attr-defined]

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    events.training_step.connect(on_step)
    done: list[str] = []
    events.training_finished.connect(done.append)  # the stop reason, or the error message
    print(f"\nPart 3 — through the app's run controller and event adapter into a shown LossPlot: {steps:,} steps")
    start = time.perf_counter()
    session.run.start(lambda: trainer)
    while not done:
        app.processEvents()
        time.sleep(0.001)
    session.run.wait()
    print(f"{'step':>9} {'RSS MB':>8} {'worst GUI stall ms':>19} {'queued reports':>15}")
    for step, rss, stall, pending in rows:
        print(f"{step:9,} {rss:8.1f} {stall:19.0f} {pending:15}")
    print(f"({time.perf_counter() - start:.0f} s; {done[0]})")
    timer.stop()
    plot.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="engine steps (default 100k; 0 skips part 1)")
    parser.add_argument("--plot-points", type=int, default=100_000, help="points fed to the LossPlot")
    parser.add_argument("--gui-steps", type=int, default=0, help="also train this many steps through the app's run controller")
    args = parser.parse_args()
    registry = PluginRegistry.discover(use_user_dir=False)
    with tempfile.TemporaryDirectory(prefix="lmstudio-long-") as tmp:
        work = Path(tmp)
        os.environ["LMSTUDIO_HOME"] = str(work / "home")
        corpus = work / "corpus.txt"
        corpus.write_text(generate_demo_corpus(2000, seed=1), encoding="utf-8")
        print(f"start RSS {rss_mb():.0f} MB")
        if args.steps:
            engine_part(registry, corpus, work, args.steps)
        if args.plot_points:
            plot_part(args.plot_points)
        if args.gui_steps:
            gui_part(registry, corpus, work, args.gui_steps)


if __name__ == "__main__":
    main()
