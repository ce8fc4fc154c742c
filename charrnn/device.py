"""Choosing the device and the numeric precision, and seeding."""

from __future__ import annotations

import contextlib
import functools
import re

import torch

from .errors import UsageError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")


def resolve_device(name: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> a device that exists here."""
    match = _DEVICE.match(name.strip().lower())
    if not match:
        raise UsageError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    kind = match.group(1)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise UsageError("--device mps: Apple's MPS is not available here; use --device cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise UsageError(
            f"--device {name}: no CUDA GPU is available here (this torch build or machine has "
            "none); use --device cpu or --device auto"
        )
    index = int(match.group(2) or 0)
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16
    is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where bf16 autocast is fast on `device`, else 'fp32'."""
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16: this GPU has no bf16 support; use fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast keeps fp32 master weights (and an fp32 loss); matmuls run in bf16."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True  # cuDNN's fused RNN kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
