"""Keystroke latency: one key typed in the Predictions panel's prompt → its predictions shown.

    python bench/keystroke_latency.py                          # current code: both rows
    python bench/keystroke_latency.py --baseline /tmp/base     # the same rows from another copy too
    python bench/keystroke_latency.py --keys 10 --repeats 1    # quick smoke run

A copy to compare with, e.g. an earlier commit:
``mkdir /tmp/base && git archive COMMIT lmstudio_app resources plugins | tar -x -C /tmp/base``.
The worker runs with ``DIR`` and ``DIR/plugins`` first on ``sys.path`` (``gui_harness.run_worker``),
so the copy runs with its own built-in plugin (without ``plugins`` in the copy, the installed one is used).

One trial: with the prompt at the end of a sentence prefix ("the cat sat on the"), one real key
event (``QTest.keyClick``) types the next character of " mat", " floor" or " couch", or a
Backspace that takes it out again (the prompt never empties), as a person types a word and
corrects it. Latency = from just before the key event to the panel's ``prediction_ready``
signal (the table and chart filled) for a prediction made while the prompt holds that very
text (the panel drops stale answers, so the first one after the key whose prompt matches is the
one for the key). It includes any edit debounce the code has (the app up to 3c6f0ce waited
120 ms on purpose, then queried under the trainer's lock; now a key is scored at once on the
probe's copy of the weights): what the person sees is debounce + any wait + query + filling, and the
inference on the thread pool; the next paint follows in the same event-loop pass. Between
trials the panel is left to go quiet, then 50-150 ms more (randomised, so trials do not lock
onto the training loop's rhythm).

Rows, each run in a fresh subprocess with the real MainWindow (offscreen, 1400x900):

- ``idle``: a short run (``--idle-steps``) of the preset is trained to its end first, so the
  model is there and nothing else runs while the keys are typed.
- ``training``: a run of ``--train-steps`` started with the training panel's ``start_training()``;
  the keys are typed after its first ``--warmup`` steps, while it trains, then it is stopped.
  "train steps/s" is its rate meanwhile, to show it really trained through the trials.

The table pools every trial of a row across ``--repeats`` workers (rows alternate their order).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_harness import make_app, open_window, process_until, run_worker, settle, spin, table

PROMPT = "the cat sat on the"
WORDS = ("mat", "floor", "couch")
BACKSPACE = "\b"
TIMEOUT_S = 120  # for one answer, or for training to reach a step


def key_sequence() -> Iterator[str]:
    """" mat" typed then erased, then " floor", then " couch", ... one key at a time."""
    for word in cycle(WORDS):
        yield from " " + word
        yield from BACKSPACE * (len(word) + 1)


def trainer_step(window: Any) -> int:
    trainer = window.session.trainer
    return int(trainer.step) if trainer is not None else 0


def type_keys(panel: Any, keys: int, seed: int) -> list[float]:
    """Type ``keys`` keys into the prompt, one trial each; the latencies in ms."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    edit = panel.prompt_edit
    edit.setFocus()
    cursor = edit.textCursor()
    cursor.movePosition(cursor.MoveOperation.End)
    edit.setTextCursor(cursor)
    expected = [""]  # the prompt a trial waits for an answer about ("" between trials)
    arrived: list[float] = []

    def on_ready(_prediction: object) -> None:
        if expected[0] and panel.prompt() == expected[0]:
            arrived.append(time.perf_counter())
            expected[0] = ""

    panel.prediction_ready.connect(on_ready)
    busy = getattr(panel, "is_busy", None)
    rng = random.Random(seed)
    latencies = []
    text = panel.prompt()
    for key in islice(key_sequence(), keys):
        text = text[:-1] if key == BACKSPACE else text + key
        arrived.clear()
        expected[0] = text
        started = time.perf_counter()
        QTest.keyClick(edit, Qt.Key.Key_Backspace if key == BACKSPACE else key)
        if panel.prompt() != text:
            raise RuntimeError(f"the key did not reach the prompt: {panel.prompt()!r}, expected {text!r}")
        process_until(lambda: bool(arrived), TIMEOUT_S, poll_ms=5)
        latencies.append((arrived[0] - started) * 1000)
        if callable(busy):  # a query still queued behind this one finishes before the next key
            process_until(lambda: not busy(), TIMEOUT_S)
        spin(0.05 + 0.1 * rng.random())
    panel.prediction_ready.disconnect(on_ready)
    return latencies


