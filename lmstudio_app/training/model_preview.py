"""What the model panel shows before training: size, memory and time per step of a model.

The model is built on the ``meta`` device, so even a huge configuration costs no memory;
activations are measured by running one meta forward pass and adding up what autograd saves for
the backward pass. The time per step of a model small enough to try is measured: a few real
steps (forward, backward and the optimiser, at the configured micro-batch, precision and
threads) on random tokens. For a larger one it is estimated from the device's measured matmul
throughput and an assumed utilisation, which for small models can be several times off.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import devices
from ..config import TrainConfig
from ..registry import build_model_from_spec, plugin_call
from ..specs import ModelSpec
from .model_checks import activation_bytes, available_memory, optimizer_state_bytes
from .optimizers import build_optimizers
from .preparation import micro_batch_size

_ASSUMED_MFU = 0.35  # share of the matmul peak a large training step reaches (for time estimates)
TIMED_STEP_MAX_FLOPS = 2e10  # a step costing at most this is timed for real (~0.2 s on two CPU cores)
_TIMING_SECONDS = 0.3  # timed steps run for about this long, after one warm-up step

# Achieved matmul FLOP/s per device string, measured once per process (for _MATMUL_SECONDS).
_MATMUL_SECONDS = 0.2
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
    step_time_measured: bool = False  # True: real steps were timed; False: estimated from matmul speed
    available_bytes: int | None = None  # the memory training may use on the device (None: unknown)

    @property
    def fits(self) -> bool | None:
        """Whether ``memory_bytes`` fits in ``available_bytes``; None when that is unknown. On a CPU
        training refuses a run that does not fit (model_checks.check_memory); on CUDA it may still
        run with smaller micro-batches."""
        return None if self.available_bytes is None else self.memory_bytes <= self.available_bytes


def cached_matmul_flops(device: torch.device, dtype: torch.dtype | None = None) -> float:
    """The device's achieved matmul FLOP/s in ``dtype`` (the autocast precision; None: fp32),
    measured on first use and then remembered."""
    key = f"{device}/{dtype}"
    with _MATMUL_FLOPS_LOCK:
        if key not in _MATMUL_FLOPS_CACHE:
            _MATMUL_FLOPS_CACHE[key] = devices.measure_matmul_flops(device, dtype, size=512, seconds=_MATMUL_SECONDS)
        return _MATMUL_FLOPS_CACHE[key]


def time_training_step(spec: ModelSpec, model_params: Any, vocab_size: int, train: TrainConfig, owner: str,
                       device: torch.device | None = None, seconds: float = _TIMING_SECONDS) -> float:
    """Seconds per optimiser step of this model, timed on random tokens after a warm-up step:
    ``train.grad_accum`` forward and backward passes of the micro-batch, in the autocast
    precision training uses, then the configured optimiser. On a CPU it sets PyTorch's thread
    count to ``train.threads``, as training itself does when it starts."""
    device = device or devices.resolve_device(train.device)
    micro = micro_batch_size(train)
    model = build_model_from_spec(spec, owner, model_params, vocab_size).to(device)
    autocast = devices.autocast_dtype(device, train.dtype)
    optimizers = build_optimizers(model, train, device)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab_size, (micro, int(model.context_length)), generator=generator).to(device)
    if device.type == "cpu":
        torch.set_num_threads(devices.training_threads(train.threads))

    def step() -> None:
        for _ in range(train.grad_accum):
            with torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext():
                logits = model(tokens)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
            loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    with plugin_call(owner, "timing a training step"):
        step()  # warm-up: kernel selection, lazy initialisation, optimiser state
        devices.synchronize(device)
        runs, started = 0, time.perf_counter()
        while True:
            step()
            runs += 1
            devices.synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds or runs >= 50:
                return elapsed / runs


def preview_model(spec: ModelSpec, model_params: Any, vocab_size: int, train: TrainConfig, owner: str,
                  measure_speed: bool = True) -> ModelPreview:
    """Build ``spec``'s model on the meta device and estimate its size, memory and speed."""
    with torch.device("meta"):  # no memory, however large the configuration
        model = build_model_from_spec(spec, owner, model_params, vocab_size)
    info = model.describe()
    parameters = int(info["parameters"])
    context = int(info["context_length"])
    device = devices.resolve_device(train.device)
    autocast = devices.autocast_dtype(device, train.dtype)
    activation_scale = 0.5 if autocast in (torch.bfloat16, torch.float16) else 1.0
    activations = activation_bytes(model, micro_batch_size(train), context, vocab_size) * activation_scale
    memory = parameters * 8 + optimizer_state_bytes(model, train.optimizer) + int(activations)
    seconds = None
    measured = False
    if measure_speed:
        flops_per_step = info["flops_per_token"] * train.batch_size * context
        if flops_per_step <= TIMED_STEP_MAX_FLOPS:
            seconds = time_training_step(spec, model_params, vocab_size, train, owner, device)
            measured = True
        else:
            flops = cached_matmul_flops(device, autocast) * _ASSUMED_MFU
            seconds = flops_per_step / flops if flops > 0 else None
    return ModelPreview(
        parameters=parameters,
        non_embedding_parameters=int(info["non_embedding_parameters"]),
        flops_per_token=float(info["flops_per_token"]),
        context_length=context,
        memory_bytes=int(memory),
        seconds_per_step=seconds,
        device=devices.describe_device(device, devices.training_threads(train.threads)),
        step_time_measured=measured,
        available_bytes=available[0] if (available := available_memory(device)) is not None else None,
    )
