"""Checks on a model before it trains: will it fit in memory, and does it answer in the right shape?

:func:`check_memory` estimates what training needs (weights, gradients, optimiser state and the
activations of one micro-batch, measured on the ``meta`` device, so a 39-billion-parameter
configuration costs nothing to estimate) and refuses, with the estimate, the memory available
and the setting to lower, when it cannot fit: without it such a run allocates until the
operating system kills it. :func:`build_checked_model` is what preparation calls to build a
model for training: the memory check, the build, then
:func:`~lmstudio_app.registry.check_model_output` (shape ``(B, T, V)``, floating logits,
causality), so a wrong model is refused before the first step, naming its plugin.

Set ``LMSTUDIO_MEMORY_CHECK=0`` to skip the memory check (when swap or a better estimate of
one's own says it fits).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import RunConfig, TrainConfig
from ..devices import autocast_dtype
from ..errors import LMStudioError, TrainingError
from ..params import build_params, params_to_dict
from ..registry import build_model_from_spec, check_model_output, is_user_interrupt
from ..specs import ModelSpec

if TYPE_CHECKING:
    from ..registry import PluginRegistry
    from .distributed import DistInfo

MEMORY_CHECK_ENV = "LMSTUDIO_MEMORY_CHECK"  # "0" / "off": do not refuse a run that looks too large
_EARLY_VOCAB = 2  # the smallest vocabulary, for the check before the tokenizer exists


@dataclass(frozen=True)
class MemoryEstimate:
    """What training one model needs, in bytes, on one rank."""

    parameters: int
    weights_and_grads: int  # fp32 weights and their gradients
    optimizer_state: int
    activations: int  # what autograd saves for the backward pass of one micro-batch
    micro_batch: int  # sequences per forward pass

    @property
    def total(self) -> int:
        return self.weights_and_grads + self.optimizer_state + self.activations

    @property
    def smallest(self) -> int:
        """With one sequence per micro-batch: what the out-of-memory fallback can shrink to."""
        return self.weights_and_grads + self.optimizer_state + self.activations // max(self.micro_batch, 1)


def optimizer_state_bytes(model: nn.Module, optimizer: str) -> int:
    """AdamW keeps two fp32 moments per weight; Muon keeps one momentum for matrices."""
    roles: dict[str, str] = model.param_roles() if hasattr(model, "param_roles") else {}
    total = 0
    for name, p in model.named_parameters():
        if name not in roles and roles:
            continue  # a tied weight, counted under its first name
        states = 1 if optimizer == "muon" and roles.get(name) == "matrix" else 2
        total += p.numel() * 4 * states
    return total


def activation_bytes(model: nn.Module, batch: int, context: int, vocab_size: int) -> float:
    """Bytes autograd saves for one micro-batch, from a forward pass on the meta device."""
    param_ids = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        base = t._base if t._base is not None else t
        if id(t) not in seen and id(base) not in param_ids:
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return t

    try:
        idx = torch.zeros((batch, context), dtype=torch.long, device="meta")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(idx)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
        return float(total)
    except BaseException as exc:  # a model that cannot run on meta (or exits): a rough figure instead
        if isinstance(exc, GeneratorExit) or is_user_interrupt(exc):
            raise
        return float(batch * context * vocab_size * 4 * 3)


def micro_batch(train: TrainConfig, world_size: int = 1) -> int:
    return max(train.batch_size // max(world_size * train.grad_accum, 1), 1)


def estimate_memory(model: nn.Module, train: TrainConfig, vocab_size: int, device: torch.device,
                    world_size: int = 1) -> MemoryEstimate:
    """The training memory of ``model`` (built on the meta device) on one rank."""
    parameters = sum(p.numel() for p in model.parameters())
    micro = micro_batch(train, world_size)
    half = autocast_dtype(device, train.dtype) in (torch.bfloat16, torch.float16)
    context = max(int(getattr(model, "context_length", 1) or 1), 1)
    activations = activation_bytes(model, micro, context, vocab_size) * (0.5 if half else 1.0)
    return MemoryEstimate(parameters=parameters, weights_and_grads=parameters * 8,
                          optimizer_state=optimizer_state_bytes(model, train.optimizer),
                          activations=int(activations), micro_batch=micro)


def _meta_model(spec: ModelSpec, owner: str, params: Any, vocab_size: int) -> nn.Module:
    # fork_rng: a plugin's initialisers must not move the random streams the real model is built from
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model_from_spec(spec, owner, params, vocab_size)


# ---- the memory available --------------------------------------------------------------------


def _cgroup_available() -> int | None:
    """What a container's memory limit leaves (cgroup v2, then v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:  # a kernel file: small, never blocks
                limit_text = f.read(64).strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read(64).strip())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 1 << 60:  # "max", or v1's "no limit"
            return None
        return max(int(limit_text) - usage, 0)
    return None


def system_available_memory() -> int | None:
    """Bytes of RAM this process could still allocate without swapping (None: unknown)."""
    available: int | None = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported here: the kernel's own figures
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f.read(1 << 16).splitlines():
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
        if available is None:
            try:
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return None
    limited = _cgroup_available()
    return min(available, limited) if limited is not None else available


