"""A big corpus through the real data path: peak memory and time to read, build and tokenize it.

    python bench/big_corpus.py                  # 200 MB of text, the char tokenizer (a few minutes)
    python bench/big_corpus.py --mb 20          # quick run
    python bench/big_corpus.py --tokenizer bpe --mb 50

It writes a synthetic UTF-8 corpus (demo-grammar sentences with numbered names, so it does not
compress to a handful of lines) into a temporary folder, then, in this one process, times each
stage exactly as a run prepares it: ``load_corpus_text`` (reading), the tokenizer plugin's
``build`` (one pass over the text for char/byte, training for BPE) and ``tokenize_corpus``. A
thread samples the resident set size every 20 ms, so each row shows the peak reached during
its stage. A last row cancels a second tokenization halfway and reports how long the cancel
took to be honoured and that the memory came back.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmstudio_app.data.corpus import tokenize_corpus
from lmstudio_app.data.files import load_corpus_text
from lmstudio_app.errors import Cancelled
from lmstudio_app.params import build_params
from lmstudio_app.registry import PluginRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import RssSampler

MB = 1 << 20


def write_corpus(path: Path, size_mb: float, seed: int = 0) -> int:
    """About ``size_mb`` MB of sentences, written in 1 MB blocks (never held whole in memory)."""
    rng = random.Random(seed)
    subjects = [f"{a} {b}{i}" for a in ("the", "a", "my") for b in ("cat", "dog", "bird", "fox") for i in range(40)]
    verbs = ["sees", "likes", "chases", "finds", "follows", "hears"]
    objects = ["the ball", "a mouse", "the red hat", "some bread", "the old tree", "a small boat"]
    target, written = int(size_mb * MB), 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            block = "".join(
                f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.\n" for _ in range(25_000)
            )
            fh.write(block)
            written += len(block)
    return path.stat().st_size


@contextmanager
def stage(rows: list[tuple[str, float, int, int]], name: str, sampler: RssSampler) -> Iterator[None]:
    gc.collect()
    sampler.reset()
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    rows.append((name, elapsed, sampler.peak, sampler.now()))


def progress_printer(label: str) -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or done == total:
            last[0] = now
            print(f"  {label}: {100 * done / max(total, 1):5.1f}%", flush=True)

    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="corpus size in MB (default 200)")
    parser.add_argument("--tokenizer", default="char", help="tokenizer plugin: char, byte, bpe, word")
    parser.add_argument("--memmap", action="store_true", help="spill token arrays to files (memmap_dir)")
    args = parser.parse_args()

    registry = PluginRegistry.discover(use_user_dir=False)
    spec = registry.tokenizer(args.tokenizer)
    sampler = RssSampler()
    rows: list[tuple[str, float, int, int]] = []
    baseline = sampler.now()
    with tempfile.TemporaryDirectory(prefix="lmstudio-big-") as tmp:
        path = Path(tmp) / "big.txt"
        size = write_corpus(path, args.mb)
        print(f"corpus: {path} {size / MB:.1f} MB; tokenizer {args.tokenizer}; baseline RSS {baseline / MB:.0f} MB")
        with stage(rows, "read (load_corpus_text)", sampler):
            text, _ = load_corpus_text([path], progress=progress_printer("reading"))
        with stage(rows, f"build tokenizer ({args.tokenizer})", sampler):
            from lmstudio_app.data.corpus import iter_text_chunks

            params = build_params(spec.params, {}, "tokenizer")
            tokenizer = spec.build(params, lambda: iter_text_chunks(text), progress_printer("tokenizer"))
        memmap_dir = Path(tmp) / "tokens" if args.memmap else None
        with stage(rows, "tokenize_corpus", sampler):
            corpus = tokenize_corpus(tokenizer, text, 0.1, progress=progress_printer("tokenizing"),
                                     memmap_dir=memmap_dir)
        n_tokens, itemsize = corpus.n_tokens, corpus.train.dtype.itemsize
        del corpus
        gc.collect()

        requested: list[float] = []

        def cancel_halfway(done: int, total: int) -> None:
            if done >= total // 2 and not requested:
                requested.append(time.perf_counter())

        with stage(rows, "tokenize, cancelled at 50%", sampler):
            try:
                tokenize_corpus(tokenizer, text, 0.1, progress=cancel_halfway, cancel=lambda: bool(requested),
                                memmap_dir=memmap_dir)
            except Cancelled:
                honoured = time.perf_counter() - requested[0]
            else:
                honoured = float("nan")
        gc.collect()
        after_cancel = sampler.now()
    sampler.close()

    print()
    print(f"{size / MB:.0f} MB corpus, {n_tokens:,} tokens ({itemsize} bytes each = "
          f"{n_tokens * itemsize / MB:.0f} MB of token IDs), text in memory ~{len(text) / MB:.0f} MB")
    print(f"{'stage':32} {'time s':>8} {'peak RSS MB':>12} {'RSS after MB':>13}")
    for name, elapsed, peak, after in rows:
        print(f"{name:32} {elapsed:8.1f} {peak / MB:12.0f} {after / MB:13.0f}")
    print(f"cancel honoured {honoured * 1000:.0f} ms after the request; RSS after the cancel "
          f"{after_cancel / MB:.0f} MB")


if __name__ == "__main__":
    main()
