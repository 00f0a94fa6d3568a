"""What recording the watched prompts costs a training run: the default CPU run, with and without.

    python bench/watch_cost.py                 # 3 pairs of 300-step runs of the app's default config
    python bench/watch_cost.py --repeats 5 --steps 600

Each pair trains the app's default configuration (the demo corpus, its nine watched prompts) once
recording the timeline and once with recording switched off (``Watcher.due`` answering no), in
alternating order, in this process; the table gives the training seconds (the trainer's own
clock, pauses and preparation excluded) and the ratio of the medians. The target: ≤ 2% slower.
Runs of the same row differ by several percent on a shared 2-core machine, so the table also
gives the time spent inside ``Watcher.record`` itself, measured in the recording runs: that share
of the training time is the cost, free of the noise between runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmstudio_app.registry import PluginRegistry
from lmstudio_app.session import default_config
from lmstudio_app.training import watch
from lmstudio_app.training.trainer import Trainer


def one_run(registry: PluginRegistry, steps: int, recording: bool, folder: Path) -> tuple[float, int, float]:
    """(training seconds, timeline records, seconds inside Watcher.record) of one run."""
    config = default_config()
    config.train.max_steps = steps
    due, record = watch.Watcher.due, watch.Watcher.record
    spent = [0.0]

    def timed_record(self: watch.Watcher, step: int, predictor: object) -> dict:
        started = time.perf_counter()
        try:
            return record(self, step, predictor)  # type: ignore[arg-type]
        finally:
            spent[0] += time.perf_counter() - started

    watch.Watcher.record = timed_record  # type: ignore[method-assign]
    if not recording:
        watch.Watcher.due = lambda self, step, kept=False: False  # type: ignore[method-assign]
    try:
        trainer = Trainer(config, registry, folder)
        last = None
        for last in trainer.steps():
            pass
    finally:
        watch.Watcher.due, watch.Watcher.record = due, record  # type: ignore[method-assign]
    assert last is not None
    return float(last.elapsed_s), len(trainer.run_dir.timeline.read()) if trainer.run_dir else 0, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    registry = PluginRegistry.discover(use_user_dir=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    records: dict[bool, int] = {}
    inside: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="lmstudio-watch-") as tmp:
        one_run(registry, 20, True, Path(tmp) / "warmup")  # first-run costs (imports, allocator) out of the way
        for repeat in range(args.repeats):
            for recording in ((True, False) if repeat % 2 == 0 else (False, True)):
                started = time.perf_counter()
                seconds, records[recording], spent = one_run(registry, args.steps, recording,
                                                             Path(tmp) / f"run-{repeat}-{recording}")
                times[recording].append(seconds)
                inside[recording].append(spent / seconds)
                print(f"  repeat {repeat + 1}/{args.repeats}, recording {'on ' if recording else 'off'}: "
                      f"{seconds:.2f} s training ({time.perf_counter() - started:.1f} s in all)", flush=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"\nThe default CPU run, {args.steps} steps, {args.repeats} pairs (training seconds, median / min):\n")
    print(f"{'row':<20} {'median s':>9} {'min s':>7} {'timeline records':>17} {'time ratio':>11} "
          f"{'in record()':>12}")
    for label, key in (("recording off", False), ("recording on", True)):
        ratio = statistics.median(times[key]) / off
        print(f"{label:<20} {statistics.median(times[key]):9.2f} {min(times[key]):7.2f} {records[key]:17} "
              f"{ratio:11.3f} {statistics.median(inside[key]):11.2%}")
    print(f"\nrecording: {statistics.median(inside[True]):.2%} of the training time inside Watcher.record; "
          f"the runs differed by {100 * (on / off - 1):+.1f}% (median) and "
          f"{100 * (min(times[True]) / min(times[False]) - 1):+.1f}% (best), which includes the noise between runs")


if __name__ == "__main__":
    main()
