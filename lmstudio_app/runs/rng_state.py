"""The random streams a checkpoint must carry, and their JSON form (no pickle, no numpy files).

Training reads Python's, NumPy's and torch's generators (CPU, CUDA, MPS: dropout, init) and one
generator per batch sampler; :func:`capture_rng` takes them all and :func:`restore_rng` puts them
back, so a resumed run continues bit for bit. :func:`encode_rng` / :func:`decode_rng` turn them
into JSON-safe values (tensors as base64 bytes) for ``state.json``.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ..data.corpus import BatchSampler


def capture_rng(samplers: Mapping[str, BatchSampler]) -> dict[str, Any]:
    """Every random stream training reads: Python, NumPy, torch (CPU, CUDA, MPS) and the samplers."""
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "samplers": {name: sampler.get_state() for name, sampler in samplers.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        rng["mps"] = torch.mps.get_rng_state()
    return rng


def restore_rng(rng: Mapping[str, Any], samplers: Mapping[str, BatchSampler]) -> None:
    """Put back what :func:`capture_rng` captured (streams absent on this machine are skipped)."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"][: torch.cuda.device_count()]
        for index, state in enumerate(states):
            torch.cuda.set_rng_state(state, index)
    if "mps" in rng and torch.backends.mps.is_available():
        torch.mps.set_rng_state(rng["mps"])
    for name, state in rng.get("samplers", {}).items():
        if name in samplers:
            samplers[name].set_state(state)


def tensor_to_b64(t: torch.Tensor) -> str:
    """A tensor's raw bytes as base64 text (JSON-safe); :func:`b64_to_byte_tensor` reads them back."""
    return base64.b64encode(t.detach().cpu().contiguous().numpy().tobytes()).decode("ascii")


def b64_to_byte_tensor(text: str) -> torch.Tensor:
    """The bytes of :func:`tensor_to_b64` as a uint8 tensor (the form torch's RNG states take)."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def encode_rng(rng: Mapping[str, Any]) -> dict[str, Any]:
    version, internal, gauss = rng["python"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": tensor_to_b64(rng["torch"]),
        "samplers": {name: tensor_to_b64(state) for name, state in rng.get("samplers", {}).items()},
    }
    if "cuda" in rng:
        out["cuda"] = [tensor_to_b64(s) for s in rng["cuda"]]
    if "mps" in rng:
        out["mps"] = tensor_to_b64(rng["mps"])
    return out


def decode_rng(raw: Mapping[str, Any]) -> dict[str, Any]:
    version, internal, gauss = raw["python"]
    kind, keys, pos, has_gauss, cached = raw["numpy"]
    out: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
        "torch": b64_to_byte_tensor(raw["torch"]),
        "samplers": {name: b64_to_byte_tensor(s) for name, s in raw.get("samplers", {}).items()},
    }
    if "cuda" in raw:
        out["cuda"] = [b64_to_byte_tensor(s) for s in raw["cuda"]]
    if "mps" in raw:
        out["mps"] = b64_to_byte_tensor(raw["mps"])
    return out
