"""What looking inside the model costs: each Inspector call on a 64-token prompt, and training's speed.

    python bench/inspect_speed.py                  # the app's default CPU config, demo corpus
    python bench/inspect_speed.py --calls 40 --steps 200 --repeats 3

Part 1 times each :class:`~lmstudio_app.inference.inspection.Inspector` method (attention, the
logit lens, the embedding map, the loss over the prompt) on the default CPU run with a 64-token
prompt: idle (between two training runs) and while the trainer trains in another thread (median
and p95 ms; target <= 100 ms). Two ways to reach the live model: "live lock" asks the training
model itself under the trainer's lock (each call waits for the step in progress), "probe copy"
asks a :class:`~lmstudio_app.training.probe.LiveProbe` copy of the weights, refreshed between two
steps before each call (what the app's prediction panels use; the call never waits for a step).

Part 2 trains the same run with all four views polling once a second, both ways, and with nobody
looking, in rotating order, and gives the training steps/s of each and the ratio to "views closed"
(target: <= 3% slower). Runs differ by several percent on a shared 2-core machine; the table also
gives the share of the training time the poller spent in its calls, the cost free of that noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmstudio_app.inference.inspection import EmbeddingProjector, Inspector
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.resources import demo_corpus_path
from lmstudio_app.session import default_config
from lmstudio_app.training.probe import LiveProbe
from lmstudio_app.training.trainer import Trainer


def new_trainer(registry: PluginRegistry, steps: int) -> Trainer:
    config = default_config()
    config.train.max_steps = steps
    config.train.sample_tokens = 0
    return Trainer(config, registry, write_run=False)


def prompt_of(trainer: Trainer, n_tokens: int) -> str:
    """The first ``n_tokens`` tokens of the demo corpus, as text."""
    text = demo_corpus_path().read_text(encoding="utf-8")[:4000]
    tokens = trainer.tokenizer.encode_with_offsets(text)
    return text[: tokens[n_tokens - 1].end]


def calls(inspector: Inspector, prompt: str) -> dict[str, Callable[[], object]]:
    projector = EmbeddingProjector()
    return {
        "attention": lambda: inspector.attention(prompt),
        "logit lens": lambda: inspector.logit_lens(prompt),
        "embedding map": lambda: inspector.embeddings(projector),
        "text loss": lambda: inspector.text_loss(prompt),
    }


MODES = ("live lock", "probe copy")


def mode_calls(trainer: Trainer, mode: str, prompt: str) -> dict[str, Callable[[], object]]:
    """The four calls on the live model (its lock) or on a probe copy refreshed before each call."""
    if mode == "live lock":
        return calls(Inspector(trainer.predictor()), prompt)
    probe = LiveProbe(trainer)
    plain = calls(Inspector(probe.predictor()), prompt)

    def refreshed(fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            probe.mark_stale()  # the weights moved since the last call: copy them between two steps
            probe.predictor()
            return fn()
        return call

    return {name: refreshed(fn) for name, fn in plain.items()}


def time_calls(fns: dict[str, Callable[[], object]], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            out[name].append(1000 * (time.perf_counter() - started))
    return out


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def part1(registry: PluginRegistry, n_calls: int) -> None:
    trainer = new_trainer(registry, 100_000)
    steps = trainer.steps()
    for _ in range(50):  # a model that has learnt something, and warm allocators
        next(steps)
    prompt = prompt_of(trainer, 64)
    assert len(trainer.tokenizer.encode(prompt)) == 64
    rows: dict[str, dict[str, list[float]]] = {}
    for mode in MODES:
        fns = mode_calls(trainer, mode, prompt)
        time_calls(fns, 3)  # warm-up
        rows[f"idle, {mode}"] = time_calls(fns, n_calls)

    stop = threading.Event()
    trained = [0]

    def train() -> None:
        for _ in steps:
            trained[0] += 1
            if stop.is_set():
                break

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    while trained[0] < 5:
        time.sleep(0.01)
    for mode in MODES:
        rows[f"training, {mode}"] = time_calls(mode_calls(trainer, mode, prompt), n_calls)
    stop.set()
    thread.join()
    print(f"\nPart 1: Inspector calls on a 64-token prompt, the default CPU model "
          f"({trainer.model.num_parameters():,} parameters, vocabulary {trainer.tokenizer.vocab_size}), "
          f"{n_calls} calls each, ms (median / p95):\n")
    names = list(next(iter(rows.values())))
    print(f"{'model':<22}" + "".join(f"{name:>18}" for name in names))
    for label, times in rows.items():
        print(f"{label:<22}" + "".join(f"{statistics.median(times[n]):9.1f} /{p95(times[n]):6.1f}" for n in names))
    print(f"(the trainer made {trained[0]} steps meanwhile)")


class TimedLock:
    """The trainer's RLock, timing how long the training thread waits to take it (for the views)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.trainer_thread = threading.get_ident()
        self.waited = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.get_ident() != self.trainer_thread:
            return self._lock.acquire(blocking, timeout)
        started = time.perf_counter()
        try:
            return self._lock.acquire(blocking, timeout)
        finally:
            self.waited += time.perf_counter() - started

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def one_run(registry: PluginRegistry, steps: int, mode: str | None) -> tuple[float, float, float, float]:
    """(steps per second, and as shares of the training time: the poller's time in its calls, its CPU
    time, the training thread's wait for the lock)."""
    trainer = new_trainer(registry, steps)
    lock = TimedLock()
    trainer.lock = lock  # type: ignore[assignment]  # before any predictor or probe takes it
    stop = threading.Event()
    spent = [0.0, 0.0]
    poller = None
    if mode is not None:
        fns = mode_calls(trainer, mode, prompt_of(trainer, 64))

        def poll() -> None:  # every view open: each asks once a second, as the app's views at most do
            while not stop.wait(1.0):
                started, cpu = time.perf_counter(), time.thread_time()
                for fn in fns.values():
                    fn()
                spent[0] += time.perf_counter() - started
                spent[1] += time.thread_time() - cpu

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    started = time.perf_counter()
    for _ in trainer.steps():
        pass
    seconds = time.perf_counter() - started
    stop.set()
    if poller is not None:
        poller.join()
    return steps / seconds, spent[0] / seconds, spent[1] / seconds, lock.waited / seconds


