"""Training-speed benchmark: reference loop vs the engine vs the fast CPU preset, in one run.

    python bench/train_speed.py                         # full table (about 3 minutes on 2 idle cores)
    python bench/train_speed.py --steps 200 --preset-steps 50   # quick smoke run
    python bench/train_speed.py --rows preset --preset-seeds 1337,1338   # the preset, two seeds
    python bench/train_speed.py --threads 1 --repeat 2   # on a shared machine: see bench/NOTES.md

Rows, each in its own subprocess (so the peak RSS is per row), all on the same split of the
corpus (first 90% of the characters train, last 10% validate):

- ``reference loop``: bench/reference_gpt.py, the classic recipe written from scratch in plain
  PyTorch (learned positions, LayerNorm, GELU, tied, 4L/4H/128, context 64, batch 12, AdamW,
  cosine), fp32. Its time is the training loop alone.
- ``engine, same config``: lmstudio_app's Trainer on the same recipe, fp32; its time is the
  training loop (``Trainer.steps()``) including the final validation and checkpoint.
- ``fast-cpu preset``: ``python -m lmstudio_app train resources/presets/fast-cpu.toml`` as a
  separate process; its time is the whole process (start-up, reading, tokenizing, training,
  checkpoint), the time a user waits.

Validation loss is measured by this script, identically for every row: mean next-character
cross-entropy over the same 512 random 64-character windows of the validation split (a model
trained with a longer context is evaluated on 64-token windows too). MFU = model FLOPs per token
(6N + 12 L C T) x tokens/s / the measured matmul throughput at the row's precision.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
PRESET = ROOT / "resources" / "presets" / "fast-cpu.toml"
TARGET_VAL = 1.88
PRECISION = {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
EVAL_WINDOWS = 512
EVAL_CONTEXT = 64


def load_split(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


@torch.no_grad()
def common_val_loss(logits_fn, encode, val_text: str, device: torch.device, windows: int = EVAL_WINDOWS) -> float:
    """Mean next-character cross-entropy over fixed random windows of the validation text."""
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(len(val_text) - EVAL_CONTEXT - 1, (windows,), generator=g).tolist()
    total, count = 0.0, 0
    for i in range(0, windows, 64):
        chunk = [encode(val_text[s : s + EVAL_CONTEXT + 1]) for s in starts[i : i + 64]]
        batch = torch.tensor(chunk, dtype=torch.long, device=device)  # (64, T + 1)
        logits = logits_fn(batch[:, :-1]).float()  # fp32 weights, no autocast: the same for every row
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    return total / count


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # macOS: bytes
    return kib / 1024


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_device(name: str) -> torch.device:
    from lmstudio_app.devices import resolve_device

    return resolve_device(name)


def row_reference(args: argparse.Namespace) -> dict:
    from reference_gpt import RefConfig, train_reference

    device = bench_device(args.device)
    train_text, val_text = load_split(args.data)
    chars = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    cfg = RefConfig(vocab_size=len(chars), max_steps=args.steps)
    cpu = time.process_time()
    model, seconds, tokens = train_reference(train, cfg, device)
    cpu = time.process_time() - cpu
    model.eval()
    # Matmul weights: every parameter except the position table; the tied token table counts
    # once, for the output layer (the input lookup costs no FLOPs).
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    flops = 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return {
        "row": "reference loop", "precision": "fp32", "seconds": seconds, "train_seconds": seconds,
        "cpu_seconds": cpu, "tokens": tokens, "flops_per_token": flops, "steps": cfg.max_steps,
        "val_loss": common_val_loss(model, lambda s: [stoi[c] for c in s], val_text, device),
        "peak_rss_mb": peak_rss_mb(),
    }


def classic_config(data: Path, steps: int, device: str) -> dict:
    """The reference recipe expressed as an lmstudio config (biases on, as nn.Linear has them)."""
    return {
        "data": {"files": [str(data)], "val_fraction": 0.1},
        "tokenizer": {"plugin": "char"},
        "model": {"plugin": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "context_length": 64,
                  "dropout": 0.0, "bias": True, "positional": "learned", "norm": "layernorm", "mlp": "gelu",
                  "tie_weights": True},
        "train": {"device": device, "dtype": "float32", "batch_size": 12, "max_steps": steps,
                  "optimizer": "adamw", "learning_rate": 1e-3, "min_lr": 1e-4, "beta1": 0.9, "beta2": 0.99,
                  "weight_decay": 0.1, "warmup_steps": 100, "schedule": "cosine", "grad_clip": 1.0,
                  "eval_interval": steps, "eval_batches": 1, "sample_tokens": 0, "log_interval": 50},
    }


def engine_val_loss(model, tokenizer, val_text: str, device: torch.device) -> float:
    model.eval()
    return common_val_loss(model, tokenizer.encode, val_text, device)


def row_engine(args: argparse.Namespace) -> dict:
    from lmstudio_app.config import config_from_dict
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training.trainer import Trainer

    _, val_text = load_split(args.data)
    config = config_from_dict(classic_config(args.data, args.steps, args.device), "bench")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, PluginRegistry.discover(use_user_dir=False), Path(tmp) / "run")
        t0, cpu = time.perf_counter(), time.process_time()
        for _ in trainer.steps():
            pass
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
        return {
            "row": "engine, same config", "precision": "fp32", "seconds": seconds, "train_seconds": seconds,
            "cpu_seconds": cpu,
            "tokens": args.steps * 12 * 64, "flops_per_token": trainer.model.flops_per_token(),
            "steps": args.steps, "val_loss": engine_val_loss(trainer.model, trainer.tokenizer, val_text, trainer.device),
            "peak_rss_mb": peak_rss_mb(),
        }


def row_preset(args: argparse.Namespace) -> dict:
    """Whole-process wall time of `lmstudio train` with the fast CPU preset."""
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.runs.loading import load_run

    _, val_text = load_split(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lmstudio_app", "train", str(PRESET), "--out", str(run),
               "--set", f"data.files=[{json.dumps(str(args.data))}]", "--set", "data.val_fraction=0.1",
               "--set", f"train.seed={args.seed}"]
        if args.preset_steps:
            cmd += ["--set", f"train.max_steps={args.preset_steps}"]
        if args.threads:
            cmd += ["--set", f"train.threads={args.threads}"]
        t0, cpu = time.perf_counter(), children_cpu_seconds()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds, cpu = time.perf_counter() - t0, children_cpu_seconds() - cpu
        if proc.returncode != 0:
            raise SystemExit(f"preset run failed: {proc.stderr.strip()[-1500:]}")
        config, model, tokenizer = load_run(run, PluginRegistry.discover(use_user_dir=False), device="cpu")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train_seconds = float(records[-1]["elapsed_s"])
        steps = config.train.max_steps
        from lmstudio_app.devices import autocast_dtype, resolve_device

        dtype = autocast_dtype(resolve_device(config.train.device), config.train.dtype)
        return {
            "row": f"fast-cpu preset, seed {args.seed}", "precision": PRECISION[dtype],
            "seconds": seconds, "train_seconds": train_seconds, "cpu_seconds": cpu,
            "tokens": steps * config.train.batch_size * model.context_length,
            "flops_per_token": model.flops_per_token(), "steps": steps,
            "val_loss": engine_val_loss(model, tokenizer, val_text, torch.device("cpu")),
            "peak_rss_mb": peak_rss_mb(children=True),
        }


ROWS = {"reference": row_reference, "engine": row_engine, "preset": row_preset}


def run_child(name: str, args: argparse.Namespace, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--row", name, "--steps", str(args.steps), "--data", str(args.data),
           "--device", args.device, "--threads", str(args.threads), "--seed", str(seed)]
    if args.preset_steps:
        cmd += ["--preset-steps", str(args.preset_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"row {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps of the reference and engine rows")
    ap.add_argument("--preset-steps", type=int, default=0, help="override the preset's max_steps (smoke runs)")
    ap.add_argument("--preset-seeds", default="1337", help="comma-separated seeds: one preset row each")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default="reference,engine,preset")
    ap.add_argument("--device", default="auto", help="device of the reference and engine rows (auto, cpu, cuda, mps)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every row; 0 = PyTorch's default")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the reference and engine rows this many times and keep the fastest")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1337, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:
        print("RESULT " + json.dumps(ROWS[args.row](args)), flush=True)
        return
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: corpus not found (pass --data)")

    from lmstudio_app.devices import autocast_dtype, describe_device, measure_matmul_flops

    device = bench_device(args.device)
    low = autocast_dtype(device, "auto")
    dtypes = {"fp32": torch.float32, **({PRECISION[low]: low} if low is not None else {})}

    def measure_peaks() -> dict[str, float]:
        # The best of a few short measurements: on a shared machine one can land in a busy moment.
        return {k: max(measure_matmul_flops(device, d, seconds=0.2) for _ in range(5)) for k, d in dtypes.items()}

    peaks = measure_peaks()
    print(f"{datetime.now():%Y-%m-%d %H:%M}; {load_text()}")
    print(f"device: {describe_device(device)}; torch {torch.__version__}")
    jobs = [(name, seed) for name in args.rows.split(",")
            for seed in ([int(s) for s in args.preset_seeds.split(",")] if name == "preset" else [1337])]
    tries: dict[tuple[str, int], list[dict]] = {job: [] for job in jobs}
    for round_ in range(args.repeat):  # rounds alternate the rows, so a busy minute hits one try, not one row
        for name, seed in jobs:
            if name == "preset" and round_ > 0:
                continue  # its time is the whole process, measured once per seed
            r = run_child(name, args, seed)
            tries[(name, seed)].append(r)
            print(f"  done: {r['row']}: {r['seconds']:.1f} s, val {r['val_loss']:.4f}", flush=True)
    results = [min(tries[job], key=lambda r: r["seconds"]) for job in jobs]  # the least disturbed try
    end = measure_peaks()  # again at the end; keep the best
    peaks = {k: max(v, end[k]) for k, v in peaks.items()}
    print("measured 1024x1024 matmul (best of start and end): "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    ref = next((r for r in results if r["row"] == "reference loop"), None)
    header = (f"{'row':28} {'prec':>5} {'steps':>6} {'tokens':>8} {'wall s':>7} {'train s':>8} {'cpu s':>7} "
              f"{'tok/s':>7} {'MFU':>6} {'val loss':>9} {'peak RSS MB':>12} {'time ratio':>11} {'speed ratio':>12}")
    print(header)
    print("-" * len(header))
    for r in results:
        tok_s = r["tokens"] / r["train_seconds"]
        mfu = r["flops_per_token"] * tok_s / peaks.get(r["precision"], peaks["fp32"])
        time_ratio = r["seconds"] / ref["seconds"] if ref else math.nan
        speed_ratio = tok_s / (ref["tokens"] / ref["train_seconds"]) if ref else math.nan
        print(f"{r['row']:28} {r['precision']:>5} {r['steps']:6d} {r['tokens']:8d} {r['seconds']:7.1f} "
              f"{r['train_seconds']:8.1f} {r['cpu_seconds']:7.1f} {tok_s:7.0f} {mfu:6.1%} {r['val_loss']:9.4f} "
              f"{r['peak_rss_mb']:12.0f} {time_ratio:11.3f} {speed_ratio:12.3f}")
    print(f"wall s: the training loop (reference, engine) or the whole process (preset); train s: training "
          f"only; cpu s: CPU time of the same span (all threads)\ntime ratio = wall s / reference wall s; "
          f"speed ratio = tok/s / reference tok/s (training time only); preset target: val loss <= {TARGET_VAL}")
    print(f"finished; {load_text()}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
