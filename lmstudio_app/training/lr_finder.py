"""A learning-rate range test: train briefly while the rate grows exponentially, and watch the loss.

:func:`find_lr` runs the ordinary :class:`~lmstudio_app.training.trainer.Trainer` without a run
folder (nothing is written) on a copy of the config with a ``constant`` schedule and no warmup, so
every step's rate is each param group's peak (``group["initial_lr"]``, see optimizers.py). Between
steps it multiplies those peaks by a fixed ratio: the rate goes from ``start_lr`` to ``end_lr`` over
``steps`` steps (Muon's group, where used, is scaled by the same factors). That is a schedule
override, not a second training loop: batches, precision, clipping and the out-of-memory fallback
are the trainer's own.

The test stops early when the smoothed loss exceeds ``blowup`` (4) times its best, or a loss is not
finite. The suggestion is the rate where the smoothed loss falls fastest against log(rate), taken
only before the smoothed loss's minimum, so it always lies on the descending part of the curve (the
other common rule, one-tenth of the minimum's rate, is given as ``min_lr / 10`` for reference).
Qt-free; the CLI's ``lmstudio lr-find`` prints its summary.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..errors import LMStudioError, ParamError, TrainingError

if TYPE_CHECKING:
    from ..registry import PluginRegistry

__all__ = ["LrFinderResult", "find_lr", "suggest"]

SKIP_START = 3  # the first steps' slopes are mostly the smoothing's warm-up, not the model's


@dataclass
class LrFinderResult:
    """The curve (one entry per completed step) and the suggestion drawn from it."""

    lrs: list[float]  # the AdamW rate (train.learning_rate's role) used at each step
    losses: list[float]  # each step's training loss
    smoothed: list[float]  # bias-corrected exponential moving average of the losses
    suggestion: float | None  # the steepest descent's rate; None when the loss never fell
    suggestion_index: int | None
    min_index: int  # where the smoothed loss is lowest
    stop_reason: str  # "end of range", "loss exceeded 4x its best", "loss not finite", ...
    notes: list[str] = field(default_factory=list)

    @property
    def min_lr(self) -> float:
        """The rate at the smoothed loss's minimum."""
        return self.lrs[self.min_index]

    def to_dict(self) -> dict[str, Any]:
        return {"lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed, "suggestion": self.suggestion,
                "suggestion_index": self.suggestion_index, "min_index": self.min_index, "min_lr": self.min_lr,
                "min_lr_div_10": self.min_lr / 10, "stop_reason": self.stop_reason, "notes": self.notes,
                "method": "steepest descent of the smoothed loss, before its minimum"}


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[int | None, int]:
    """(index of the steepest descent before the minimum or None, index of the minimum)."""
    min_index = min(range(len(smoothed)), key=smoothed.__getitem__)
    best, best_slope = None, 0.0
    # Central differences over log(lr); only points strictly before the minimum, so the pick is
    # on the descending part even when the curve is noisy after it.
    for i in range(max(1, min(SKIP_START, min_index - 1)), min_index):
        slope = (smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        if slope < best_slope:
            best, best_slope = i, slope
    return best, min_index


def find_lr(config: RunConfig, registry: PluginRegistry, *, start_lr: float = 1e-5, end_lr: float = 1.0,
            steps: int = 100, blowup: float = 4.0, beta: float = 0.9, tokenizer: Any = None, corpus: Any = None,
            on_step: Callable[[int, float, float], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> LrFinderResult:
    """Run the range test on ``config``'s corpus, tokenizer and model (see the module docstring).

    ``on_step(step, lr, loss)`` follows it; ``should_stop()`` True ends it early (between steps).
    """
    from .trainer import Trainer  # torch: imported when the test runs

    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ParamError(f"lr-find: the range must rise from a positive start, got {start_lr:g} → {end_lr:g}")
    if steps < 8:
        raise ParamError(f"lr-find: --steps must be at least 8 (a curve to read a slope from), got {steps}")
    if not blowup > 1:
        raise ParamError(f"lr-find: the blow-up factor must be above 1, got {blowup:g}")
    cfg = copy.deepcopy(config)
    t = cfg.train
    t.learning_rate, t.schedule, t.warmup_steps, t.max_steps = start_lr, "constant", 0, steps
    t.log_interval, t.eval_interval, t.eval_batches, t.sample_tokens = 1, steps, 1, 0
    t.muon_lr = t.muon_lr * start_lr / config.train.learning_rate  # keep Muon's ratio to AdamW
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))
    trainer = Trainer(cfg, registry, write_run=False, tokenizer=tokenizer, corpus=corpus)
    peaks = [[group["initial_lr"] for group in opt.param_groups] for opt in trainer.optimizers]
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, reason = 0.0, "end of range"
    notes = list(trainer.tokenizer.notes)
    gen = trainer.steps()
    try:
        try:
            for metrics in gen:
                i = metrics.step - 1
                lr = start_lr * ratio**i
                loss = metrics.train_loss
                average = beta * average + (1 - beta) * loss
                lrs.append(lr)
                losses.append(loss)
                smoothed.append(average / (1 - beta ** (i + 1)))
                if on_step is not None:
                    on_step(metrics.step, lr, loss)
                if smoothed[-1] > blowup * min(smoothed):
                    reason = f"loss exceeded {blowup:g}x its best"
                    break
                if should_stop is not None and should_stop():
                    reason = "stopped"
                    break
                factor = ratio ** (i + 1)  # the next step's rate, applied before it starts
                for opt, group_peaks in zip(trainer.optimizers, peaks, strict=True):
                    for group, peak in zip(opt.param_groups, group_peaks, strict=True):
                        group["initial_lr"] = peak * factor
        except TrainingError as exc:  # a nan/inf loss (faults.not_finite_error): the rate is past any use
            if not str(exc).startswith("loss became"):
                raise
            reason = "loss not finite"
    finally:
        gen.close()
        trainer.close()
    if len(smoothed) < 3:
        raise LMStudioError(f"lr-find: the loss blew up after {len(smoothed)} step(s) from {start_lr:g}; "
                            "start lower (--start-lr)")
    index, min_index = suggest(lrs, smoothed)
    if index is None:
        notes.append("the smoothed loss never fell: no suggestion; start lower or run more steps")
    return LrFinderResult(lrs=lrs, losses=losses, smoothed=smoothed,
                          suggestion=lrs[index] if index is not None else None, suggestion_index=index,
                          min_index=min_index, stop_reason=reason, notes=notes)
