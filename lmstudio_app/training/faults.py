"""What the training loop does when a step fails: out of memory, a nan/inf loss.

Out of memory, the loop does not give up at once: it splits each step into twice as many
micro-batches (:func:`next_grad_accum`), so the global batch, and with it the learning dynamics,
stays the same while each forward pass needs half the activation memory; only when a micro-batch
of one sequence still does not fit does it stop with :func:`out_of_memory_error`. A nan or inf
loss stops the run before any checkpoint could store the broken weights
(:func:`not_finite_error` names the last good checkpoint and suggests a lower learning rate).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ..config import TrainConfig
from ..errors import TrainingError

if TYPE_CHECKING:
    from ..data.corpus import BatchSampler
    from .distributed import DistInfo

# Messages of the allocators that do not raise torch.OutOfMemoryError (CPU, MPS, older CUDA paths).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "failed to allocate", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means an allocation failed (on any device), as opposed to a bug."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    """Return what a failed step left cached (call after dropping its tensors).

    The failed step's activations can be caught in reference cycles through its traceback,
    which only the cyclic collector frees. If the process has switched automatic collection
    off, whoever did so collects, and this leaves the cycles to them: the desktop app collects
    in its GUI thread only, because a collection here, in the training thread, can destroy Qt
    objects outside their thread and hang the app (it did, in a test of this very path).
    """
    if gc.isenabled():
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def next_grad_accum(batch_size: int, grad_accum: int, world_size: int = 1) -> int | None:
    """The smallest grad_accum of at least twice ``grad_accum`` that splits the batch evenly.

    For a power-of-two batch that is simply the double (micro-batches of half the size); for
    e.g. batch 12 the micro-batches go 12 → 6 → 3 → 1. None when they already hold one sequence.
    """
    per_rank = batch_size // world_size
    for candidate in range(2 * grad_accum, per_rank + 1):
        if per_rank % candidate == 0:
            return candidate
    return None


def shrink_micro_batches(cfg: TrainConfig, samplers: Mapping[str, BatchSampler], step: int,
                         device: torch.device, dist: DistInfo | None) -> str:
    """Raise ``cfg.grad_accum`` to :func:`next_grad_accum` and resize every sampler's batches.

    Returns the warning to record; raises :func:`out_of_memory_error` at one sequence per
    micro-batch, and at once under torchrun (the ranks would have to agree to change).
    """
    world = dist.world_size if dist is not None else 1
    new = next_grad_accum(cfg.batch_size, cfg.grad_accum, world) if dist is None else None
    if new is None:
        raise out_of_memory_error(device, step, cfg, world)
    old_micro = cfg.batch_size // (world * cfg.grad_accum)
    cfg.grad_accum = new
    micro = cfg.batch_size // (world * new)
    for sampler in samplers.values():
        sampler.batch_size = micro
    return (
        f"out of memory at step {step} with micro-batches of {old_micro}: now {new} micro-batches of {micro} "
        f"per step (train.grad_accum {new}; train.batch_size {cfg.batch_size} unchanged)"
    )


def out_of_memory_error(device: torch.device, step: int, cfg: TrainConfig, world_size: int = 1) -> TrainingError:
    micro = cfg.batch_size // (world_size * cfg.grad_accum)
    if micro <= 1:
        advice = "even one sequence per micro-batch does not fit; try a smaller model or a shorter model.context_length"
    elif world_size > 1:
        advice = "try a larger train.grad_accum (the ranks cannot shrink their micro-batches on their own)"
    else:
        advice = "try a smaller train.batch_size or a larger train.grad_accum"
    return TrainingError(
        f"out of memory on {device} at step {step} with train.batch_size {cfg.batch_size} "
        f"(train.grad_accum {cfg.grad_accum}, micro-batches of {micro}); {advice}"
    )


def not_finite_error(value: float, step: int, last_saved_step: int | None, cfg: TrainConfig) -> TrainingError:
    kind = "nan" if math.isnan(value) else "inf"
    if last_saved_step is None:
        good = "no checkpoint was saved before it"
    else:
        good = f"the last good checkpoint is step {last_saved_step}"
    return TrainingError(
        f"loss became {kind} at step {step}; {good} — try a lower train.learning_rate (now {cfg.learning_rate:g})"
    )
