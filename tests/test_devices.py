"""Device selection, autocast precision, and the matmul benchmark."""

from __future__ import annotations

import pytest
import torch

from lmstudio_app import devices
from lmstudio_app.devices import (
    autocast_dtype,
    available_devices,
    cpu_supports_bf16,
    describe_device,
    measure_matmul_flops,
    resolve_device,
    synchronize,
)
from lmstudio_app.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture
def fake_cpuinfo(monkeypatch):
    """Replace /proc/cpuinfo with the given text (and forget the cached answer)."""

    def install(text: str) -> None:
        monkeypatch.setattr(devices, "_cpuinfo", lambda: text)
        cpu_supports_bf16.cache_clear()

    yield install
    cpu_supports_bf16.cache_clear()


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_auto_resolves_to_cpu_without_accelerators(no_accelerators) -> None:
    assert available_devices() == ["auto", "cpu"]
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU


def test_auto_prefers_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    assert available_devices() == ["auto", "cpu", "cuda", "mps"]


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_missing_accelerator_is_a_config_error(no_accelerators, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device(name)
    assert (
        str(info.value) == f"train.device: {name!r} is not available on this machine (available: auto, cpu)"
    )


def test_unknown_device_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'tpu' is not one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="'cpu:1'"):
        resolve_device("cpu:1")


def test_cpu_bf16_detection_reads_the_flags(fake_cpuinfo) -> None:
    fake_cpuinfo("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert cpu_supports_bf16() is False
    assert autocast_dtype(CPU) is None
    fake_cpuinfo("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert cpu_supports_bf16() is True
    assert autocast_dtype(CPU) is torch.bfloat16
    fake_cpuinfo("processor : 0\nFeatures : fp asimd bf16 i8mm\n")  # Linux arm64
    assert cpu_supports_bf16() is True
    fake_cpuinfo("")  # no /proc/cpuinfo (macOS, Windows)
    assert cpu_supports_bf16() is False


def test_auto_dtype_on_this_cpu_is_consistent() -> None:
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert autocast_dtype(CPU, "auto") is expected


def test_explicit_and_per_device_dtypes(monkeypatch) -> None:
    assert autocast_dtype(CPU, "float32") is None
    assert autocast_dtype(CPU, "bfloat16") is torch.bfloat16
    assert autocast_dtype(torch.device("mps")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    with pytest.raises(ConfigError, match="train.dtype: 'int8'"):
        autocast_dtype(CPU, "int8")


def test_describe_cpu_names_model_and_threads(fake_cpuinfo) -> None:
    fake_cpuinfo("processor : 0\nmodel name : Test CPU 9000\nflags : fpu\n")
    count = torch.get_num_threads()
    assert describe_device(CPU) == f"CPU: Test CPU 9000 ({count} thread{'' if count == 1 else 's'})"
    assert describe_device(CPU, 4) == "CPU: Test CPU 9000 (4 threads)"  # what a run's train.threads uses
    assert describe_device(CPU, 1) == "CPU: Test CPU 9000 (1 thread)"
    assert describe_device(torch.device("mps")) == "Apple MPS"


def test_measure_matmul_flops_is_positive_and_bounded_in_time() -> None:
    synchronize(CPU)  # a no-op on the CPU, must not raise
    flops = measure_matmul_flops(CPU, size=64, seconds=0.02)
    assert 1e6 < flops < 1e15
    with pytest.raises(ValueError, match="size must be"):
        measure_matmul_flops(CPU, size=0)
