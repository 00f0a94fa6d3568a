"""The ``lmstudio`` command: train, evaluate, probe, sample and export models without the GUI.

``lmstudio`` alone opens the desktop app (launcher.py passes ``main`` the function that starts
it, so this module never imports Qt). Every failure the user can cause prints one line,
``lmstudio: error: <message>``, and exits non-zero (2 for usage and config mistakes, 1 for the
rest, 130 after Ctrl-C); so does anything else that escapes a command, a plugin's ``sys.exit()``
or a native library's panic included (no traceback); set ``LMSTUDIO_DEBUG=1`` to see tracebacks.

Relative paths in a config's ``[data].files`` are looked up next to the config file first and
then in the current folder; the run's saved ``config.toml`` holds the absolute paths found.
Under ``torchrun`` the ``train`` command trains data-parallel (see docs/distributed.md); only
rank 0 prints progress and writes the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import CheckpointError, ConfigError, LMStudioError, ParamError
from ..registry import PluginRegistry, user_interrupts_marked, user_plugin_dir
from ..runs.folder import RunDir
from . import inspect, runs, sweep
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    UsageError,
    print_error,
    resolve_data_files,
)

if TYPE_CHECKING:
    from ..inference.predictor import Predictor
    from ..inference.truth import TokenTruth

# training, inference and checkpoints are imported inside the commands that use them: they pull
# in torch, which would make `lmstudio --help` take seconds to start.


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
    train.add_argument("--tensorboard", nargs="?", const="", metavar="LOG_DIR",
                       help="also log to TensorBoard, in LOG_DIR (default: RUN_DIR/tensorboard)")

    ev = sub.add_parser("eval", help="validation loss of a run's latest checkpoint, as JSON")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--batches", type=int, metavar="N", help="validation batches (default: the run's eval_batches)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    predict = sub.add_parser("predict", help="the most likely next tokens after TEXT")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("text", metavar="TEXT")
    predict.add_argument("--top-k", type=int, default=10, metavar="K", help="candidates to list (default %(default)s)")
    predict.add_argument("--temperature", type=float, default=1.0, metavar="T")
    predict.add_argument("--top-p", type=float, metavar="P", help="nucleus filter shown in the 'sampled' column")
    predict.add_argument("--json", action="store_true", help="print JSON: tokens and next-token candidates")
    predict.add_argument("--step", type=int, metavar="N",
                         help="the model as it was at step N (a snapshot or a kept checkpoint; default: the latest)")
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

    timeline = sub.add_parser("timeline", help="how the watched prompts' predictions changed over training")
    timeline.add_argument("run_dir", metavar="RUN_DIR")
    timeline.add_argument("prompt", nargs="?", metavar="PROMPT", help="one of the run's watched prompts (default: all)")
    timeline.add_argument("--json", action="store_true", help="print JSON: the prompts and their recorded steps")
    inspect.add_parser(sub)  # attention, logit lens, per-token loss (cli/inspect.py)
    runs.add_parsers(sub)  # runs, compare, rename (cli/runs.py)
    sweep.add_parsers(sub)  # sweep, lr-find (cli/sweep.py)

    export = sub.add_parser("export", help="write a run's model for other tools (hf: a transformers folder)")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("out_dir", metavar="OUT_DIR", help="a new or empty folder")
    export.add_argument("--format", dest="fmt", default="hf", metavar="FORMAT",
                        help="hf = Hugging Face transformers (config.json, model.safetensors, tokenizer); the default")
    export.add_argument("--checkpoint", metavar="DIR", help="one of the run's checkpoint folders (default: the latest)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds an earlier export")

    plugins = sub.add_parser("plugins", help="list plugins, what they provide and their errors")
    plugins.add_argument("--verbose", action="store_true", help="show the tracebacks of plugin errors")
    return parser


# --- train ---------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from .train import train_command  # its own module: progress lines, Ctrl-C, torchrun, TensorBoard

    return train_command(args, registry)


# --- eval, predict, generate -----------------------------------------------------------------

def cmd_eval(args: argparse.Namespace, registry: PluginRegistry) -> int:
    """Validation loss of the latest checkpoint; reads the run folder, writes nothing."""
    from ..runs.checkpoints import latest_checkpoint, load_checkpoint
    from ..training.trainer import Trainer

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
    result: dict[str, Any] = {"val_loss": val_loss, "step": int(state["step"]), "batches": batches}
    val_bpb = trainer.bits_per_byte(val_loss, trainer.val_split)  # the same loss per byte of text: any tokenizer
    if val_bpb is not None:
        result["val_bpb"] = val_bpb
    if trainer.truth is not None:  # a synthetic corpus: how far from the truth, and the best loss possible
        result.update(truth_report(trainer.truth, trainer.predictor()))
    print(json.dumps(result))
    return 0


def truth_report(truth: TokenTruth, predictor: Predictor) -> dict[str, Any]:
    """``kl_to_truth``: mean KL(true ‖ model) over the truth's own prompts; ``entropy_floor``: the
    lowest mean loss any model can reach on this corpus, in nats per token of its tokenizer."""
    kls = []
    for prompt in truth.spec.prompts:
        true = truth.next_token(prompt)
        if true is not None:
            kls.append(truth.kl(true, predictor.next_token(prompt).probs))
    report: dict[str, Any] = {"entropy_floor": truth.entropy_rate(), "truth": truth.spec.name}
    if kls:
        report["kl_to_truth"] = sum(kls) / len(kls)
    return report


def cmd_predict(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from ..inference.predictor import load_predictor

    if args.top_k < 1:
        raise UsageError(f"predict: --top-k must be at least 1, got {args.top_k}")
    predictor = load_predictor(args.run_dir, registry, args.device, step=args.step)
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
    from ..inference.predictor import load_predictor

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


# --- timeline ------------------------------------------------------------------------------

def cmd_timeline(args: argparse.Namespace, registry: PluginRegistry) -> int:
    """The watched prompts' recorded predictions, step by step; reads the run folder only."""
    from ..runs.timeline import load_timeline

    run = RunDir.open(args.run_dir)
    timeline = load_timeline(run)
    tokenizer = run.load_tokenizer()
    indices = [timeline.index_of(args.prompt)] if args.prompt is not None else range(len(timeline.prompts))
    shown = []
    for index in indices:
        steps = [{"step": step, **entry, "top": [{"id": i, "text": tokenizer.token_string(i), "prob": p}
                                                  for i, p in entry.get("top", [])]}
                 for step, entry in timeline.history(index)]
        shown.append({"prompt": timeline.prompts[index], "target": timeline.targets[index], "steps": steps})
    if args.json:
        print(json.dumps({"run": str(run.path), "prompts": shown}, ensure_ascii=False))
        return 0
    for item in shown:
        target = f" (followed by {item['target']!r} in the text)" if item["target"] else ""
        print(f"{item['prompt']!r}{target}")
        print(f"  {'step':>7}  {'entropy':>7}  {'KL':>6}  {'true p':>7}  top candidates")
        for row in item["steps"]:
            if "error" in row:
                print(f"  {row['step']:>7}  {row['error']}")
                continue
            kl = f"{row['kl_to_truth']:6.3f}" if "kl_to_truth" in row else f"{'-':>6}"
            true_p = f"{row['target_p']:7.2%}" if "target_p" in row else f"{'-':>7}"
            top = "  ".join(f"{c['text']!r} {c['prob']:.0%}" for c in row["top"])
            print(f"  {row['step']:>7}  {row.get('entropy', 0.0):7.3f}  {kl}  {true_p}  {top}")
    return 0