def part2(registry: PluginRegistry, steps: int, repeats: int) -> None:
    modes: list[str | None] = [None, *MODES]
    rates: dict[str | None, list[float]] = {m: [] for m in modes}
    shares: dict[str | None, list[tuple[float, float, float]]] = {m: [] for m in modes}
    one_run(registry, 20, None)  # first-run costs out of the way
    for repeat in range(repeats):
        order = modes[repeat % len(modes):] + modes[: repeat % len(modes)]  # rotate: no row always first
        for mode in order:
            rate, *share = one_run(registry, steps, mode)
            rates[mode].append(rate)
            shares[mode].append(tuple(share))  # type: ignore[arg-type]
            print(f"  repeat {repeat + 1}/{repeats}, views {mode or 'closed'}: {rate:.1f} steps/s", flush=True)
    closed = statistics.median(rates[None])
    print(f"\nPart 2: training the default CPU run for {steps} steps, {repeats} runs per row (steps/s):\n")
    print(f"{'row':<34} {'median':>8} {'best':>7} {'ratio':>7} {'in calls':>9} {'poll CPU':>9} {'lock wait':>10}")
    for mode in modes:
        label = "views closed" if mode is None else f"views open (4 x 1 Hz), {mode}"
        median = statistics.median(rates[mode])
        calls_, cpu, wait = (statistics.median(x[i] for x in shares[mode]) for i in range(3))
        print(f"{label:<34} {median:8.1f} {max(rates[mode]):7.1f} {median / closed:7.3f} "
              f"{calls_:9.2%} {cpu:9.2%} {wait:10.2%}")
    print("\nshares of the training time: 'in calls' the poller's four calls each second (waiting for a step "
          "included), 'poll CPU' the CPU they used, 'lock wait' how long the training thread waited for them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls of each method per row")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run in part 2")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs in part 2")
    args = parser.parse_args()
    registry = PluginRegistry.discover(use_user_dir=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads before training")
    part1(registry, args.calls)
    part2(registry, args.steps, args.repeats)


if __name__ == "__main__":
    main()
