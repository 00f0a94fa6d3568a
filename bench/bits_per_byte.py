"""Tokenizers compared on one axis: validation bits per UTF-8 byte after the same training time.

    python bench/bits_per_byte.py                     # 5 rows x 30 s of training (about 3 minutes)
    python bench/bits_per_byte.py --seconds 5         # quick smoke run
    python bench/bits_per_byte.py --files a.txt b.txt --seconds 60 --threads 1

Every row trains the same model (gpt, --layers x --width, context 64 tokens, batch 12, AdamW,
cosine schedule) on the same text and the same character split (last 10% validates), for the
same wall-clock training budget: a short calibration (20 steps) measures the row's speed, then
max_steps is set so that the cosine schedule ends when the budget does (corrected once,
halfway). Tokenizer training and tokenizing are not counted in the budget (shown apart).
Validation loss is measured by this script for every row alike (--eval-batches random windows of the validation split) and converted with
the row's own tokens-per-byte of that split: bits/byte = nats/token x tokens / (bytes x ln 2).

Two caveats. A fixed context in tokens means a BPE or word model sees several times more text per
window than a char or byte model, one reason coarser tokenizers can win at equal time. And bits
per byte is only fair between lossless tokenizers: a word tokenizer maps the words outside its
vocabulary to ``<unk>``, one cheap token for what may be many bytes, so its number flatters it
(the "unk %" column, share of the training tokens that are ``<unk>``, says by how much to doubt it).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lmstudio_app.config import config_from_dict
from lmstudio_app.data.coverage import unknown_share
from lmstudio_app.registry import PluginRegistry
from lmstudio_app.resources import demo_corpus_path
from lmstudio_app.training.trainer import Trainer

ROWS = (("char", {}), ("byte", {}), ("bpe", {"vocab_size": 512}), ("bpe", {"vocab_size": 2048}),
        ("word", {"vocab_size": 8192}))
CALIBRATION_STEPS = 20


def config(files: list[str], plugin: str, params: dict, args: argparse.Namespace) -> dict:
    return {
        "data": {"files": files, "val_fraction": 0.1},
        "tokenizer": {"plugin": plugin, **params},
        "model": {"plugin": "gpt", "n_layer": args.layers, "n_head": 4, "n_embd": args.width, "context_length": 64},
        "train": {"device": args.device, "dtype": "float32", "batch_size": 12, "max_steps": 1_000_000,
                  "warmup_steps": CALIBRATION_STEPS, "eval_interval": 1_000_000, "eval_batches": 1,
                  "log_interval": 10, "sample_tokens": 0, "threads": args.threads, "seed": args.seed},
    }


def run_row(files: list[str], plugin: str, params: dict, args: argparse.Namespace,
            registry: PluginRegistry) -> dict:
    started = time.perf_counter()
    trainer = Trainer(config_from_dict(config(files, plugin, params, args)), registry, write_run=False)
    prepared_s = time.perf_counter() - started
    steps = trainer.steps()
    began = time.perf_counter()
    marks: dict[int, float] = {}  # step -> time, at the reports (every 10 steps)
    for metrics in steps:
        marks[metrics.step] = time.perf_counter()
        if metrics.step >= CALIBRATION_STEPS:
            break
    # Timed from the first report on: the first steps pay for warming up the allocator and caches.
    first = min(marks)
    per_step = (marks[trainer.step] - marks[first]) / max(trainer.step - first, 1)
    # The cosine schedule (read from the config at every step) now ends where the budget does.
    cfg = trainer.config.train
    cfg.max_steps = max(trainer.step + 1, int(args.seconds / per_step))
    since_step, since = trainer.step, time.perf_counter()
    refined = False
    for metrics in steps:
        if not refined and metrics.step >= cfg.max_steps // 2:  # halfway: correct the estimate once
            refined = True
            now = time.perf_counter()
            per_step = (now - since) / max(metrics.step - since_step, 1)
            cfg.max_steps = max(metrics.step + 1, metrics.step + int((args.seconds - (now - began)) / per_step))
    trained_s = time.perf_counter() - began
    val_loss = trainer.evaluate(batches=args.eval_batches)
    corpus = trainer.corpus
    unknown, total = unknown_share(trainer.tokenizer, corpus)
    return {
        "tokenizer": plugin + (f" {params['vocab_size']}" if "vocab_size" in params else ""),
        "vocab": trainer.tokenizer.vocab_size, "bytes/token": corpus.bytes_per_token,
        "prep s": prepared_s, "train s": trained_s, "steps": trainer.step,
        "bytes seen": trainer.step * 12 * 64 * corpus.bytes_per_token,
        "unk %": 100.0 * unknown / max(total, 1),
        "val nats/token": val_loss, "val bits/byte": trainer.bits_per_byte(val_loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="*", default=[str(demo_corpus_path())])
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per row")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    registry = PluginRegistry.discover(use_user_dir=False)
    files = [str(Path(f).resolve()) for f in args.files]
    rows = [run_row(files, plugin, params, args, registry) for plugin, params in ROWS]
    print(f"corpus: {', '.join(Path(f).name for f in files)}; {args.seconds:g} s of training per row, "
          f"gpt {args.layers}x{args.width}, context 64 tokens, batch 12")
    header = ("tokenizer", "vocab", "bytes/token", "unk %", "prep s", "train s", "steps", "bytes seen",
              "val nats/token", "val bits/byte")
    print(" | ".join(f"{h:>14}" for h in header))
    for row in rows:
        cells = []
        for key in header:
            value = row[key]
            if isinstance(value, float):
                cells.append(f"{value:>14,.0f}" if key == "bytes seen" else f"{value:>14.3f}")
            else:
                cells.append(f"{value!s:>14}")
        print(" | ".join(cells))
    best = min(rows, key=lambda r: r["val bits/byte"] if r["val bits/byte"] is not None else math.inf)
    print(f"lowest bits per byte: {best['tokenizer']}")


if __name__ == "__main__":
    main()
