"""The ``lmstudio`` command: train, evaluate, probe and sample models without the GUI.

``lmstudio`` alone opens the desktop app. Every failure the user can cause prints one line,
``lmstudio: error: <message>``, and exits non-zero (2 for usage and config mistakes, 1 for the
rest, 130 after Ctrl-C); set ``LMSTUDIO_DEBUG=1`` to see tracebacks.

Relative paths in a config's ``[data].files`` are looked up next to the config file first and
then in the current folder; the run's saved ``config.toml`` holds the absolute paths found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from .config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    validate_plugins,
)
from .errors import CheckpointError, ConfigError, LMStudioError, ParamError
from .registry import PluginRegistry, user_plugin_dir
from .runs import RunDir

# training, inference and checkpoints are imported inside the commands that use them: they pull
# in torch, which would make `lmstudio --help` take seconds to start.
if TYPE_CHECKING:
    from .training import StepMetrics

PROG = "lmstudio"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """argparse found a bad command line; carries the one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of argparse's usage dump
        sub = self.prog[len(PROG) :].strip()
        raise UsageError(f"{sub}: {message}" if sub else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train a small language model and watch it predict the next token.")
    parser.add_argument("--plugins-dir", action="append", default=[], metavar="DIR",
                        help="also load plugins from DIR (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = sub.add_parser("train", help="train a model from a config file")
    train.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run config (optional with --resume)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override a config value, e.g. train.max_steps=500 (repeatable)")
    train.add_argument("--out", metavar="RUN_DIR", help="new run folder (default: a fresh folder under the runs folder)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")

    ev = sub.add_parser("eval", help="validation loss of a run's latest checkpoint, as JSON")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--batches", type=int, metavar="N", help="validation batches (default: the run's eval_batches)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    predict = sub.add_parser("predict", help="the most likely next tokens after TEXT")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("text", metavar="TEXT")
    predict.add_argument("--top-k", type=int, default=10, metavar="K", help="candidates to list (default 10)")
    predict.add_argument("--temperature", type=float, default=1.0, metavar="T")
    predict.add_argument("--top-p", type=float, metavar="P", help="nucleus filter shown in the 'sampled' column")
    predict.add_argument("--json", action="store_true", help="print JSON: tokens and next-token candidates")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    gen = sub.add_parser("generate", help="sample a continuation of PROMPT")
    gen.add_argument("run_dir", metavar="RUN_DIR")
    gen.add_argument("prompt", nargs="?", default="", metavar="PROMPT", help="default: start a new line")
    gen.add_argument("--max-tokens", type=int, default=200, metavar="N")
    gen.add_argument("--temperature", type=float, default=1.0, metavar="T")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample only from the K most likely tokens")
    gen.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set holding P of the mass")
    gen.add_argument("--seed", type=int, metavar="S", help="make the sample reproducible")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    plugins = sub.add_parser("plugins", help="list plugins, what they provide and their errors")
    plugins.add_argument("--verbose", action="store_true", help="show the tracebacks of plugin errors")
    return parser


# --- config --------------------------------------------------------------------------------

def resolve_data_files(config: RunConfig, config_dir: Path) -> RunConfig:
    """Make relative ``[data].files`` absolute: next to the config first, else the current folder.

    A path found in neither place is left as written, so the data loader's error names it.
    """
    resolved = []
    for entry in config.data.files:
        path = Path(entry).expanduser()
        if not path.is_absolute():
            for base in (config_dir, Path.cwd()):
                if (base / path).exists():
                    path = (base / path).resolve()
                    break
        resolved.append(str(path))
    config.data.files = resolved
    return config


def with_overrides(config: RunConfig, overrides: Sequence[str], source: str) -> RunConfig:
    """Apply ``--set`` overrides; switching a section's plugin drops the old plugin's params."""
    raw = config.to_dict()
    for text in overrides:
        section, key, value = parse_override(text)
        if key == "plugin" and section in ("tokenizer", "model") and value.strip("\"'") != raw[section]["plugin"]:
            raw[section] = {"plugin": raw[section]["plugin"]}
    return config_from_dict(apply_overrides(raw, overrides), source)


def _train_config(args: argparse.Namespace) -> RunConfig | None:
    """The config to train with; with --resume, the run's own config plus any --set values."""
    if args.config is None and args.resume is None:
        raise UsageError("train: give a CONFIG.toml file, or --resume RUN_DIR")
    if args.config is not None:
        path = Path(args.config)
        config = resolve_data_files(load_config(path), path.resolve().parent)
        return with_overrides(config, args.overrides, str(path))
    if not args.overrides:
        return None  # the Trainer takes the run's saved config as it is
    run = RunDir.open(args.resume)
    return with_overrides(run.load_config(), args.overrides, str(run.config_path))


# --- train ---------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_step(m: StepMetrics, eta_s: float | None) -> str:
    """One compact progress line: step, losses, learning rate, speed, time left."""
    width = len(str(m.max_steps))
    parts = [f"step {m.step:>{width}}/{m.max_steps}", f"loss {m.train_loss:.4f}"]
    if m.val_loss is not None:
        parts.append(f"val {m.val_loss:.4f}")
    parts.append(f"lr {m.lr:.2e}")
    parts.append(f"{m.tokens_per_s / 1000:.1f}k tok/s" if m.tokens_per_s >= 1000 else f"{m.tokens_per_s:.0f} tok/s")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return " | ".join(parts)


class _ProgressPrinter:
    """One line per report; on a terminal a single line rewritten with ``\\r``, validations kept."""

    def __init__(self, stream: TextIO, first_step: int) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.first_step = first_step  # where this session started (a resumed run starts later)
        self.pending_cr = False

    def __call__(self, m: StepMetrics) -> None:
        done = m.step - self.first_step
        eta = (time.monotonic() - self.started) / done * (m.max_steps - m.step) if done > 0 else None
        line = format_step(m, eta)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self.pending_cr = m.val_loss is None
            if not self.pending_cr:
                self.stream.write("\n")  # keep validation lines on screen
        else:
            self.stream.write(line + "\n")
        if m.warning:
            self.finish()
            self.stream.write(f"warning: {m.warning}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.pending_cr:
            self.stream.write("\n")
            self.pending_cr = False
        self.stream.flush()


def cmd_train(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from .training import Trainer

    resume = args.resume is not None
    if resume and args.out is not None:
        raise UsageError("train: --out and --resume do not go together (a resumed run stays in its folder)")
    config = _train_config(args)
    if config is not None:  # name a bad key or a taken folder before minutes of tokenizing
        validate_plugins(config, registry)
    if not resume and args.out is not None:
        RunDir.check_creatable(args.out)
    print("preparing the corpus, tokenizer and model...", flush=True)
    trainer = Trainer(config, registry, args.resume if resume else args.out, resume=resume)
    if trainer.ignored_overrides:
        print(f"note: a resumed run keeps its {', '.join(trainer.ignored_overrides)}", file=sys.stderr)
    printer = _ProgressPrinter(sys.stdout, trainer.step)
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: quit now, without the final checkpoint
            raise KeyboardInterrupt
        interrupted = True
        trainer.control.stop()
        sys.stderr.write("\nstopping after this step (Ctrl-C again to quit at once)...\n")

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        print(f"training in {trainer.run_dir.path}: {trainer.model.num_parameters():,} parameters, "
              f"{trainer.device.type}", flush=True)
        for metrics in trainer.steps():
            printer(metrics)
    finally:
        printer.finish()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    print(f"{trainer.stop_reason or 'finished'} at step {trainer.step}; run folder: {trainer.run_dir.path}", flush=True)
    return EXIT_INTERRUPTED if interrupted else 0


# --- eval, predict, generate -----------------------------------------------------------------

def cmd_eval(args: argparse.Namespace, registry: PluginRegistry) -> int:
    """Validation loss of the latest checkpoint; reads the run folder, writes nothing."""
    from .checkpoints import latest_checkpoint, load_checkpoint
    from .training import Trainer

    if args.batches is not None and args.batches < 1:
        raise UsageError(f"eval: --batches must be at least 1, got {args.batches}")
    run = RunDir.open(args.run_dir)
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise CheckpointError(f"{run.path}: no checkpoint yet — train the model first")
    config = resolve_data_files(run.load_config(), run.path.resolve())
    config.train.device = args.device
    # A fresh trainer without a run folder: resuming would rewrite the run's files.
    trainer = Trainer(config, registry, tokenizer=run.load_tokenizer(), write_run=False)
    state = load_checkpoint(checkpoint, trainer.model, map_location="cpu")
    trainer.model.to(trainer.device)
    batches = args.batches or config.train.eval_batches
    if trainer.val_split != "val":
        print("note: too little held-out text; the loss is measured on training text", file=sys.stderr)
    val_loss = trainer.evaluate(batches=batches, split=trainer.val_split)
    print(json.dumps({"val_loss": val_loss, "step": int(state["step"]), "batches": batches}))
    return 0


def cmd_predict(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from .inference import load_predictor

    if args.top_k < 1:
        raise UsageError(f"predict: --top-k must be at least 1, got {args.top_k}")
    predictor = load_predictor(args.run_dir, registry, args.device)
    pred = predictor.next_token(args.text, temperature=args.temperature, top_p=args.top_p, k=args.top_k)
    if pred.unknown_chars:
        shown = ", ".join(repr(c) for c in pred.unknown_chars)
        print(f"note: not in the tokenizer's vocabulary: {shown}", file=sys.stderr)
    if args.json:
        print(json.dumps(pred.to_json(), ensure_ascii=False))
        return 0
    print("tokens: " + " ".join(f"{t.text!r}:{t.id}" for t in pred.tokens))
    print(f"next token (temperature {pred.temperature:g}, entropy {pred.entropy:.3f} nats):")
    header = f"{'rank':>4}  {'id':>6}  {'token':<14} {'logit':>9}  {'prob':>7}"
    print(header + ("  sampled" if args.top_p is not None else ""))
    for rank, c in enumerate(pred.candidates, 1):
        bar = "#" * round(c.prob * 20)
        sampled = f"  {c.sample_prob:7.2%}" if args.top_p is not None else ""
        print(f"{rank:>4}  {c.id:>6}  {c.text!r:<14} {c.logit:>9.3f}  {c.prob:7.2%}{sampled}  {bar}")
    return 0


def cmd_generate(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from .inference import load_predictor

    predictor = load_predictor(args.run_dir, registry, args.device)
    pieces = predictor.generate_iter(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                     top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    first = next(pieces, "")  # validates the settings before anything is printed
    sys.stdout.write(args.prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


# --- plugins -------------------------------------------------------------------------------

def cmd_plugins(args: argparse.Namespace, registry: PluginRegistry) -> int:
    rows = [("name", "version", "source", "provides")]
    for info in registry.plugins:
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items() if names)
        if not info.enabled:
            provides = "(disabled)"
        elif info.errors and not provides:
            provides = "(failed)"
        rows.append((info.name, info.version or "-", info.source, provides or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[3])
    print(f"user plugin folder: {user_plugin_dir()}")
    if registry.errors:
        print(f"{len(registry.errors)} plugin error(s):")
        for err in registry.errors:
            print(f"  {err.name} ({err.source}): {err.message}")
            if args.verbose and err.traceback:
                print("    " + err.traceback.rstrip().replace("\n", "\n    "))
    return 0


# --- entry point -----------------------------------------------------------------------------

def _launch_gui(plugins_dirs: Sequence[str]) -> int:
    # Imported by name only here: the headless commands must work (and stay fast) without Qt,
    # and the layering contract keeps every static import of the GUI out of this module.
    try:
        gui_main = importlib.import_module("lmstudio_app.gui.app").main
    except ImportError as exc:
        _error(f"the desktop app cannot start ({type(exc).__name__}: {exc})")
        return EXIT_ERROR
    return int(gui_main([], plugins_dirs=list(plugins_dirs)) or 0)


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"{PROG}: error: {first}", file=sys.stderr, flush=True)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
            "generate": cmd_generate, "plugins": cmd_plugins}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to exit)."""
    debug = os.environ.get("LMSTUDIO_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            return _launch_gui(args.plugins_dir)
        registry = PluginRegistry.discover(plugins_dirs=args.plugins_dir)
        return COMMANDS[args.command](args, registry)
    except SystemExit as exc:  # --help and --version exit through argparse
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, ParamError) as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return EXIT_USAGE
    except (LMStudioError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 -- a bug: still one line, with a way to see more
        if debug:
            traceback.print_exc()
        _error(f"{type(exc).__name__}: {exc}")
        print("(run with LMSTUDIO_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR
