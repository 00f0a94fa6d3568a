"""The training engine: a Qt-free loop over optimisation steps.

:class:`Trainer` prepares a run (corpus, tokenizer, model, optimisers, run folder) and
:meth:`Trainer.steps` trains it as a generator, so the CLI simply iterates and the GUI's worker
thread does the same while another thread pauses, stops or probes the model between steps
(under :attr:`Trainer.lock`). The hot loop never waits on the accelerator except at logged
steps: losses stay on the device until then, which keeps it as fast as a hand-written loop.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints as ckpt
from .config import RunConfig, copy_config, validate_plugins
from .data import BatchSampler, FileInfo, TokenizedCorpus, iter_text_chunks, load_corpus_text, tokenize_corpus
from .devices import autocast_dtype, resolve_device, synchronize
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LMStudioError,
    ParamError,
    PluginCallError,
    TrainingError,
)
from .optim import build_optimizers, lr_at, lr_scale, set_learning_rate
from .params import params_to_dict
from .resources import demo_corpus_path
from .runs import RunDir, new_run_path
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .inference import Predictor
    from .registry import PluginRegistry

ProgressCallback = Callable[[str, int, int], None]
_DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's choice, before any run sets train.threads


@dataclass
class StepMetrics:
    """What the loop reports at a logged step (also one line of ``metrics.jsonl``)."""

    step: int  # optimisation steps completed
    max_steps: int
    elapsed_s: float  # training time so far, pauses excluded, across resumes
    train_loss: float  # this step's loss (mean over its micro-batches)
    lr: float  # the AdamW learning rate used for this step
    tokens_per_s: float  # training throughput since the previous report (evaluation excluded)
    tokens_seen: int
    val_loss: float | None = None  # on evaluation steps
    sample: str | None = None  # generated text, on evaluation steps
    grad_norm: float | None = None  # before clipping, when train.grad_clip > 0
    warning: str | None = None  # e.g. torch.compile failed and training went on without it

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class TrainingControl:
    """Pause/resume/stop flags, safe to set from any thread; the loop reads them between steps."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can see the stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_while_paused(self) -> bool:
        """Block while paused; False if training should stop."""
        self._running.wait()
        return not self._stop.is_set()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Trainer:
    """One training run, from files on disk (or a prepared tokenizer/corpus) to checkpoints.

    ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint; ``config`` may
    then be None or only change the :data:`~lmstudio_app.runs.RESUMABLE_TRAIN_KEYS` (its other
    differing keys are listed in :attr:`ignored_overrides`). ``write_run=False`` trains without
    a run folder (nothing is written); otherwise :attr:`run_dir` is the :class:`RunDir` written
    to (a new ``run-<time>`` folder under the default runs folder when ``run_dir`` is None).
    ``progress(stage, done, total)`` follows preparation, with
    stage "reading", "tokenizer" or "tokenizing".
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
    ) -> None:
        self.registry = registry
        self.control = TrainingControl()
        self.lock = threading.RLock()
        self.stop_reason: str | None = None
        self.last_val_loss: float | None = None
        self.ignored_overrides: list[str] = []
        self.compile_warning: str | None = None
        self.step = 0
        self.run_dir: RunDir | None = None
        self._progress = progress
        self._last_saved_step: int | None = None
        self._elapsed_offset = 0.0  # training seconds before the current steps() call
        self._active_since: float | None = None
        self._paused_s = 0.0
        self._pending_warning: str | None = None
        self.val_split = "val"  # "train" when there is too little held-out text to validate on

        run_path = Path(run_dir) if run_dir is not None else None
        resumed: RunDir | None = None
        if resume:
            if run_path is None:
                raise CheckpointError("resume: no run folder given; name the run to continue")
            resumed = RunDir.open(run_path)
            config, self.ignored_overrides = resumed.resume_config(config)
            if tokenizer is None:
                tokenizer = resumed.load_tokenizer()
        else:
            if config is None:
                raise ConfigError("no config given for a new run")
            config = copy_config(config)  # later edits in the GUI must not reach a running trainer
            if write_run:
                run_path = run_path or new_run_path()
                RunDir.check_creatable(run_path)  # fail now, not after minutes of tokenizing
        tok_params, model_params = validate_plugins(config, registry)
        # Store every param, defaults included, so config.toml reproduces the run on its own.
        config.tokenizer.params = params_to_dict(tok_params)
        config.model.params = params_to_dict(model_params)
        self.config = config
        cfg = config.train
        if cfg.batch_size % cfg.grad_accum:
            raise ConfigError(
                f"train.grad_accum: {cfg.grad_accum} does not divide train.batch_size {cfg.batch_size} "
                "(each micro-batch holds batch_size / grad_accum sequences)"
            )
        # The thread count is process-wide: "0" must restore the default after an earlier run.
        torch.set_num_threads(cfg.threads if cfg.threads > 0 else _DEFAULT_THREADS)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.dtype = autocast_dtype(self.device, cfg.dtype)

        self.file_infos: list[FileInfo] = []  # the files read (empty when given a tokenizer and corpus)
        text = self._read_corpus() if tokenizer is None or corpus is None else ""
        self.tokenizer = tokenizer if tokenizer is not None else self._build_tokenizer(tok_params, text)
        self.corpus = corpus if corpus is not None else self._tokenize(text)
        if self.corpus.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"the corpus was tokenized with {self.corpus.vocab_size} token IDs but the tokenizer has "
                f"{self.tokenizer.vocab_size}; tokenize the corpus again"
            )
        self.model = self._build_model(model_params)
        self._model_owner = registry.owner("model", config.model.plugin)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = build_optimizers(self.model, cfg, self.device)
        self._samplers = self._make_samplers()
        use_scaler = self.dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None  # fp16 needs loss scaling
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        self._compile_confirmed = not cfg.compile
        if cfg.compile:
            self._forward = self._compiled_forward()

        if resumed is not None:
            self.run_dir = resumed
            if config.to_dict() != resumed.load_config().to_dict():
                resumed.save_config(config)
            self._restore_latest()
        elif write_run:
            self.run_dir = RunDir.create(run_path, config, self.tokenizer)

    # -- preparation ------------------------------------------------------------------------

    def _reporter(self, stage: str) -> Callable[[int, int], None] | None:
        if self._progress is None:
            return None
        report = self._progress
        return lambda done, total: report(stage, done, total)

    def _read_corpus(self) -> str:
        files = self.config.data.files or [str(demo_corpus_path())]
        text, self.file_infos = load_corpus_text(
            files, readers=self.registry.readers_by_extension(), progress=self._reporter("reading")
        )
        return text

    def _build_tokenizer(self, params: Any, text: str) -> Tokenizer:
        name = self.config.tokenizer.plugin
        spec = self.registry.tokenizer(name)
        try:
            tokenizer = spec.build(params, lambda: iter_text_chunks(text), self._reporter("tokenizer"))
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError(f"build() returned {type(tokenizer).__name__}, not a lmstudio_app Tokenizer")
        except LMStudioError:
            raise
        except Exception as exc:
            raise PluginCallError(self.registry.owner("tokenizer", name), f"building tokenizer {name!r}", exc) from exc
        return tokenizer

    def _tokenize(self, text: str) -> TokenizedCorpus:
        data = self.config.data
        return tokenize_corpus(self.tokenizer, text, data.val_fraction, data.val_split,
                               progress=self._reporter("tokenizing"))

    def _build_model(self, params: Any) -> nn.Module:
        name = self.config.model.plugin
        spec = self.registry.model(name)
        try:
            model = spec.build(params, self.tokenizer.vocab_size)
            if not isinstance(model, nn.Module) or int(getattr(model, "context_length", 0) or 0) < 1:
                raise TypeError(f"build() returned {type(model).__name__}, not a LanguageModel with a context_length")
        except LMStudioError:
            raise
        except Exception as exc:
            raise PluginCallError(self.registry.owner("model", name), f"building model {name!r}", exc) from exc
        return model.to(self.device).train()

    def _make_samplers(self) -> dict[str, BatchSampler]:
        """Separate random streams, so evaluating never changes which batches training sees."""
        cfg = self.config.train
        micro, ctx = cfg.batch_size // cfg.grad_accum, int(self.model.context_length)
        train = self.corpus.train
        samplers = {"train": BatchSampler(train, micro, ctx, cfg.seed, self.device, "train")}
        try:
            samplers["val"] = BatchSampler(self.corpus.val, micro, ctx, cfg.seed + 1, self.device, "val")
            self.val_split = "val"
        except DataError:  # no (or too little) held-out text: validate on training text
            samplers["val"] = BatchSampler(train, micro, ctx, cfg.seed + 1, self.device, "train")
            self.val_split = "train"
        samplers["train_eval"] = BatchSampler(train, micro, ctx, cfg.seed + 2, self.device, "train")
        return samplers

    def _compiled_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        try:
            return torch.compile(self.model)
        except Exception as exc:  # noqa: BLE001 - e.g. an unsupported Python or platform
            self._compile_failed(exc)
            return self.model

    def _compile_failed(self, exc: BaseException) -> None:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        self.compile_warning = f"torch.compile failed ({type(exc).__name__}: {first}); training without it"
        self._pending_warning = self.compile_warning
        self._compile_confirmed = True
        warnings.warn(self.compile_warning, RuntimeWarning, stacklevel=2)

    def _restore_latest(self) -> None:
        assert self.run_dir is not None
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:  # stopped before the first checkpoint: start over, identically seeded
            self.run_dir.truncate_metrics(0)
            return
        state = ckpt.load_checkpoint(path, self.model, self.optimizers, map_location="cpu")
        self.step = int(state["step"])
        ckpt.restore_rng(state["rng"], self._samplers)
        extra = state.get("extra", {})
        self._elapsed_offset = float(extra.get("elapsed_s", 0.0))
        self.last_val_loss = extra.get("val_loss")
        if self.scaler is not None and "grad_scaler" in extra:
            self.scaler.load_state_dict(extra["grad_scaler"])
        self._last_saved_step = self.step
        self.run_dir.truncate_metrics(self.step)

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
        """One step; returns (mean loss, grad norm) as device tensors (no sync)."""
        cfg = self.config.train
        set_learning_rate(self.optimizers, lr_scale(self.step, cfg))
        if not self.model.training:  # a probe may have left it in eval mode
            self.model.train()
        accum = cfg.grad_accum
        total: torch.Tensor | None = None
        out_of_memory = compile_error = False
        try:
            for _ in range(accum):
                loss = self._loss(*self._samplers["train"].sample())
                if accum > 1:
                    loss = loss / accum
                total = loss.detach() if total is None else total + loss.detach()
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        except LMStudioError:
            raise
        except Exception as exc:
            if _is_out_of_memory(exc):
                out_of_memory = True
            elif not self._compile_confirmed:  # compiling happens on the first call
                compile_error = True
                self._compile_failed(exc)
            else:
                raise PluginCallError(self._model_owner, "the training step", exc) from exc
        # Handled here, outside the except block, so the failed step's tensors can be freed.
        if out_of_memory:
            total = loss = None
            raise self._out_of_memory()
        if compile_error:
            self._forward = self.model
            self._zero_grad()
            return self._optimisation_step()
        self._compile_confirmed = True
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

    def _zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _out_of_memory(self) -> TrainingError:
        self._zero_grad()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()
        cfg = self.config.train
        return TrainingError(
            f"out of memory on {self.device} at step {self.step + 1} with train.batch_size {cfg.batch_size} "
            f"(train.grad_accum {cfg.grad_accum}); try a smaller train.batch_size or a larger train.grad_accum"
        )

    def _check_losses(self, pending: list[torch.Tensor]) -> float:
        """Sync the losses of the steps since the last check; stop at the first nan/inf."""
        values = torch.stack(pending).float().cpu()  # the one device sync per report
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            index = int(bad[0])
            self._raise_not_finite(self.step - len(pending) + index + 1, float(values[index]))
        return float(values[-1])

    def _raise_not_finite(self, step: int, value: float) -> None:
        self.stop_reason = "error"
        kind = "nan" if math.isnan(value) else "inf"
        if self._last_saved_step is None:
            good = "no checkpoint was saved before it"
        else:
            good = f"the last good checkpoint is step {self._last_saved_step}"
        raise TrainingError(
            f"loss became {kind} at step {step}; {good} — try a lower train.learning_rate "
            f"(now {self.config.train.learning_rate:g})"
        )

    # -- the loop ---------------------------------------------------------------------------

    def _elapsed(self) -> float:
        if self._active_since is None:
            return self._elapsed_offset
        return self._elapsed_offset + time.perf_counter() - self._active_since - self._paused_s

    def steps(self) -> Iterator[StepMetrics]:
        """Train until ``max_steps`` or a stop, yielding a report at logged and evaluation steps."""
        cfg = self.config.train
        tokens_per_step = cfg.batch_size * int(self.model.context_length)
        pending: list[torch.Tensor] = []
        norm: torch.Tensor | None = None
        window_steps, window_s = 0, 0.0
        self.stop_reason = None
        self._active_since, self._paused_s = time.perf_counter(), 0.0

        def report(loss: float) -> StepMetrics:
            nonlocal window_steps, window_s
            metrics = StepMetrics(
                step=self.step, max_steps=cfg.max_steps, elapsed_s=self._elapsed(), train_loss=loss,
                lr=lr_at(self.step - 1, cfg), tokens_per_s=window_steps * tokens_per_step / max(window_s, 1e-9),
                tokens_seen=self.step * tokens_per_step,
                grad_norm=float(norm) if norm is not None else None, warning=self._pending_warning,
            )
            self._pending_warning = None
            window_steps, window_s = 0, 0.0
            return metrics

        try:
            while self.step < cfg.max_steps:
                if self.control.stop_requested:
                    break
                if self.control.paused:
                    waited_from = time.perf_counter()
                    go_on = self.control.wait_while_paused()
                    self._paused_s += time.perf_counter() - waited_from
                    if not go_on:
                        break
                started = time.perf_counter()
                with self.lock:
                    loss, norm = self._optimisation_step()
                    self.step += 1
                pending.append(loss)
                step, last = self.step, self.step >= cfg.max_steps
                evaluating = step % cfg.eval_interval == 0 or last
                saving = last or (step % cfg.checkpoint_interval == 0 if cfg.checkpoint_interval else evaluating)
                logging = evaluating or step % cfg.log_interval == 0
                window_steps += 1
                if not (logging or saving):
                    window_s += time.perf_counter() - started
                    continue
                synchronize(self.device)
                train_loss = self._check_losses(pending)  # before any checkpoint: never save nan weights
                pending = []
                window_s += time.perf_counter() - started
                metrics = report(train_loss) if logging else None
                if metrics is not None and evaluating:
                    metrics.val_loss = self.last_val_loss = self._checked_val_loss()
                    metrics.sample = self._sample_text()
                if saving and self.run_dir is not None:
                    self.save_checkpoint()
                if metrics is not None:
                    self._log(metrics)
                    yield metrics
            if self.step < cfg.max_steps:
                self.stop_reason = "stopped"
                final = report(self._check_losses(pending)) if pending else None
                if self.step != self._last_saved_step and self.run_dir is not None:
                    self.save_checkpoint()
                if final is not None:
                    self._log(final)
                    yield final
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

    def run(self, on_step: Callable[[StepMetrics], None] | None = None) -> StepMetrics | None:
        """Train to the end (or a stop); return the last report."""
        last = None
        for metrics in self.steps():
            if on_step is not None:
                on_step(metrics)
            last = metrics
        return last

    def _log(self, metrics: StepMetrics) -> None:
        if self.run_dir is not None:
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
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    total = torch.zeros((), device=self.device)
                    for _ in range(count):
                        total += self._loss(*sampler.sample()).float()
                    return float(total) / count
            except LMStudioError:
                raise
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise PluginCallError(self._model_owner, "evaluation", exc) from exc
            finally:
                self.model.train(was_training)
        raise self._out_of_memory()  # reached only after running out of memory, outside the except

    def _sample_text(self) -> str | None:
        """A generated continuation shown at each evaluation (starts a fresh line if it can)."""
        count = self.config.train.sample_tokens
        if count <= 0:
            return None
        from .inference import EmptyPromptError

        predictor = self.predictor()
        seed = self.config.train.seed + self.step
        try:
            try:
                return predictor.generate("", max_tokens=count, seed=seed)
            except EmptyPromptError:  # the vocabulary has no newline: prompt with the corpus start
                prompt = self.tokenizer.decode(self.corpus.train[:4].tolist())
                return prompt + predictor.generate(prompt, max_tokens=count, seed=seed)
        except LMStudioError:
            raise
        except Exception as exc:
            raise PluginCallError(self._model_owner, "generating a sample", exc) from exc

    def save_checkpoint(self) -> Path:
        """Save the current state into the run folder (between steps; safe from another thread)."""
        if self.run_dir is None:
            raise CheckpointError("this training session has no run folder, so there is nowhere to save")
        with self.lock:
            extra: dict[str, Any] = {
                "elapsed_s": self._elapsed(),
                "tokens_seen": self.step * self.config.train.batch_size * int(self.model.context_length),
                "val_loss": self.last_val_loss,
            }
            if self.compile_warning:
                extra["compile_warning"] = self.compile_warning
            if self.scaler is not None:
                extra["grad_scaler"] = self.scaler.state_dict()
            path = ckpt.save_checkpoint(
                self.run_dir, model=self.model, optimizers=self.optimizers, step=self.step,
                rng=ckpt.capture_rng(self._samplers), extra=extra,
            )
            self._last_saved_step = self.step
        return path

    def predictor(self) -> Predictor:
        """Predictions from the live model, safe while training runs (they share :attr:`lock`)."""
        from .inference import Predictor  # lazy: inference imports the run/checkpoint modules

        return Predictor(self.model, self.tokenizer, lock=self.lock)
