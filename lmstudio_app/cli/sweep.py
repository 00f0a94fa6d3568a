"""``lmstudio sweep`` and ``lmstudio lr-find``: many runs over a grid of values, and a learning-rate range test.

- ``lmstudio sweep CONFIG --grid section.key=v1,v2 [--grid ...] [--random N] [--seed S] [--out FOLDER] [--json]``
  trains one run per point of the grids' product (or N random points) in the sweep folder (default:
  ``sweep-<time>`` under the runs folder), one after another (``--parallel K``: up to K at once, each
  a ``python -m lmstudio_app train`` subprocess; on 2 cores that is no faster), and prints the results table: each
  point's values, status, steps, final and best validation loss, bits per byte, wall time, run.
  ``lmstudio sweep --out FOLDER`` (no CONFIG, no --grid) resumes a stopped sweep; Ctrl-C stops the
  current point after its step (it resumes from there), a second Ctrl-C quits at once.
- ``lmstudio lr-find CONFIG [--start-lr A] [--end-lr B] [--steps N] [--json]``: the range test of
  training/lr_finder.py, in memory (no run folder); prints the curve's summary and the suggestion.

``--json`` prints one object on one line: ``{"sweep": FOLDER, "keys": [...], "points": [...]}``, or
the lr finder's curve and suggestion. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import load_config, validate_plugins
from .common import EXIT_INTERRUPTED, UsageError, resolve_data_files, with_overrides

if TYPE_CHECKING:
    from ..registry import PluginRegistry
    from ..training.sweep import PointResult


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The two subcommands' arguments (called from ``commands.build_parser``)."""
    sweep = sub.add_parser("sweep", help="train one run per point of a grid of config values, and tabulate them")
    sweep.add_argument("config", nargs="?", metavar="CONFIG.toml", help="the base config (not needed to resume)")
    sweep.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                       help="values to sweep, e.g. train.learning_rate=1e-3,3e-3 (repeatable: their product)")
    sweep.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override a base config value for every point (repeatable)")
    sweep.add_argument("--random", type=int, metavar="N", help="train only N points drawn at random from the grid")
    sweep.add_argument("--seed", type=int, default=0, metavar="S", help="the seed of --random's draw (default 0)")
    sweep.add_argument("--out", metavar="FOLDER", help="the sweep folder (an existing one is resumed)")
    sweep.add_argument("--parallel", type=int, default=1, metavar="K",
                       help="train up to K points at once, each a subprocess (default 1; on a machine with "
                            "few cores it is no faster)")
    sweep.add_argument("--json", action="store_true", help="print the results as one JSON object")

    lrf = sub.add_parser("lr-find", help="learning-rate range test: the loss as the rate grows, and a suggestion")
    lrf.add_argument("config", metavar="CONFIG.toml")
    lrf.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                     help="override a config value (repeatable)")
    lrf.add_argument("--start-lr", type=float, default=1e-5, metavar="LR", help="first rate (default %(default)g)")
    lrf.add_argument("--end-lr", type=float, default=1.0, metavar="LR", help="last rate (default %(default)g)")
    lrf.add_argument("--steps", type=int, default=100, metavar="N", help="steps from first to last (default %(default)s)")
    lrf.add_argument("--json", action="store_true", help="print the curve and the suggestion as one JSON object")


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def results_table(keys: list[str], results: list[PointResult]) -> str:
    """The sweep's results, one row per point, columns aligned."""
    rows = [["#", *keys, "status", "steps", "val loss", "best", "bits/byte", "time", "run"]]
    for r in results:
        s = r.summary
        rows.append([str(r.index + 1), *[r.values.get(k, "") for k in keys], r.status, str(s.step if s else 0),
                     _fmt(s.final_val_loss if s else None), _fmt(s.best_val_loss if s else None),
                     _fmt(s.final_val_bpb if s else None), _duration(s.wall_time_s if s else None), r.run.name])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def value_chart(keys: list[str], results: list[PointResult], width: int = 30) -> str:
    """For each swept key, each value's best final validation loss over the points that have it, as bars
    (shorter is better; scaled between the lowest and highest loss shown)."""
    best: dict[tuple[str, str], float] = {}
    for r in results:
        loss = r.summary.final_val_loss if r.summary is not None else None
        if loss is None:
            continue
        for key in keys:
            at = (key, r.values.get(key, ""))
            best[at] = min(loss, best.get(at, loss))
    if not best:
        return ""
    low, high = min(best.values()), max(best.values())
    lines = ["best final val loss by value:"]
    for key in keys:
        values = list(dict.fromkeys(r.values.get(key, "") for r in results))
        label = max(len(v) for v in values)
        lines.append(f"  {key}")
        for value in values:
            loss = best.get((key, value))
            if loss is None:
                lines.append(f"    {value:<{label}}  -")
                continue
            bar = "#" * (1 + round((width - 1) * (loss - low) / (high - low))) if high > low else "#"
            lines.append(f"    {value:<{label}}  {loss:.4f}  {bar}")
    return "\n".join(lines)


