"""Compare training recipes by what they learn, independently of how busy the machine is.

    python bench/recipe_lab.py resources/presets/fast-cpu.toml --seeds 1337,1338
    python bench/recipe_lab.py resources/presets/fast-cpu.toml --set model.n_layer=4 --set train.max_steps=250

Each seed trains the preset (plus ``--set`` overrides) with the project's engine, without a run
folder, in one thread, and prints the benchmark's common validation loss (see train_speed.py)
and the CPU time per step. Loss after a given number of steps does not depend on the load, and
one thread's CPU time barely does, so two recipes can be compared on a shared machine; wall
times with more threads come from train_speed.py. Seeds of one recipe differ by about ±0.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import DEFAULT_DATA, common_val_loss, load_split


def train_once(preset: Path, overrides: list[str], seed: int, data: Path) -> dict:
    from lmstudio_app.cli.commands import with_overrides
    from lmstudio_app.config import load_preset
    from lmstudio_app.registry import PluginRegistry
    from lmstudio_app.training.trainer import Trainer

    config = load_preset(preset)
    config = with_overrides(config, [f"data.files=[{json.dumps(str(data))}]", "data.val_fraction=0.1",
                                     f"train.seed={seed}", "train.threads=1", *overrides], str(preset))
    trainer = Trainer(config, PluginRegistry.discover(use_user_dir=False), None, write_run=False)
    cpu = time.process_time()
    for _ in trainer.steps():
        pass
    cpu = time.process_time() - cpu
    trainer.model.eval()
    val = common_val_loss(trainer.model, trainer.tokenizer.encode, load_split(data)[1], trainer.device)
    steps = trainer.config.train.max_steps
    return {"seed": seed, "val_loss": round(val, 4), "steps": steps, "cpu_ms_per_step": round(cpu / steps * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", type=Path)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="SECTION.KEY=VALUE")
    ap.add_argument("--seeds", default="1337,1338")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = [train_once(args.preset, args.overrides, int(s), args.data) for s in args.seeds.split(",")]
    for r in runs:
        print(json.dumps(r))
    losses = [r["val_loss"] for r in runs]
    print(f"mean val loss {statistics.mean(losses):.4f} over {len(losses)} seed(s); "
          f"{statistics.mean(r['cpu_ms_per_step'] for r in runs):.1f} CPU ms per step; overrides: {args.overrides}")


if __name__ == "__main__":
    main()
