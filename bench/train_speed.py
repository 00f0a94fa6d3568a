"""Training-speed benchmark: reference loop vs the engine vs the fast CPU preset, in one run.

    python bench/train_speed.py                      # full table (about 5 minutes on 2 cores)
    python bench/train_speed.py --steps 200          # quick smoke run

Every row runs in its own subprocess (so peak RSS is per row) on the same corpus split: the
first 90% of the characters train, the last 10% validate. Validation loss is measured the same
way for every row by this script: mean next-character cross-entropy over the same random
windows of the validation split.
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
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TARGET_VAL = 1.88
EVAL_WINDOWS = 256
EVAL_CONTEXT = 64


def load_split(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


@torch.no_grad()
def common_val_loss(logits_fn, encode, val_text: str, windows: int = EVAL_WINDOWS) -> float:
    """Mean next-character cross-entropy over fixed random windows of the validation text."""
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(len(val_text) - EVAL_CONTEXT - 1, (windows,), generator=g).tolist()
    total, count = 0.0, 0
    for i in range(0, windows, 32):
        chunk = [encode(val_text[s : s + EVAL_CONTEXT + 1]) for s in starts[i : i + 32]]
        batch = torch.tensor(chunk, dtype=torch.long)
        logits = logits_fn(batch[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    return total / count


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def row_reference(args: argparse.Namespace) -> dict:
    from reference_gpt import RefConfig, train_reference

    train_text, val_text = load_split(args.data)
    chars = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    cfg = RefConfig(vocab_size=len(chars), max_steps=args.steps)
    model, seconds, tokens = train_reference(train, cfg)
    model.eval()
    n = sum(p.numel() for p in model.parameters()) - model.wte.weight.numel() - model.wpe.weight.numel()
    flops = 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return {
        "row": "reference loop", "seconds": seconds, "tokens_per_s": tokens / seconds,
        "flops_per_token": flops, "steps": cfg.max_steps,
        "val_loss": common_val_loss(model, lambda s: [stoi[c] for c in s], val_text),
        "peak_rss_mb": peak_rss_mb(),
    }


def classic_config(data: Path, steps: int) -> dict:
    """The reference recipe expressed as an lmstudio config."""
    return {
        "data": {"files": [str(data)], "val_fraction": 0.1},
        "tokenizer": {"plugin": "char"},
        "model": {"plugin": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "context_length": 64,
                  "dropout": 0.0, "positional": "learned", "norm": "layernorm", "mlp": "gelu",
                  "tie_weights": True},
        "train": {"device": "cpu", "dtype": "float32", "batch_size": 12, "max_steps": steps,
                  "optimizer": "adamw", "learning_rate": 1e-3, "min_lr": 1e-4, "beta1": 0.9, "beta2": 0.99,
                  "weight_decay": 0.1, "warmup_steps": 100, "schedule": "cosine", "grad_clip": 1.0,
                  "eval_interval": steps, "eval_batches": 1, "sample_tokens": 0, "log_interval": 50},
    }


def engine_val_loss(model, tokenizer, val_text: str) -> float:
    model.eval()
    return common_val_loss(model, tokenizer.encode, val_text)


def row_engine(args: argparse.Namespace) -> dict:
    from lmstudio_app.config import config_from_dict
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training import Trainer

    _, val_text = load_split(args.data)
    config = config_from_dict(classic_config(args.data, args.steps), "bench")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, PluginRegistry.discover(use_user_dir=False), Path(tmp) / "run")
        t0 = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - t0
        tokens = args.steps * 12 * 64
        return {
            "row": "engine, same config", "seconds": seconds, "tokens_per_s": tokens / seconds,
            "flops_per_token": trainer.model.flops_per_token(), "steps": args.steps,
            "val_loss": engine_val_loss(trainer.model, trainer.tokenizer, val_text),
            "peak_rss_mb": peak_rss_mb(),
        }


def row_preset(args: argparse.Namespace) -> dict:
    """Whole-process wall time of `lmstudio train` with the fast CPU preset."""
    from lmstudio_app.config import load_config
    from lmstudio_app.inference import load_run
    from lmstudio_app.registry import PluginRegistry

    preset = ROOT / "resources" / "presets" / "fast-cpu.toml"
    _, val_text = load_split(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lmstudio_app", "train", str(preset), "--out", str(run),
               "--set", f'data.files=["{args.data}"]', "--set", "data.val_fraction=0.1"]
        if args.preset_steps:
            cmd += ["--set", f"train.max_steps={args.preset_steps}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"preset run failed: {proc.stderr.strip()[-500:]}")
        config, model, tokenizer = load_run(run, PluginRegistry.discover(use_user_dir=False), device="cpu")
        steps = config.train.max_steps
        tokens = steps * config.train.batch_size * config.train.grad_accum * model.context_length
        return {
            "row": "fast-cpu preset (whole process)", "seconds": seconds, "tokens_per_s": tokens / seconds,
            "flops_per_token": model.flops_per_token(), "steps": steps,
            "val_loss": engine_val_loss(model, tokenizer, val_text),
            "peak_rss_mb": peak_rss_mb(children=True),
        }


ROWS = {"reference": row_reference, "engine": row_engine, "preset": row_preset}


def run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--row", name, "--steps", str(args.steps), "--data", str(args.data)]
    if args.preset_steps:
        cmd += ["--preset-steps", str(args.preset_steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"row {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps of the reference and engine rows")
    ap.add_argument("--preset-steps", type=int, default=0, help="override the preset's max_steps (smoke runs)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", default="reference,engine,preset")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        print("RESULT " + json.dumps(ROWS[args.row](args)), flush=True)
        return
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: corpus not found (pass --data)")

    from lmstudio_app.devices import describe_device, measure_matmul_flops

    device = torch.device("cpu")
    peak = measure_matmul_flops(device, None)
    print(f"device: {describe_device(device)}; measured fp32 matmul: {peak / 1e9:.1f} GFLOP/s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = [run_child(name, args) for name in args.rows.split(",")]
    ref = next((r for r in results if r["row"] == "reference loop"), None)
    header = f"{'row':34} {'steps':>6} {'wall s':>8} {'tok/s':>9} {'MFU':>6} {'val loss':>9} {'peak RSS MB':>12} {'time ratio':>11} {'speed ratio':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        mfu = r["flops_per_token"] * r["tokens_per_s"] / peak
        time_ratio = r["seconds"] / ref["seconds"] if ref else math.nan
        speed_ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref else math.nan
        print(f"{r['row']:34} {r['steps']:6d} {r['seconds']:8.1f} {r['tokens_per_s']:9.0f} {mfu:6.1%} "
              f"{r['val_loss']:9.4f} {r['peak_rss_mb']:12.0f} {time_ratio:11.3f} {speed_ratio:12.3f}")
    print(f"time ratio = wall time / reference wall time; speed ratio = tokens/s / reference tokens/s; "
          f"target val loss for the preset: <= {TARGET_VAL}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
