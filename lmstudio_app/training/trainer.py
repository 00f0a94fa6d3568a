"""The training engine: a Qt-free loop over optimisation steps.

:class:`Trainer` prepares a run (corpus, tokenizer, model, optimisers, run folder: see
preparation.py) and :meth:`Trainer.steps` trains it as a generator, so the CLI simply iterates
and the GUI's worker thread does the same while another thread pauses, stops or probes the model
between steps (under :attr:`Trainer.lock`). The hot loop never waits on the accelerator except at
logged steps: losses stay on the device until then, which keeps it as fast as a hand-written loop.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RunConfig
from ..data.corpus import TokenizedCorpus
from ..devices import synchronize
from ..errors import CheckpointError, LMStudioError, ParamError
from ..inference.predictor import Predictor
from ..registry import reraise_plugin_failure
from ..runs.index import record_outcome
from ..runs.lock import RunLock
from ..runs.snapshots import is_snapshot_step, save_snapshot
from ..tokenizer import Tokenizer
from . import distributed, faults
from . import preparation as setup
from .control import StepMetrics, StepPlan, TrainingControl
from .distributed import DistInfo
from .optimizers import LrExtension, lr_at, lr_scale, set_learning_rate
from .preparation import ProgressCallback
from .watch import Watcher, prompts_of

if TYPE_CHECKING:
    from ..registry import PluginRegistry


@dataclass
class _Throughput:
    """The training steps and seconds since the last report (evaluations, checkpoints and pauses
    excluded), for its tokens per second."""

    tokens_per_step: int
    steps: int = 0
    seconds: float = 0.0

    def take(self) -> float:
        """Tokens per second over the window, which then starts over."""
        rate = self.steps * self.tokens_per_step / max(self.seconds, 1e-9)
        self.steps, self.seconds = 0, 0.0
        return rate


class Trainer:
    """One training run, from files on disk (or a prepared tokenizer/corpus) to checkpoints.

    ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint; ``config`` may
    then be None or only change the :data:`~lmstudio_app.runs.folder.RESUMABLE_TRAIN_KEYS` (its other
    differing keys are listed in :attr:`ignored_overrides`). ``write_run=False`` trains without
    a run folder (nothing is written); otherwise :attr:`run_dir` is the :class:`RunDir` written
    to (a new ``run-<time>`` folder under the default runs folder when ``run_dir`` is None).
    ``progress(stage, done, total)`` follows preparation (stage "reading", "tokenizer" or
    "tokenizing"); ``dist`` (see :func:`~lmstudio_app.training.distributed.init_from_env`) makes this
    process one rank of a data-parallel run, which every rank trains in step with the others.

    From preparing to the end of :meth:`steps` the run folder is locked (``runs/lock.py``): a
    second trainer on it, in this process or another, is refused. A resume checks what it reads
    before it changes anything (``runs/integrity.py``) and a step's metrics line is written
    before its checkpoint, so a kill never leaves a gap in ``metrics.jsonl``.
    """

    def __init__(
        self,
        config: RunConfig | None,
        registry: PluginRegistry,
        run_dir: str | Path | None = None,
        *,
        resume: bool = False,
        tokenizer: Tokenizer | None = None,
        corpus: TokenizedCorpus | None = None,
        progress: ProgressCallback | None = None,
        write_run: bool = True,
        dist: DistInfo | None = None,
    ) -> None:
        self.registry = registry
        self.dist = dist  # this process's rank under torchrun (see distributed.py); None alone
        self.control = TrainingControl()
        self.lock = threading.RLock()
        self.stop_reason: str | None = None
        self.last_val_loss: float | None = None
        self.compile_warning: str | None = None
        self.step = 0
        self._last_saved_step: int | None = None
        self._elapsed_offset = 0.0  # training seconds before the current steps() call
        self._active_since: float | None = None
        self._paused_s = 0.0
        self._pending_warning: str | None = None
        self._main = dist is None or dist.is_main  # the rank that writes files
        self._stop_agreed = False  # under torchrun: every rank saw a stop request (at the last report)

        prepared = setup.prepare_run(config, registry, Path(run_dir) if run_dir is not None else None,
                                     resume=resume, write_run=write_run, tokenizer=tokenizer, corpus=corpus,
                                     progress=progress, dist=dist)
        self.config: RunConfig = prepared.config
        self.ignored_overrides: list[str] = prepared.ignored_overrides
        self.device, self.dtype, self.file_infos = prepared.device, prepared.dtype, prepared.file_infos
        self.tokenizer, self.corpus, self.model = prepared.tokenizer, prepared.corpus, prepared.model
        self.optimizers, self.val_split, self.run_dir = prepared.optimizers, prepared.val_split, prepared.run_dir
        self._model_owner, self._samplers = prepared.model_owner, prepared.samplers
        # Held while this process writes the run folder (rank 0); released when steps() ends.
        self._run_lock = prepared.run_lock
        self._lr_extension: LrExtension | None = None  # a resumed run's schedule past its old max_steps
        self._notes = list(prepared.notes or [])
        try:
            self._finish_init(prepared)
        except BaseException:
            self._release_lock()
            raise

    def _finish_init(self, prepared: setup.PreparedRun) -> None:
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        cfg = self.config.train
        use_scaler = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None  # fp16 needs loss scaling
        # Under torchrun, DDP averages the gradients during backward. self.model stays the plain
        # module: checkpoints hold its state_dict (no "module." prefix) and probes call it directly.
        self._ddp = distributed.wrap_model(self.model, self.device) if self.dist is not None else None
        self._train_module: nn.Module = self._ddp if self._ddp is not None else self.model
        self._no_sync = self._ddp.no_sync if self._ddp is not None else contextlib.nullcontext
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self._train_module
        self._compile_confirmed = not cfg.compile
        if cfg.compile:
            self._forward = self._compiled_forward()
        if prepared.resumed:
            self._restore_latest()  # also drops timeline records past the checkpoint
        if self._notes:  # shown with the first report, like the restore's own warning
            self._pending_warning = "; ".join(self._notes + [self._pending_warning or ""]).rstrip("; ")
        self.truth = prepared.truth
        self._last_watched: tuple[int, float | None] | None = None  # (step, mean KL) of the last record
        watched = self.run_dir.timeline if self.run_dir is not None and self._main else None
        self.watcher = Watcher(prompts_of(self.config.watch), self.tokenizer, self.config.watch.top_k, self.truth,
                               watched)

    def _compiled_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        try:
            return torch.compile(self._train_module)
        except Exception as exc:
            self._compile_failed(exc)
            return self._train_module

    def _compile_failed(self, exc: BaseException) -> None:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        self.compile_warning = f"torch.compile failed ({type(exc).__name__}: {first}); training without it"
        self._pending_warning = self.compile_warning
        self._compile_confirmed = True
        warnings.warn(self.compile_warning, RuntimeWarning, stacklevel=2)

    def _restore_latest(self) -> None:
        assert self.run_dir is not None
        restored = setup.restore_latest(self.run_dir, self.config, self.model, self.optimizers, self._samplers,
                                        self.device, self.dist)
        setup.save_resumed_config(self.run_dir, self.config, self.dist)
        skipped = self.run_dir.metrics.note()  # lines truncate_history could not read
        if skipped is not None:
            self._notes.append(skipped)
        if restored is not None:
            self.step = self._last_saved_step = restored.step
            self._elapsed_offset, self.last_val_loss = restored.elapsed_s, restored.val_loss
            self._lr_extension = restored.lr_extension
            if self.scaler is not None and restored.grad_scaler is not None:
                self.scaler.load_state_dict(restored.grad_scaler)
            self._pending_warning = restored.warning  # shown with the first report (and in metrics.jsonl)

    # -- the run folder's lock ----------------------------------------------------------------

    def _take_lock(self) -> None:
        """Lock the run folder again for another steps() (a finished run may be trained further)."""
        if self.run_dir is None or not self._main:
            return
        if self._run_lock is None:
            self._run_lock = RunLock(self.run_dir.path)
        self._run_lock.acquire()

    def _release_lock(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()

    def close(self) -> None:
        """Let another process train in the run folder (done by itself when steps() ends)."""
        self._release_lock()

    # -- one step ---------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            logits = self._forward(x)  # (B, T, V)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def _optimisation_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step; returns (mean loss, grad norm) as device tensors (no sync).

        Out of memory, the step is retried with micro-batches half the size (same global batch)."""
        cfg = self.config.train
        set_learning_rate(self.optimizers, lr_scale(self.step, cfg, self._lr_extension))
        if not self.model.training:  # a probe may have left it in eval mode
            self.model.train()
        while (total := self._accumulate()) is None:
            self._shrink_micro_batches(self.step + 1)  # raises once a micro-batch is a single sequence
        norm = None
        if cfg.grad_clip > 0:
            if self.scaler is not None:
                for opt in self.optimizers:
                    self.scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        for opt in self.optimizers:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        self._zero_grad()  # frees gradient memory between steps (probes run there)
        return total, norm

    def _accumulate(self) -> torch.Tensor | None:
        """Forward and backward over the step's micro-batches: their summed loss, None if out of memory."""
        accum = self.config.train.grad_accum
        total: torch.Tensor | None = None
        failure = ""
        try:
            for micro in range(accum):
                # DDP all-reduces the gradients once per step, in the last micro-batch's backward.
                with self._no_sync() if micro < accum - 1 else contextlib.nullcontext():
                    loss = self._loss(*self._samplers["train"].sample())
                    if accum > 1:
                        loss = loss / accum
                    total = loss.detach() if total is None else total + loss.detach()
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        except LMStudioError:
            raise
        except Exception as exc:
            if faults.is_out_of_memory(exc):
                failure = "memory"
            elif not self._compile_confirmed:  # compiling happens on the first call
                failure = "compile"
                self._compile_failed(exc)
            else:
                reraise_plugin_failure(self._model_owner, "the training step", exc)
        except BaseException as exc:  # sys.exit() or KeyboardInterrupt from the model's code: its error
            reraise_plugin_failure(self._model_owner, "the training step", exc)
        if not failure:
            self._compile_confirmed = True
            return total
        # Handled here, outside the except block, so the failed step's tensors can be freed.
        total = loss = None
        self._zero_grad()
        if failure == "compile":
            self._forward = self._train_module
            return self._accumulate()
        faults.free_memory(self.device)
        return None

    def _shrink_micro_batches(self, step: int) -> None:
        """Out of memory at ``step``: twice as many micro-batches, each half the size (see faults.py)."""
        note = faults.shrink_micro_batches(self.config.train, self._samplers, step, self.device, self.dist)
        self._pending_warning = f"{self._pending_warning}; {note}" if self._pending_warning else note
        if self.run_dir is not None and self._main:  # so config.toml says how the run really trains
            with contextlib.suppress(OSError):  # a full disk is reported by the next checkpoint
                self.run_dir.save_config(self.config)

    def _zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _check_losses(self, pending: list[torch.Tensor]) -> float:
        """Sync the losses of the steps since the last check; stop at the first nan/inf.

        Under torchrun, one all-reduce also averages the losses over ranks (the global batch's loss,
        so all ranks stop at the same nan) and tells whether any rank was asked to stop."""
        values = torch.stack(pending).float()
        if self.dist is not None:
            flag = torch.tensor([float(self.control.stop_requested)], device=values.device)
            merged = distributed.all_reduce_mean(torch.cat([values, flag])).cpu()
            values, self._stop_agreed = merged[:-1], bool(merged[-1] > 0)
        values = values.cpu()  # the one device sync per report
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            index = int(bad[0])
            self._raise_not_finite(self.step - len(pending) + index + 1, float(values[index]))
        return float(values[-1])

    def _raise_not_finite(self, step: int, value: float) -> None:
        self.stop_reason = "error"
        raise faults.not_finite_error(value, step, self._last_saved_step, self.config.train)

    # -- the loop ---------------------------------------------------------------------------

    def _elapsed(self) -> float:
        if self._active_since is None:
            return self._elapsed_offset
        return self._elapsed_offset + time.perf_counter() - self._active_since - self._paused_s

    def steps(self) -> Iterator[StepMetrics]:
        """Train until ``max_steps`` or a stop, yielding a report at logged and evaluation steps."""
        cfg = self.config.train
        window = _Throughput(self._tokens_per_step())
        pending: list[torch.Tensor] = []  # the losses of the steps since the last sync, on the device
        norm: torch.Tensor | None = None
        self.stop_reason = None
        self._stop_agreed = False
        self._take_lock()  # before the first write: another process may have started meanwhile
        self._active_since, self._paused_s = time.perf_counter(), 0.0
        try:
            if self.step == 0:
                self._snapshot()
                self._watch()  # the untrained model's guesses: where the timeline starts
            while self.step < cfg.max_steps and not self._stop_before_step():
                started = time.perf_counter()
                with self.lock:
                    loss, norm = self._optimisation_step()
                    self.step += 1
                pending.append(loss)
                self._snapshot()
                plan = StepPlan.at(self.step, cfg)
                window.steps += 1
                if not plan.syncs:
                    window.seconds += time.perf_counter() - started
                    continue
                synchronize(self.device)
                train_loss = self._check_losses(pending)  # before any checkpoint: never save nan weights
                pending = []
                window.seconds += time.perf_counter() - started
                metrics = self._report(train_loss, norm, window) if plan.log else None
                if metrics is not None and plan.evaluate:
                    metrics.val_loss = self.last_val_loss = self._checked_val_loss()
                    metrics.val_bpb = self.bits_per_byte(metrics.val_loss)
                    metrics.sample = self._sample_text() if self._main and plan.sample else None
                    metrics.kl_to_truth = self._watch()
                # The step's record before its checkpoint: a kill in between resumes from the
                # previous checkpoint, which drops the record and trains the step again, while the
                # other order would lose the record for good (the resume starts after it).
                if metrics is not None:
                    self._log(metrics)
                if plan.checkpoint and self.run_dir is not None:
                    self.save_checkpoint()
                if metrics is not None:
                    yield metrics
            if self.step < cfg.max_steps:
                yield from self._stopped_early(pending, norm, window)
            self.stop_reason = self.stop_reason or "finished"
        except GeneratorExit:  # the consumer stopped iterating: keep what was trained
            self.stop_reason = "stopped"
            if self.run_dir is not None and self.step != self._last_saved_step:
                self.save_checkpoint()
            raise
        except BaseException:
            self.stop_reason = "error"
            raise
        finally:
            self._elapsed_offset, self._active_since = self._elapsed(), None
            if self._main:  # how it ended, for the runs index (never raises; sees the error in flight)
                record_outcome(self.run_dir, self.stop_reason, self.step, device=self.device.type)
            self._release_lock()

    def _snapshot(self) -> None:
        """Keep the weights at the log-spaced steps of :func:`~lmstudio_app.runs.snapshots.is_snapshot_step`,
        and record the watched prompts there too: the timeline then shows the early steps, where
        the predictions form, and every kept step has its record."""
        if self._main and self.run_dir is not None and is_snapshot_step(self.step):
            save_snapshot(self.run_dir, self.step, self.model)
            if self.step > 0:
                self._watch(kept=True)

    def _watch(self, kept: bool = False) -> float | None:
        """Record the watched prompts' predictions now (rank 0, if this evaluation, or this kept
        step, is one to record); the mean KL divergence from the truth, where the corpus has one."""
        if not self._main or not self.watcher.prompts:
            return None
        if not self.watcher.due(self.step, kept):  # an evaluation at a kept step: recorded just now
            last = self._last_watched
            return last[1] if last is not None and last[0] == self.step else None
        with self.lock:
            record = self.watcher.record(self.step, self.predictor())
        self._last_watched = (self.step, record.get("kl_to_truth"))
        return self._last_watched[1]

    def _stop_before_step(self) -> bool:
        """Whether to stop before the next step; while paused it waits here (not counted as training)."""
        if self.dist is not None:  # ranks stop together, at a report (see _check_losses)
            return self._stop_agreed
        if self.control.stop_requested:
            return True
        if not self.control.paused:
            return False
        waited_from = time.perf_counter()
        go_on = self.control.wait_while_paused()
        self._paused_s += time.perf_counter() - waited_from
        return not go_on

    def _stopped_early(self, pending: list[torch.Tensor], norm: torch.Tensor | None,
                       window: _Throughput) -> Iterator[StepMetrics]:
        """Stopped before max_steps: report the steps not reported yet and checkpoint where it stopped."""
        self.stop_reason = "stopped"
        final = self._report(self._check_losses(pending), norm, window) if pending else None
        if final is not None:
            self._log(final)  # before the checkpoint, as in the loop
        if self.step != self._last_saved_step and self.run_dir is not None:
            self.save_checkpoint()
        if final is not None:
            yield final

    def _report(self, loss: float, norm: torch.Tensor | None, window: _Throughput) -> StepMetrics:
        """The report of the current step; the throughput window and the pending warning start over."""
        cfg = self.config.train
        metrics = StepMetrics(
            step=self.step, max_steps=cfg.max_steps, elapsed_s=self._elapsed(), train_loss=loss,
            lr=lr_at(self.step - 1, cfg, self._lr_extension), tokens_per_s=window.take(),
            tokens_seen=self.step * window.tokens_per_step,
            grad_norm=float(norm) if norm is not None else None, warning=self._pending_warning,
        )
        self._pending_warning = None
        return metrics

    def _tokens_per_step(self) -> int:
        return self.config.train.batch_size * int(self.model.context_length)

    def run(self, on_step: Callable[[StepMetrics], None] | None = None) -> StepMetrics | None:
        """Train to the end (or a stop); return the last report."""
        last = None
        for metrics in self.steps():
            if on_step is not None:
                on_step(metrics)
            last = metrics
        return last

    def _log(self, metrics: StepMetrics) -> None:
        if self.run_dir is not None and self._main:
            self.run_dir.append_metrics(metrics.to_record())

    def _checked_val_loss(self) -> float:
        value = self.evaluate()
        if not math.isfinite(value):
            self._raise_not_finite(self.step, value)
        return value

    # -- evaluation, samples, checkpoints ---------------------------------------------------

    def evaluate(self, batches: int | None = None, split: str = "val") -> float:
        """Mean loss over ``batches`` (default train.eval_batches) random batches of a split."""
        if split not in ("val", "train"):
            raise ParamError(f"split: {split!r} is not one of 'val', 'train'")
        sampler = self._samplers["val" if split == "val" else "train_eval"]
        count = batches or self.config.train.eval_batches
        with self.lock:
            while (value := setup.mean_loss(self.model, self._loss, sampler, count, self.device, self.dist,
                                            self._model_owner)) is None:
                self._shrink_micro_batches(self.step)  # out of memory: smaller evaluation batches too
            return value

    def bits_per_byte(self, loss: float | None, split: str | None = None) -> float | None:
        """A loss measured on ``split`` (default: the split validation uses, see :attr:`val_split`)
        in bits per UTF-8 byte of that split's text; None when its byte count is not known."""
        return self.corpus.bits_per_byte(loss, split or self.val_split)

    def _sample_text(self) -> str:
        """A generated continuation shown at each evaluation (starts a fresh line if it can)."""
        prompt = self.tokenizer.decode(self.corpus.train[:4].tolist())  # used if there is no newline token
        return setup.sample_text(self.predictor(), self.config.train.sample_tokens, self.config.train.seed + self.step,
                                 prompt, self._model_owner)

    def save_checkpoint(self) -> Path:
        """Save the current state into the run folder (between steps; safe from another thread).

        Under torchrun every rank calls it (it gathers each rank's random streams) and rank 0 writes.
        """
        if self.run_dir is None:
            raise CheckpointError("this training session has no run folder, so there is nowhere to save")
        with self.lock:
            extra: dict[str, Any] = {
                "elapsed_s": self._elapsed(),
                "tokens_seen": self.step * self._tokens_per_step(),
                "val_loss": self.last_val_loss,
            }
            if self.compile_warning:
                extra["compile_warning"] = self.compile_warning
            if self.scaler is not None:
                extra["grad_scaler"] = self.scaler.state_dict()
            if self._lr_extension is not None:
                extra["lr_extension"] = self._lr_extension.to_dict()
            held = self._run_lock is not None and self._run_lock.held
            if not held:  # saved from the app after the run ended: lock the folder for the write
                self._take_lock()
            try:
                path = setup.save_state(self.run_dir, self.model, self.optimizers, self.step, self._samplers, extra,
                                        self.device, self.dist)
            finally:
                if not held:
                    self._release_lock()
            self._last_saved_step = self.step
        return path

    def predictor(self) -> Predictor:
        """Predictions from the live model, safe while training runs (they share :attr:`lock`)."""
        return Predictor(self.model, self.tokenizer, lock=self.lock, owner=self._model_owner)
