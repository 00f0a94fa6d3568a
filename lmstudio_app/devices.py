"""Which accelerator to train on, at which precision, and how fast it is.

``auto`` picks CUDA, then Apple MPS, then the CPU. Mixed precision (autocast) is chosen per
device: bf16 on CUDA GPUs that support it (fp16 on older ones), bf16 on CPUs with native
bf16 matrix instructions, plain fp32 elsewhere (bf16 emulated on a CPU is slower than fp32).
"""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path

import torch

from .errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device names valid on this machine, for the GUI's choice box and error messages."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a config value (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) into a device."""
    kind, _, index = name.partition(":")
    if kind not in DEVICE_NAMES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"train.device: {name!r} is not one of {', '.join(DEVICE_NAMES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = available_devices()
    if kind not in available:
        raise ConfigError(
            f"train.device: {name!r} is not available on this machine (available: {', '.join(available)})"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device: {name!r} does not exist ({torch.cuda.device_count()} CUDA device(s) found)"
        )
    return torch.device(name)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux, or /proc not mounted
        return ""


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True where the CPU multiplies bf16 matrices natively (so bf16 autocast is a win).

    x86: AVX512-BF16 or AMX-BF16. Linux arm64: the ``bf16`` feature (Graviton 3, Neoverse V1+).
    macOS answers False: training there runs on MPS, and PyTorch's CPU kernels on Apple
    silicon do not use bf16 instructions.
    """
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def autocast_dtype(device: torch.device, name: str = "auto") -> torch.dtype | None:
    """The autocast precision for ``train.dtype``; None means plain fp32 (no autocast)."""
    if name != "auto":
        if name not in DTYPE_NAMES:
            raise ConfigError(f"train.dtype: {name!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
        dtype = DTYPE_NAMES[name]
        if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.dtype: 'bfloat16' is not supported by {describe_device(device)}")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None  # MPS and anything else: fp32 is the safe, well-supported path


def _cpu_model_name() -> str:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


# PyTorch's own choice of CPU threads, before any run sets ``train.threads``. (A thread count set
# later applies to threads started afterwards, such as the app's training thread, while a thread
# that already ran torch code, such as the GUI thread, may keep reporting its own.)
DEFAULT_THREADS = torch.get_num_threads()


def training_threads(configured: int) -> int:
    """The CPU threads a run uses for ``train.threads`` (0: PyTorch's default)."""
    return configured if configured > 0 else DEFAULT_THREADS


def describe_device(device: torch.device, threads: int | None = None) -> str:
    """One line for the status bar: ``CUDA: NVIDIA H200 (140 GB)``, ``CPU: AMD EPYC (2 threads)``;
    ``threads``: the CPU threads to name (default: what PyTorch reports in this thread)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA: {props.name} ({props.total_memory / 2**30:.0f} GB)"
    if device.type == "mps":
        return "Apple MPS"
    if device.type == "cpu":
        count = torch.get_num_threads() if threads is None else threads
        return f"CPU: {_cpu_model_name()} ({count} thread{'' if count == 1 else 's'})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings measure the work and not the queueing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype | None = None, size: int = 1024, seconds: float = 0.5
) -> float:
    """Achieved FLOP/s of ``size`` x ``size`` matmuls over about ``seconds`` (the MFU denominator)."""
    if size < 1 or seconds <= 0:
        raise ValueError(f"size must be >= 1 and seconds > 0, got size={size}, seconds={seconds}")
    dtype = dtype or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        torch.matmul(a, b)  # warm-up: kernel selection, lazy init
        synchronize(device)
        runs = 0
        start = time.perf_counter()
        while True:
            torch.matmul(a, b)
            runs += 1
            if runs % 4 == 0 or device.type == "cpu":  # syncing each GPU call would add latency
                synchronize(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
    return 2.0 * size**3 * runs / elapsed