# --- export --------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace, registry: PluginRegistry) -> int:
    from ..runs.export_hf import export_run

    out = export_run(args.run_dir, args.out_dir, registry, args.fmt, checkpoint=args.checkpoint,
                     overwrite=args.overwrite)
    print(f"exported {args.run_dir} to {out}; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
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

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict,
            "generate": cmd_generate, "timeline": cmd_timeline, "inspect": inspect.cmd_inspect,
            "export": cmd_export, "plugins": cmd_plugins, **runs.COMMANDS, **sweep.COMMANDS}


def main(argv: Sequence[str] | None = None, *, gui: Callable[[list[str]], int] | None = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to exit).

    Without a command, ``gui(plugins_dirs)`` opens the desktop app (see launcher.py); without
    ``gui`` that is a usage error.
    """
    debug = os.environ.get("LMSTUDIO_DEBUG", "") not in ("", "0")
    command = "lmstudio"
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version exit through argparse
            return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
        if args.command is None:
            if gui is None:
                raise UsageError(f"no command given (commands: {', '.join(COMMANDS)})")
            return gui(list(args.plugins_dir))
        command = args.command
        from ..settings import disabled_plugins

        # A Python SIGINT handler lets plugin_call tell the person's Ctrl-C from a plugin raising
        # KeyboardInterrupt (see registry.is_user_interrupt).
        with user_interrupts_marked():
            # The plugins switched off in the app's plugins dialog stay off here too.
            registry = PluginRegistry.discover(plugins_dirs=args.plugins_dir, disabled=disabled_plugins())
            return COMMANDS[command](args, registry)
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, ParamError) as exc:
        if debug:
            traceback.print_exc()
        print_error(str(exc))
        return EXIT_USAGE
    except (LMStudioError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        print_error(str(exc))
        return EXIT_ERROR
    except SystemExit as exc:  # not argparse's (handled above): code that called exit() mid-command
        if debug:
            traceback.print_exc()
        print_error(f"{command} was ended by a call to exit({exc.code!r}) from a plugin's code or a bug "
                    "(run with LMSTUDIO_DEBUG=1 for the traceback)")
        return EXIT_ERROR
    except BaseException as exc:  # Exception, or a native library's panic (pyo3's PanicException)
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        print_error(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        print("(run with LMSTUDIO_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_ERROR
