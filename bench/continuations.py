"""Continuation counts on a big token array: build time, peak memory, index size, query latency.

    python bench/continuations.py                       # ~100 MB of text per source (about a minute)
    python bench/continuations.py --mb 10               # quick run
    python bench/continuations.py --sources sentences,zipf,repeated --text /path/to/some.txt

Each source is a token array made straight with numpy (seconds, no tokenizer run), as a run's
``corpus.train`` would hold it:

- ``sentences``: the bytes (a byte tokenizer's IDs, ``uint16``) of random demo-grammar sentences
  with numbered names, as ``bench/big_corpus.py`` writes them. ~40 distinct tokens and long
  repeats: nearly every position shares its first 16 tokens with another one, so the sort runs
  all its rounds (the hard case for the build).
- ``zipf``: BPE-like IDs, independent draws from a Zipf law over 50,257 IDs, one token per
  4 bytes of text. Little repetition (the build's easy case) but thousands of different next
  tokens after a common one (the hard case for counting).
- ``repeated``: a real text's bytes (``--text``, else ``resources/demo_corpus.txt``) tiled to the
  size: every position is duplicated, the worst case of ties at full depth.

Each source runs in a fresh process (so no row inherits another's heap). It builds a
:class:`ContinuationIndex` while a thread samples the resident set size every 20 ms (the peak
during the build, and its growth over the RSS just before) and ``tracemalloc`` counts numpy's
allocations (the build's exact peak, per token). Then it times ``continuations(context)``
(``max_n = 8``) for 1,000 contexts of 1-8 tokens cut from random places of the text ("text
ctx": they occur, so the search runs to the full length), 1,000 contexts of 1-8 tokens picked
from random places independently ("random ctx": they back off to a short suffix), the context
made of the text's most frequent token alone (the largest range to count: median of 20 calls),
and 200 contexts of 64 tokens from the text with ``max_n = 64`` ("64-token ctx": past the
sorted depth of 16, the exact but slower path). Four answers per source are checked against a
plain numpy scan of the whole array. Last, a second build is cancelled when its progress
reaches half, and the time until ``Cancelled`` is raised is reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmstudio_app.data.continuations import ContinuationIndex
from lmstudio_app.errors import Cancelled

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import RssSampler

MB = 1 << 20


def sentence_tokens(size_mb: float, seed: int = 0) -> np.ndarray:
    """About ``size_mb`` MB of demo-grammar sentences as byte IDs, drawn with numpy."""
    subjects = [f"{a} {b}{i}" for a in ("the", "a", "my") for b in ("cat", "dog", "bird", "fox") for i in range(40)]
    verbs = ["sees", "likes", "chases", "finds", "follows", "hears"]
    objects = ["the ball", "a mouse", "the red hat", "some bread", "the old tree", "a small boat"]
    sentences = [f"{s} {v} {o}.\n".encode() for s in subjects for v in verbs for o in objects]
    table = np.frombuffer(b"".join(sentences), np.uint8)
    lengths = np.array([len(s) for s in sentences], np.int64)
    starts = np.cumsum(lengths) - lengths
    picks = np.random.default_rng(seed).integers(0, len(sentences), int(size_mb * MB / lengths.mean()))
    picked = lengths[picks]
    # Each output byte's place in `table`: its sentence's start there, plus its offset inside it.
    where = np.repeat(starts[picks] - (np.cumsum(picked) - picked), picked) + np.arange(int(picked.sum()))
    return table[where].astype(np.uint16)


def zipf_tokens(size_mb: float, vocab: int = 50257, seed: int = 0) -> np.ndarray:
    """BPE-like IDs for ``size_mb`` MB of text (4 bytes per token), Zipf-distributed."""
    weights = 1.0 / (np.arange(vocab) + 2.7)
    return np.random.default_rng(seed).choice(vocab, size=int(size_mb * MB / 4), p=weights / weights.sum()).astype(
        np.uint16)


def repeated_tokens(size_mb: float, path: Path) -> np.ndarray:
    """A real text's bytes, tiled to ``size_mb`` MB."""
    base = np.frombuffer(path.read_bytes(), np.uint8)
    if not len(base):
        raise SystemExit(f"{path} is empty")
    size = int(size_mb * MB)
    return np.tile(base, size // len(base) + 1)[:size].astype(np.uint16)


def scan(tokens: np.ndarray, pattern: list[int]) -> dict[int, int]:
    """Next-token counts after ``pattern`` by comparing every position (the reference)."""
    n, total = len(pattern), len(tokens)
    match = np.ones(max(total - n, 0), bool)
    for k, token in enumerate(pattern):
        match &= tokens[k:total - n + k] == token
    ids, counts = np.unique(tokens[n:][match], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def latencies(call: Callable[[list[int]], object], contexts: list[list[int]]) -> np.ndarray:
    times = np.empty(len(contexts))
    for i, context in enumerate(contexts):
        start = time.perf_counter()
        call(context)
        times[i] = time.perf_counter() - start
    return times * 1000


def cancel_halfway(tokens: np.ndarray) -> float:
    """Seconds from a cancel request (at half the build's progress) to ``Cancelled``."""
    requested: list[float] = []

    def progress(done: int, total: int) -> None:
        if done >= total // 2 and not requested:
            requested.append(time.perf_counter())

    try:
        ContinuationIndex.build(tokens, progress=progress, cancel=lambda: bool(requested))
    except Cancelled:
        return time.perf_counter() - requested[0]
    return float("nan")


def measure(name: str, tokens: np.ndarray, sampler: RssSampler, seed: int = 1) -> dict[str, object]:
    n = len(tokens)
    print(f"{name}: {n:,} tokens, building...", flush=True)
    gc.collect()
    sampler.reset()
    before = sampler.now()
    tracemalloc.start()
    start = time.perf_counter()
    index = ContinuationIndex.build(tokens)
    build_s = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = sampler.peak

    rng = np.random.default_rng(seed)
    ends = rng.integers(8, n, 1000)
    lengths = rng.integers(1, 9, 1000)
    from_text = [tokens[e - k:e].tolist() for e, k in zip(ends.tolist(), lengths.tolist())]
    scattered = [tokens[rng.integers(0, n, k)].tolist() for k in lengths.tolist()]
    text_ms = latencies(index.continuations, from_text)
    random_ms = latencies(index.continuations, scattered)
    backed = [index.continuations(c) for c in scattered]
    frequent = [int(np.argmax(np.bincount(tokens[: min(n, 1 << 24)])))]
    frequent_ms = float(np.median(latencies(index.continuations, [frequent] * 20)))
    long_ends = rng.integers(64, n, 200).tolist()
    long_contexts = [tokens[e - 64:e].tolist() for e in long_ends]
    long_ms = latencies(partial(index.continuations, max_n=64), long_contexts)

    checks = [(from_text[0], 8), (scattered[0], 8), (frequent, 8), (long_contexts[0], 64)]
    for context, max_n in checks:  # exact against a scan of the array
        got = index.continuations(context, max_n=max_n)
        assert got.counts == scan(tokens, list(got.context)), f"{name}: counts differ from a scan for {context}"
    index_bytes = index.nbytes
    del index  # not alive during the cancelled build
    gc.collect()
    print(f"{name}: cancelling a second build halfway...", flush=True)
    cancel_ms = cancel_halfway(tokens) * 1000
    return {
        "source": name,
        "tokens": n,
        "distinct": len(np.unique(tokens[: min(n, 1 << 24)])),
        "build s": build_s,
        "peak RSS MB": peak / MB,
        "RSS growth MB": (peak - before) / MB,
        "index B/tok": index_bytes / n,
        "build peak B/tok": traced_peak / n,
        "cancel ms": cancel_ms,
        "text median": float(np.median(text_ms)),
        "text p95": float(np.percentile(text_ms, 95)),
        "text max": float(text_ms.max()),
        "random median": float(np.median(random_ms)),
        "random p95": float(np.percentile(random_ms, 95)),
        "random mean n": float(np.mean([a.n for a in backed])),
        "frequent token": frequent_ms,
        "64-tok median": float(np.median(long_ms)),
        "64-tok p95": float(np.percentile(long_ms, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=100, help="text size per source in MB (default 100)")
    parser.add_argument("--sources", default="sentences,zipf", help="comma-separated: sentences, zipf, repeated")
    parser.add_argument("--text", type=Path, default=ROOT / "resources" / "demo_corpus.txt",
                        help="the real text the 'repeated' source tiles")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one source, print JSON
    args = parser.parse_args()

    if args.one:
        makers = {
            "sentences": lambda: sentence_tokens(args.mb),
            "zipf": lambda: zipf_tokens(args.mb),
            "repeated": lambda: repeated_tokens(args.mb, args.text),
        }
        sampler = RssSampler()
        start = time.perf_counter()
        tokens = makers[args.one]()
        print(f"{args.one}: made {len(tokens):,} tokens in {time.perf_counter() - start:.1f} s; "
              f"RSS {sampler.now() / MB:.0f} MB", flush=True)
        row = measure(args.one, tokens, sampler)
        sampler.close()
        print("ROW " + json.dumps(row), flush=True)
        return

    print(f"numpy {np.__version__}; {psutil.cpu_count()} CPUs; load average "
          f"{', '.join(f'{x:.2f}' for x in psutil.getloadavg())}", flush=True)
    rows = []
    for name in [name.strip() for name in args.sources.split(",")]:
        command = [sys.executable, __file__, "--mb", str(args.mb), "--text", str(args.text), "--one", name]
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        for line in result.stdout.splitlines():
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
            else:
                print(line, flush=True)

    print()
    print(f"load average at the end {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")
    print(f"{args.mb:g} MB of text per source")
    print()
    print_table(rows, ["source", "tokens", "distinct", "build s", "peak RSS MB", "RSS growth MB", "index B/tok",
                       "build peak B/tok", "cancel ms"])
    print()
    print("query latency, ms: continuations(context) with max_n = 8 for 1,000 contexts of 1-8 tokens from the text")
    print("(text) and picked at random (random); the most frequent token alone; 200 64-token contexts, max_n = 64")
    print()
    print_table(rows, ["source", "text median", "text p95", "text max", "random median", "random p95",
                       "random mean n", "frequent token", "64-tok median", "64-tok p95"])


def print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    widths = [max(len(c), 9) for c in columns]
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        cells = []
        for i, (column, width) in enumerate(zip(columns, widths)):
            value = row[column]
            text = (f"{value:,}" if isinstance(value, int) else f"{value:.2f}" if isinstance(value, float)
                    else str(value))
            if column in ("text median", "text p95", "text max", "random median", "random p95", "frequent token",
                          "64-tok median", "64-tok p95"):
                text = f"{value:.3f}"
            elif column in ("peak RSS MB", "RSS growth MB", "cancel ms"):
                text = f"{value:.0f}"
            cells.append(text.rjust(width) if i else text.ljust(width))
        print("  ".join(cells))


if __name__ == "__main__":
    main()
