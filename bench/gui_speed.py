"""In-app training speed vs headless: the same config, trained by the core alone and in the app.

    python bench/gui_speed.py --threads 1                # default preset, 300 steps, 3 runs of each
    python bench/gui_speed.py --steps 150 --repeats 2    # quicker (PyTorch's default threads)
    python bench/gui_speed.py --threads 1 --baseline /tmp/base   # also the app from another copy

Rows, each run in a fresh subprocess, in alternating order (A, B, C, C, B, A, ...), so a
neighbour's load on a shared machine hits every row alike:

- ``headless, main thread``: ``Session.create_trainer()`` on the demo corpus with the preset,
  then ``for metrics in trainer.steps()`` in the main thread (what ``lmstudio train`` runs,
  minus its progress lines).
- ``headless, worker thread``: the same loop on a thread of its own while the main thread
  waits, which is how the app trains.
- ``app``: the real MainWindow (offscreen, 1400x900, every dock as on first launch), the Start
  button clicked once the window is idle; timed from ``training_started`` to
  ``training_finished``.

All count the whole loop: steps, evaluations, generated samples and the final checkpoint, at
the config's own eval/log/sample settings. tokens/s = steps x batch_size x context_length /
loop seconds. The table gives the median and the best run of each (on a busy machine the best
run is the closest to the code's own speed) and each row's ratio to both headless rows (1.00 =
as fast). "CPU s" is the process's CPU time during the loop (median) and "GUI thread CPU" the
main thread's CPU time as a share of the loop's wall time: these hardly depend on the
machine's other load, so they show the app's own cost even when the tokens/s are noisy.
"training thread on CPU" is the training thread's CPU time over its wall time inside
``trainer.steps()``: what the thread loses waiting for the GIL while the GUI thread holds it
(PySide6 keeps the GIL through every Qt call made from Python, and pyqtgraph paints in Python)
or for the trainer's lock while the panels probe the live model. On a shared machine it is the
steadiest measure of the app's cost to training.

``--threads 1`` compares like with like. With PyTorch's default (one OpenMP thread per core)
and every core busy with other processes, a headless run can be many times slower than the
app: libgomp's workers busy-wait at the end of each parallel region unless the process has
more threads than CPUs (the app has: Qt's, the thread pool), and a spinning worker starves the
one with the work. On 2 shared cores that measured 3k tokens/s headless against 58k in the app
for the default preset (and ~100 CPU seconds against 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_harness import (
    CpuMeter,
    TrainingThreadClock,
    make_app,
    open_window,
    run_worker,
    settle,
    table,
    train_in_window,
)

MAIN = "headless, main thread (as the CLI)"
THREAD = "headless, worker thread (as the app)"


def tokens_per_step(config: Any) -> int:
    return int(config.train.batch_size) * int(config.model.params["context_length"])


def worker_headless(steps: int, preset: str, threads: int, in_thread: bool) -> dict[str, Any]:
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.session import Session

    clock = TrainingThreadClock().install()
    session = Session(PluginRegistry.discover(use_user_dir=False))
    session.apply_preset(preset)
    session.set_train({"max_steps": steps, "device": "cpu", "threads": threads})
    trainer = session.create_trainer(Path(tempfile.mkdtemp(prefix="run-", dir=".")))
    timing: list[float] = []
    cpu = CpuMeter()
    cpu.start()

    def loop() -> None:
        started = time.perf_counter()
        for _metrics in trainer.steps():
            pass
        timing.append(time.perf_counter() - started)

    if in_thread:  # as the app trains: on a thread of its own, the main thread idle
        thread = threading.Thread(target=loop, name="training")
        thread.start()
        thread.join()
    else:
        loop()
    cpu.stop()
    return {"loop_s": timing[0], "tokens_per_s": trainer.step * tokens_per_step(session.config) / timing[0],
            "steps": trainer.step, "gui_cpu_s": 0.0 if in_thread else None,
            "cpu_s": cpu.main_s + cpu.others_s, "on_cpu": clock.on_cpu}


def worker_app(steps: int, preset: str, threads: int) -> dict[str, Any]:
    clock = TrainingThreadClock().install()
    make_app()
    window = open_window(steps, preset, threads=threads)
    settle(window)  # as a person would: the window is up and quiet before they press Start
    run = train_in_window(window, timeout_s=1800)
    result = {"loop_s": run["loop_wall_s"], "steps": run["steps"],
              "tokens_per_s": run["steps"] * tokens_per_step(window.session.config) / run["loop_wall_s"],
              "gui_cpu_s": run["gui_cpu_s"], "cpu_s": run["gui_cpu_s"] + run["other_cpu_s"],
              "on_cpu": clock.on_cpu}
    window.close()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row")
    parser.add_argument("--threads", type=int, default=0, help="train.threads (0: PyTorch's default)")
    parser.add_argument("--baseline", metavar="DIR", help="also run the app from this copy of lmstudio_app")
    parser.add_argument("--worker", choices=("main", "thread", "app"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        if args.worker == "app":
            print(json.dumps(worker_app(args.steps, args.preset, args.threads)))
        else:
            print(json.dumps(worker_headless(args.steps, args.preset, args.threads, in_thread=args.worker == "thread")))
        return

    rows = [(MAIN, "main", None), (THREAD, "thread", None), ("app", "app", None)]
    if args.baseline:
        rows.append(("app (baseline)", "app", args.baseline))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in rows}
    script = Path(__file__).resolve()
    for repeat in range(args.repeats):
        for name, kind, impl in rows if repeat % 2 == 0 else rows[::-1]:
            print(f"  run {repeat + 1}/{args.repeats}: {name}…", file=sys.stderr, flush=True)
            worker_args = ["--worker", kind, "--steps", str(args.steps), "--preset", args.preset,
                           "--threads", str(args.threads)]
            result = run_worker(script, worker_args, impl, timeout_s=3600)
            results[name].append(result)
            print(f"    {result['tokens_per_s']:,.0f} tokens/s", file=sys.stderr, flush=True)

    def speeds(name: str) -> list[float]:
        return [r["tokens_per_s"] for r in results[name]]

    lines = []
    for name, _, _ in rows:
        median, best = statistics.median(speeds(name)), max(speeds(name))
        ratios = [f"{median / statistics.median(speeds(ref)):.3f}  {best / max(speeds(ref)):.3f}"
                  for ref in (THREAD, MAIN)]
        cpu = statistics.median(r["cpu_s"] for r in results[name])
        gui = [r["gui_cpu_s"] for r in results[name] if r["gui_cpu_s"] is not None]
        gui_share = f"{statistics.median(g / r['loop_s'] for g, r in zip(gui, results[name])):.1%}" if gui else "-"
        on_cpu = f"{statistics.median(r['on_cpu'] for r in results[name]):.1%}"
        lines.append([name, f"{median:,.0f}", f"{best:,.0f}", *ratios, f"{cpu:.2f}", gui_share, on_cpu,
                      " ".join(f"{s:,.0f}" for s in speeds(name))])
    threads = args.threads or "PyTorch's default"
    print(f"\nTraining speed, preset {args.preset!r}, {args.steps} steps, {args.repeats} runs each, CPU, "
          f"threads: {threads}\n")
    print(table(["row", "median tok/s", "best tok/s", "vs thread: median  best", "vs main: median  best",
                 "CPU s", "GUI thread CPU", "training thread on CPU", "all runs (tok/s)"], lines))


if __name__ == "__main__":
    main()
