"""What the model panel shows before training: size, memory and time per step of a model.

The model is built on the ``meta`` device, so even a huge configuration costs no memory;
activations are measured by running one meta forward pass and adding up what autograd saves for
the backward pass, and the time per step comes from the device's measured matmul throughput.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from . import devices
from .config import TrainConfig
from .errors import LMStudioError, PluginCallError
from .specs import ModelSpec

_ASSUMED_MFU = 0.35  # share of the matmul peak a small training step reaches (for time estimates)

# Achieved matmul FLOP/s per device string, measured once per process (it takes ~0.2 s).
_MATMUL_FLOPS_CACHE: dict[str, float] = {}
_MATMUL_FLOPS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelPreview:
    """What the model panel shows before training: size, cost and a time estimate."""

    parameters: int
    non_embedding_parameters: int
    flops_per_token: float
    context_length: int
    memory_bytes: int  # weights + gradients + optimiser state + activations of one micro-batch
    seconds_per_step: float | None  # None when the throughput could not be measured
    device: str


def cached_matmul_flops(device: torch.device) -> float:
    """The device's achieved matmul FLOP/s, measured on first use and then remembered."""
    key = str(device)
    with _MATMUL_FLOPS_LOCK:
        if key not in _MATMUL_FLOPS_CACHE:
            _MATMUL_FLOPS_CACHE[key] = devices.measure_matmul_flops(device, size=512, seconds=0.2)
        return _MATMUL_FLOPS_CACHE[key]


def preview_model(spec: ModelSpec, model_params: Any, vocab_size: int, train: TrainConfig, owner: str,
                  measure_speed: bool = True) -> ModelPreview:
    """Build ``spec``'s model on the meta device and estimate its size, memory and speed."""
    try:
        with torch.device("meta"):
            model = spec.build(model_params, vocab_size)
    except LMStudioError:
        raise
    except Exception as exc:
        raise PluginCallError(owner, f"building model {spec.name!r}", exc) from exc
    info = model.describe()
    parameters = int(info["parameters"])
    context = int(info["context_length"])
    device = devices.resolve_device(train.device)
    autocast = devices.autocast_dtype(device, train.dtype)
    activation_scale = 0.5 if autocast in (torch.bfloat16, torch.float16) else 1.0
    activations = _activation_bytes(model, train.batch_size, context, vocab_size) * activation_scale
    memory = parameters * 8 + _optimizer_state_bytes(model, train.optimizer) + int(activations)
    seconds = None
    if measure_speed:
        tokens_per_step = train.batch_size * train.grad_accum * context
        flops = cached_matmul_flops(device) * _ASSUMED_MFU
        seconds = info["flops_per_token"] * tokens_per_step / flops if flops > 0 else None
    return ModelPreview(
        parameters=parameters,
        non_embedding_parameters=int(info["non_embedding_parameters"]),
        flops_per_token=float(info["flops_per_token"]),
        context_length=context,
        memory_bytes=int(memory),
        seconds_per_step=seconds,
        device=devices.describe_device(device),
    )


def _optimizer_state_bytes(model: torch.nn.Module, optimizer: str) -> int:
    """AdamW keeps two fp32 moments per weight; Muon keeps one momentum for matrices."""
    roles: dict[str, str] = model.param_roles() if hasattr(model, "param_roles") else {}
    total = 0
    for name, p in model.named_parameters():
        if name not in roles and roles:
            continue  # a tied weight, counted under its first name
        states = 1 if optimizer == "muon" and roles.get(name) == "matrix" else 2
        total += p.numel() * 4 * states
    return total


def _activation_bytes(model: torch.nn.Module, batch: int, context: int, vocab_size: int) -> float:
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
    except Exception:  # noqa: BLE001 — an op without a meta kernel: fall back to the logits, the largest term
        return float(batch * context * vocab_size * 4 * 3)