def available_memory(device: torch.device, dist: DistInfo | None = None) -> tuple[int, str] | None:
    """(bytes one rank may use, how that was found) on ``device``; None when unknown."""
    if device.type == "cuda":
        try:
            free, total = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except Exception:
            return None
        return int(free + cached), f"is free on {device} (of {_size(total)})"
    if device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        allocated = getattr(torch.mps, "driver_allocated_memory", None)
        if callable(recommended) and callable(allocated):
            try:
                return int(recommended() - allocated()), "is available to the GPU (mps)"
            except Exception:
                pass
    available = system_available_memory()
    if available is None:
        return None
    ranks = 1
    if dist is not None:  # the ranks on this machine share its memory
        ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0), 1) if device.type == "cpu" else 1
    where = "of memory is available" + (f" to each of {ranks} ranks on this machine" if ranks > 1 else "")
    return available // ranks, where


# ---- the check -------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f} billion" if n >= 1e9 else f"{n / 1e6:.1f} million" if n >= 1e6 else f"{n:,}"


def _model_knobs(spec: ModelSpec, owner: str, params: Any, config: RunConfig, vocab_size: int,
                 device: torch.device, world_size: int, shrinks: bool) -> list[str]:
    """The model settings that shrink the run most when halved, with what they would need then
    (``shrinks``: counting one sequence per micro-batch, as on CUDA)."""
    found: list[tuple[int, str]] = []
    values = params_to_dict(params)
    for field in dataclasses.fields(params):
        value = values.get(field.name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            continue
        try:
            smaller = build_params(type(params), {**values, field.name: value // 2})
            model = _meta_model(spec, owner, smaller, vocab_size)
            estimate = estimate_memory(model, config.train, vocab_size, device, world_size)
            need = estimate.smallest if shrinks else estimate.total
        except (LMStudioError, ValueError, TypeError):  # halving it is not a valid model
            continue
        found.append((need, f"model.{field.name} (now {value}; {value // 2} would need ~{_size(need)})"))
    found.sort()
    return [text for _, text in found[:2]]


def check_memory(registry: PluginRegistry, config: RunConfig, model_params: Any, vocab_size: int | None,
                 device: torch.device, dist: DistInfo | None = None) -> None:
    """Refuse with a :class:`TrainingError` a run whose model cannot fit in ``device``'s memory.

    ``vocab_size`` None: the tokenizer is not built yet (the check before minutes of tokenizing),
    so the smallest vocabulary is assumed. On a CPU (and MPS) the whole estimate must fit: there
    an allocation beyond the memory does not fail, the operating system kills the process. On a
    CUDA device one sequence per micro-batch must fit: training shrinks its micro-batches when
    an allocation fails (not under torchrun, where the ranks cannot shrink on their own). A
    plugin whose model cannot be built on the meta device is not checked.
    """
    if os.environ.get(MEMORY_CHECK_ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return
    spec = registry.model(config.model.plugin)
    owner = registry.owner("models", config.model.plugin)
    vocab = vocab_size if vocab_size is not None else _EARLY_VOCAB
    world = dist.world_size if dist is not None else 1
    try:
        model = _meta_model(spec, owner, model_params, vocab)
        estimate = estimate_memory(model, config.train, vocab, device, world)
    except LMStudioError:
        return  # the real build reports a broken plugin; this one only cannot build on meta
    available = available_memory(device, dist)
    if available is None:
        return
    free, where = available
    shrinks = device.type == "cuda" and dist is None
    if (estimate.smallest if shrinks else estimate.total) <= free:
        return
    cfg = config.train
    if estimate.smallest <= free:  # the model fits; the micro-batch does not
        advice = (f"lower train.batch_size (now {cfg.batch_size}) or raise train.grad_accum (now {cfg.grad_accum}): "
                  f"one sequence per micro-batch needs ~{_size(estimate.smallest)}")
    else:
        knobs = _model_knobs(spec, owner, model_params, config, vocab, device, world, shrinks)
        advice = ("lower " + " or ".join(knobs)) if knobs else "choose a smaller model"
    optimizer = cfg.optimizer
    raise TrainingError(
        f"the model does not fit in memory: training needs ~{_size(estimate.total)} "
        f"({_count(estimate.parameters)} parameters: weights and gradients {_size(estimate.weights_and_grads)}, "
        f"{optimizer} state {_size(estimate.optimizer_state)}, activations of {estimate.micro_batch} sequences "
        f"{_size(estimate.activations)}) but only {_size(free)} {where}; {advice} "
        f"(or set {MEMORY_CHECK_ENV}=0 to try anyway)"
    )


def build_checked_model(registry: PluginRegistry, config: RunConfig, model_params: Any, vocab_size: int,
                        device: torch.device, dist: DistInfo | None = None) -> nn.Module:
    """The model to train, on ``device`` in train mode, once it is known to fit and to answer
    ``(B, T, vocab_size)`` floating, causal logits (errors name the plugin)."""
    check_memory(registry, config, model_params, vocab_size, device, dist)
    model = registry.build_model(config.model.plugin, model_params, vocab_size).to(device).train()
    check_model_output(model, registry.owner("models", config.model.plugin), vocab_size, "before training")
    return model
