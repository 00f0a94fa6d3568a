"""``lmstudio runs``, ``lmstudio compare`` and ``lmstudio rename``: the runs index from the command line.

- ``lmstudio runs [--json] [FOLDER...]``: every run in the runs folder from the settings and the
  folders added to the index (or in FOLDER...), newest first: name, status, steps, validation
  loss, bits per byte, wall time. Skipped folders are named on stderr, one line each.
- ``lmstudio runs --folder PATH`` sets the runs folder (where new runs go; ``default`` resets it);
  ``--add PATH`` / ``--remove PATH`` add a folder to the index or take one out (stored in the settings).
- ``lmstudio compare RUN_A RUN_B ... [--json]``: the runs' summaries side by side and a config diff
  that shows only the keys whose values differ.
- ``lmstudio rename RUN NAME``: the run's name, stored in its run.json ("" for the default name).

A RUN is a run folder, or a folder name or run name from ``lmstudio runs`` (``compare`` also looks
beside the run folders given by path). None of them imports
torch. ``--json`` prints one object on one line: ``{"runs": [summary, ...], "skipped": [line, ...]}``
for ``runs``; ``{"runs": [summary, ...], "config_diff": {"section.key": [value per run]}}`` for
``compare`` (a key missing from a run is null).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runs.folder import CONFIG_FILE
from ..runs.index import RunsIndex, RunSummary, added_folders, config_diff, runs_folder

if TYPE_CHECKING:
    from ..registry import PluginRegistry


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The three subcommands' arguments (called from ``commands.build_parser``)."""
    runs = sub.add_parser("runs", help="list the runs: name, status, steps, validation loss")
    runs.add_argument("folders", nargs="*", metavar="FOLDER",
                      help="folders of runs (or run folders) to list instead of the runs folder and added folders")
    runs.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    runs.add_argument("--folder", metavar="PATH",
                      help="set the runs folder (where new runs go; \"default\" for the default one)")
    runs.add_argument("--add", metavar="PATH", action="append", default=[],
                      help="add a folder of runs to the runs index (repeatable)")
    runs.add_argument("--remove", metavar="PATH", action="append", default=[],
                      help="remove an added folder from the runs index (repeatable)")
    compare = sub.add_parser("compare", help="runs side by side and the config keys that differ")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders or names (two or more)")
    compare.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    rename = sub.add_parser("rename", help="give a run a name (\"\" for the default one)")
    rename.add_argument("run", metavar="RUN", help="a run folder or name")
    rename.add_argument("name", metavar="NAME")


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _steps(run: RunSummary) -> str:
    return f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _change_folders(args: argparse.Namespace) -> None:
    """``--folder``/``--add``/``--remove``: checked first, then stored; one line per change."""
    from ..runs import location
    from .common import UsageError

    if args.folder is not None and args.folder != "default":
        folder = Path(args.folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"runs --folder: {folder} is not a folder")
    for path in args.add:
        if not Path(path).expanduser().is_dir():
            raise UsageError(f"runs --add: {path} is not a folder")
    added = {str(p) for p in location.added_folders()}
    for path in args.remove:
        if str(Path(path).expanduser().absolute()) not in added:
            raise UsageError(f"runs --remove: {path} is not one of the added folders "
                             f"({', '.join(sorted(added)) or 'none'})")
    if args.folder is not None:
        location.set_runs_folder(None if args.folder == "default" else args.folder)
        print(f"runs folder: {location.runs_folder()} (new runs go here)")
    for path in args.add:
        location.add_folder(path)
        print(f"added to the runs index: {Path(path).expanduser().absolute()}")
    for path in args.remove:
        location.remove_folder(path)
        print(f"removed from the runs index: {Path(path).expanduser().absolute()}")


def cmd_runs(args: argparse.Namespace, registry: PluginRegistry) -> int:
    if args.folder is not None or args.add or args.remove:
        _change_folders(args)
        return 0
    index = RunsIndex(args.folders or None)
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in index.runs], "skipped": index.problems}, ensure_ascii=False))
        return 0
    for line in index.problems:
        print(f"note: {line}", file=sys.stderr)
    if not index.runs:
        print(f"no runs in {', '.join(str(f) for f in index.folders)}")
        return 0
    rows = [["name", "status", "steps", "val loss", "best", "bits/byte", "time", "folder"]]
    for run in index.runs:
        rows.append([run.name, run.status, _steps(run), _loss(run.final_val_loss), _loss(run.best_val_loss),
                     _loss(run.final_val_bpb), _duration(run.wall_time_s), str(run.path)])
    print(_table(rows))
    return 0


_SUMMARY_ROWS: tuple[tuple[str, Any], ...] = (
    ("status", lambda r: r.status),
    ("reason", lambda r: r.reason),
    ("corpus", lambda r: ", ".join(r.corpus_files) or "demo corpus"),
    ("tokenizer", lambda r: r.tokenizer),
    ("model", lambda r: r.model),
    ("parameters", lambda r: "-" if r.parameters is None else f"{r.parameters:,}"),
    ("steps", _steps),
    ("tokens seen", lambda r: "-" if r.tokens_seen is None else f"{r.tokens_seen:,}"),
    ("best val loss", lambda r: _loss(r.best_val_loss)),
    ("final val loss", lambda r: _loss(r.final_val_loss)),
    ("final bits/byte", lambda r: _loss(r.final_val_bpb)),
    ("wall time", lambda r: _duration(r.wall_time_s)),
    ("device", lambda r: r.device),
    ("folder", lambda r: str(r.path)),
)


def cmd_compare(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from .common import UsageError

    if len(args.runs) < 2:
        raise UsageError(f"compare: give two or more runs, got {len(args.runs)}")
    # A name is looked up in the indexed folders and beside any run folder given by path.
    beside = [Path(key).expanduser().parent for key in args.runs if (Path(key).expanduser() / CONFIG_FILE).exists()]
    index = RunsIndex([runs_folder(), *added_folders(), *dict.fromkeys(beside)])
    runs = [index.find(key) for key in args.runs]
    diff = config_diff([r.config for r in runs])
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in runs], "config_diff": diff}, ensure_ascii=False))
        return 0
    print(_table([["", *[r.name for r in runs]], *[[label, *[get(r) for r in runs]] for label, get in _SUMMARY_ROWS]]))
    print()
    if not diff:
        print("config: identical")
        return 0
    print(_table([["config", *[f"run {i + 1}" for i in range(len(runs))]],
                  *[[key, *["-" if v is None else json.dumps(v, ensure_ascii=False) for v in values]]
                    for key, values in diff.items()]]))
    return 0


def cmd_rename(args: argparse.Namespace, registry: PluginRegistry) -> int:
    run = RunsIndex().rename(args.run, args.name)
    print(f"{run.path}: named {run.name!r}")
    return 0


COMMANDS = {"runs": cmd_runs, "compare": cmd_compare, "rename": cmd_rename}
