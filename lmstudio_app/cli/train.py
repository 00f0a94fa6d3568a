"""``lmstudio train``: progress lines, Ctrl-C, TensorBoard logging and data-parallel ranks.

Started by ``torchrun``, every process runs this command as one rank (see docs/distributed.md):
all ranks train, rank 0 alone prints progress, writes the run folder and logs to TensorBoard.
Imported by :func:`lmstudio_app.cli.commands.cmd_train` only when training, since it pulls in torch.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from ..config import RunConfig, load_config, parse_override, validate_plugins
from ..data.progress import StageProgress
from ..devices import resolve_device
from ..registry import PluginRegistry
from ..runs.folder import RunDir
from ..runs.metrics_sinks import TensorBoardSink, require_tensorboard
from ..training.control import StepMetrics
from ..training.distributed import DistInfo, cleanup, init_from_env, note_run_folder, rank_failure
from ..training.trainer import Trainer
from .common import EXIT_INTERRUPTED, UsageError, resolve_data_files, with_overrides


def _train_config(args: argparse.Namespace) -> RunConfig | None:
    """The config to train with; with --resume, the run's own config plus any --set values."""
    if args.config is None and args.tensorboard and args.tensorboard.endswith(".toml"):
        args.config, args.tensorboard = args.tensorboard, ""  # `train --tensorboard CONFIG.toml`
    if args.config is None and args.resume is None:
        raise UsageError("train: give a CONFIG.toml file, or --resume RUN_DIR")
    if args.config is not None:
        path = Path(args.config)
        config = resolve_data_files(load_config(path), path.resolve().parent)
        return with_overrides(config, args.overrides, str(path))
    if not args.overrides:
        return None  # the Trainer takes the run's saved config as it is
    for text in args.overrides:  # these define the trained weights: never ignored without a word
        section, key, _ = parse_override(text)
        if section in ("model", "tokenizer"):
            raise UsageError(f"--set {text[:80]}: {section}.{key} cannot change on resume (the run's weights and "
                             "tokenizer are built from it); start a new run to change it")
    run = RunDir.open(args.resume)
    return with_overrides(run.load_config(), args.overrides, str(run.config_path))


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
    if m.val_bpb is not None:
        parts.append(f"{m.val_bpb:.3f} bits/byte")
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


def train_command(args: argparse.Namespace, registry: PluginRegistry) -> int:
    """``lmstudio train``: a new run from CONFIG.toml, or ``--resume RUN_DIR``; exit status."""
    resume = args.resume is not None
    if resume and args.out is not None:
        raise UsageError("train: --out and --resume do not go together (a resumed run stays in its folder)")
    config = _train_config(args)
    if config is not None:  # name a bad key or a taken folder before minutes of tokenizing
        validate_plugins(config, registry)
    if args.tensorboard is not None:
        require_tensorboard()  # say what to install before any slow work
    device = (config or RunDir.open(args.resume).load_config()).train.device
    dist = init_from_env(resolve_device(device).type)  # None unless started by torchrun
    finished = False
    try:
        code = _train(args, registry, config, dist)
        finished = True
        return code
    except Exception as exc:  # another rank died: name it, not the model plugin whose backward saw it
        failure = rank_failure(exc) if dist is not None else None
        if failure is None:
            raise
        raise failure from exc
    finally:
        cleanup(finished)


def _train(args: argparse.Namespace, registry: PluginRegistry, config: RunConfig | None,
           dist: DistInfo | None) -> int:
    resume, main = args.resume is not None, dist is None or dist.is_main
    if not resume and args.out is not None and dist is None:  # under torchrun the Trainer checks on rank 0
        RunDir.check_creatable(args.out)
    if main:
        ranks = f" on {dist.world_size} ranks ({dist.backend})" if dist is not None else ""
        print(f"preparing the corpus, tokenizer and model{ranks}...", flush=True)
    trainer = Trainer(config, registry, args.resume if resume else args.out, resume=resume, dist=dist,
                      progress=StageProgress(sys.stdout) if main else None)  # reading/tokenizing lines
    for note in trainer.tokenizer.notes if main else ():  # e.g. BPE learned fewer tokens than asked
        print(f"note: {note}", file=sys.stderr)
    note_run_folder(trainer.run_dir.path if main and trainer.run_dir is not None else None)  # for stall messages
    if trainer.ignored_overrides and main:
        print(f"note: a resumed run keeps its {', '.join(trainer.ignored_overrides)}", file=sys.stderr)
    printer = _ProgressPrinter(sys.stdout, trainer.step)
    sink = _tensorboard_sink(args.tensorboard, trainer) if main else None
    interrupted, first_signal = False, 0.0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted, first_signal
        if interrupted:
            # torchrun passes the terminal's Ctrl-C on to its workers: each rank gets it twice.
            if dist is not None and time.monotonic() - first_signal < 2.0:
                return
            raise KeyboardInterrupt  # a second Ctrl-C: quit now, without the final checkpoint
        interrupted, first_signal = True, time.monotonic()
        trainer.control.stop()
        if main:
            when = "at the next logged step" if dist is not None else "after this step"
            sys.stderr.write(f"\nstopping {when} (Ctrl-C again to quit at once)...\n")

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        if main:
            print(f"training in {trainer.run_dir.path}: {trainer.model.num_parameters():,} parameters, "
                  f"{trainer.device.type}", flush=True)
        for metrics in trainer.steps():
            if main:
                printer(metrics)
            if sink is not None:
                sink(metrics)
    finally:
        printer.finish()
        if sink is not None:
            sink.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if main:
        print(f"{trainer.stop_reason or 'finished'} at step {trainer.step}; run folder: {trainer.run_dir.path}",
              flush=True)
    return EXIT_INTERRUPTED if interrupted else 0


def _tensorboard_sink(log_dir: str | None, trainer: Trainer) -> TensorBoardSink | None:
    """``--tensorboard [LOG_DIR]``: a sink fed every report (a resumed run hides what it re-logs)."""
    if log_dir is None or trainer.run_dir is None:
        return None
    folder = Path(log_dir) if log_dir else trainer.run_dir.path / "tensorboard"
    sink = TensorBoardSink(folder, purge_step=trainer.step + 1 if trainer.step else None)
    print(f"TensorBoard logs in {folder} (view them with: tensorboard --logdir {folder})", flush=True)
    return sink