def worker(args: argparse.Namespace) -> dict[str, Any]:
    make_app()  # with --impl, gui_harness.run_worker put the copy and its plugins first on the path
    idle = args.worker == "idle"
    window = open_window(args.idle_steps if idle else args.train_steps, args.preset, threads=args.threads)
    settle(window)  # as a person would: the window is up and quiet before they press Start
    panel = window.panels["predictions"]
    training = window.training_panel
    training.start_training()
    process_until(lambda: trainer_step(window) >= (args.idle_steps if idle else args.warmup), 600)
    if idle:
        training.stop_and_wait()  # the run is at its last step: wait for its end (final checkpoint)
    settle(window)  # idle: the end of the run reached the panels; training: the first refreshes
    step, started = trainer_step(window), time.perf_counter()
    latencies = type_keys(panel, args.keys, args.seed)
    steps_per_s = (trainer_step(window) - step) / (time.perf_counter() - started)
    if not idle and window.session.trainer.step >= args.train_steps:
        raise RuntimeError("the run ended before the last key: raise --train-steps")
    training.stop_and_wait()
    window.close()
    packages = [sys.modules[name].__file__ for name in ("lmstudio_app", "lmstudio_builtins") if name in sys.modules]
    return {"latencies_ms": latencies, "steps_per_s": steps_per_s, "packages": packages}


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def run_all(args: argparse.Namespace) -> None:
    variants: list[tuple[str, str | None]] = [("", None)]
    if args.baseline:
        variants.append((" (baseline)", str(Path(args.baseline).resolve())))
    jobs = [("idle", f"idle, finished {args.idle_steps}-step run"),
            ("training", f"while training (step {args.warmup}+ of {args.train_steps:,})")]
    common = ["--keys", str(args.keys), "--preset", args.preset, "--threads", str(args.threads),
              "--idle-steps", str(args.idle_steps), "--train-steps", str(args.train_steps),
              "--warmup", str(args.warmup)]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    script = Path(__file__).resolve()
    for repeat in range(args.repeats):
        order = [(job, variant) for job, _ in jobs for variant in variants]
        for job, (suffix, impl) in order if repeat % 2 == 0 else order[::-1]:
            print(f"  repeat {repeat + 1}/{args.repeats}: {job}{suffix}…", file=sys.stderr, flush=True)
            worker_args = ["--worker", job, "--seed", str(repeat), *common] + (["--impl", impl] if impl else [])
            result = run_worker(script, worker_args, impl, timeout_s=900)
            if impl and not all(path.startswith(impl) for path in result["packages"]):
                raise RuntimeError(f"the baseline worker imported {result['packages']}, not the copy in {impl}")
            print(f"    median {statistics.median(result['latencies_ms']):.0f} ms", file=sys.stderr, flush=True)
            results.setdefault((job, suffix), []).append(result)
    rows = []
    for job, label in jobs:
        for suffix, _ in variants:
            runs = results[(job, suffix)]
            ms = [value for run in runs for value in run["latencies_ms"]]
            rate = f"{statistics.median(r['steps_per_s'] for r in runs):.1f}" if job == "training" else "-"
            rows.append([label + suffix, f"{statistics.median(ms):.0f}", f"{percentile(ms, 0.95):.0f}",
                         f"{max(ms):.0f}", f"{min(ms):.0f}", len(ms), rate])
    print(f"\nKeystroke → predictions shown, ms (preset {args.preset!r}, {args.keys} keys x {args.repeats} "
          f"worker(s) per row; includes any edit debounce; offscreen 1400x900)\n")
    print(table(["row", "median", "p95", "max", "min", "n", "train steps/s"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=40, help="keystrokes (trials) per worker")
    parser.add_argument("--repeats", type=int, default=3, help="workers per row")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: PyTorch's default)")
    parser.add_argument("--idle-steps", type=int, default=20, help="steps of the run trained before the idle row")
    parser.add_argument("--train-steps", type=int, default=100_000, help="max_steps of the run trained meanwhile")
    parser.add_argument("--warmup", type=int, default=10, help="training steps before the first key")
    parser.add_argument("--baseline", metavar="DIR", help="also run the rows from this copy of lmstudio_app")
    parser.add_argument("--worker", choices=("idle", "training"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        run_all(args)
    else:
        print(json.dumps(worker(args)))


if __name__ == "__main__":
    main()