def _base_config(args: argparse.Namespace, registry: PluginRegistry) -> Any:
    path = Path(args.config)
    config = resolve_data_files(load_config(path), path.resolve().parent)
    config = with_overrides(config, args.overrides, str(path))
    validate_plugins(config, registry)
    return config


def cmd_sweep(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from ..runs.index import runs_folder
    from ..training.sweep import Sweep, parse_grid

    grids = [parse_grid(text) for text in args.grid]
    if args.parallel < 1:
        raise UsageError(f"sweep --parallel: expected 1 or more points at once, got {args.parallel}")
    if args.config is None and (grids or args.out is None):
        raise UsageError("sweep: give CONFIG.toml and --grid section.key=v1,v2,... (or --out FOLDER to resume one)")
    if args.config is not None and not grids:
        raise UsageError("sweep: give at least one --grid section.key=v1,v2,...")
    config = _base_config(args, registry) if args.config is not None else None
    out = Path(args.out) if args.out else runs_folder() / time.strftime("sweep-%Y%m%d-%H%M%S")
    sweep = Sweep.open_or_create(out, config, grids, args.random, args.seed,
                                 check=lambda c: validate_plugins(c, registry))
    total = len(sweep.data["points"])
    log = sys.stderr if args.json else sys.stdout
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        sweep.stop()
        log.write("\nstopping the sweep after this step (Ctrl-C again to quit at once)...\n")

    def on_point(index: int, values: dict[str, str], what: str) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        log.write(f"point {index + 1}/{total} ({shown}): {what}\n")
        log.flush()

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        log.write(f"sweep of {total} points in {sweep.folder}\n")
        sweep.run(registry, on_point=on_point, parallel=args.parallel)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    results = sweep.results()
    if args.json:
        print(json.dumps({"sweep": str(sweep.folder), "keys": sweep.keys,
                          "points": [r.to_dict() for r in results]}, ensure_ascii=False))
    else:
        print(results_table(sweep.keys, results))
        chart = value_chart(sweep.keys, results)
        if chart:
            print(chart)
        for r in results:  # the table has no room for why: one line each
            if r.status == "failed":
                print(f"point {r.index + 1} failed: {r.reason}", file=sys.stderr)
        if interrupted:
            print(f"stopped; resume with: lmstudio sweep --out {sweep.folder}")
    return EXIT_INTERRUPTED if interrupted else 0


def cmd_lr_find(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from ..training.lr_finder import find_lr

    config = _base_config(args, registry)
    result = find_lr(config, registry, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{len(result.lrs)} steps from {result.lrs[0]:.2e} to {result.lrs[-1]:.2e} ({result.stop_reason})")
    every = max(1, len(result.lrs) // 12)
    shown = {*range(0, len(result.lrs), every), result.min_index, len(result.lrs) - 1}
    if result.suggestion_index is not None:
        shown.add(result.suggestion_index)
    print(f"{'lr':>9}  {'loss':>7}  {'smoothed':>8}")
    for i in sorted(shown):
        mark = "  <- suggested" if i == result.suggestion_index else ""
        print(f"{result.lrs[i]:9.2e}  {result.losses[i]:7.4f}  {result.smoothed[i]:8.4f}{mark}")
    print(f"lowest smoothed loss {result.smoothed[result.min_index]:.4f} at lr {result.min_lr:.2e} "
          f"(one-tenth of it: {result.min_lr / 10:.2e})")
    if result.suggestion is None:
        print("no suggestion: the smoothed loss never fell")
        return 0
    print(f"suggested train.learning_rate = {result.suggestion:.2e} (steepest descent of the smoothed loss)")
    return 0


COMMANDS = {"sweep": cmd_sweep, "lr-find": cmd_lr_find}
