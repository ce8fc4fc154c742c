"""Choosing the device and the numeric precision, and seeding."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator

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


# Overrides the CPU's bf16 detection, read at every call of cpu_has_fast_bf16.
CPU_BF16_ENV = "CHARRNN_CPU_BF16"

# Emulated bf16 autocast (AMD EPYC with AVX2, no AVX512: torch's own LSTM loop, bf16
# matrix products) against fp32: one training step each, interleaved, median of 5, 1 thread,
# torch 2.13. 2 x 256, batch 24 x 64: LSTM 21x slower, GRU 15x, tanh RNN 12x; the LSTM at
# batch 64 x 128: 19x; a 1 x 32 LSTM at batch 4 x 16: 3x.
EMULATED_BF16 = "12 to 21 times slower than fp32 (measured, 2 x 256 models)"


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16
    is emulated and far slower than fp32 (EMULATED_BF16).

    CHARRNN_CPU_BF16=1 or =0 in the environment overrides the detection, read at each call:
    1 where /proc/cpuinfo is absent or hides the flags (another OS, some VMs), 0 to take the
    path of a CPU without bf16 on one that has it (the tests force it both ways).
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise UsageError(
            f"{CPU_BF16_ENV}={forced!r}: set it to 1 (this CPU has bf16 instructions) or 0 "
            "(it has none), or unset it to detect them"
        )
    return _cpuinfo_has_bf16()


@functools.cache  # /proc/cpuinfo does not change while the process runs
def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_missing(device: torch.device) -> str | None:
    """Why bf16 autocast should not run on `device` (it would fail or crawl), or None."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    if device.type == "cpu" and not cpu_has_fast_bf16():
        return "this CPU has no bf16 instructions (AVX512-BF16 or AMX)"
    return None


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where bf16 autocast is fast on `device`, else 'fp32'. 'bf16' where
    it is not is refused: emulated on a CPU it is far slower than fp32 (EMULATED_BF16)."""
    missing = bf16_missing(device)
    if precision == "auto":
        return "bf16" if device.type in ("cuda", "cpu") and missing is None else "fp32"
    if precision == "bf16" and missing is not None:
        if device.type == "cuda":
            raise UsageError("--precision bf16: this GPU has no bf16 support; use fp32")
        raise UsageError(
            f"--precision bf16: {missing}; emulated, bf16 trains {EMULATED_BF16}: "
            "use --precision fp32 or auto"
        )
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast keeps fp32 master weights (and an fp32 loss); matmuls run in bf16."""
    if precision != "bf16":
        yield
        return
    # oneDNN's LSTM has no bf16 kernel without AVX512 ("could not create a primitive
    # descriptor"): there (bf16 forced on by CHARRNN_CPU_BF16=1), torch's own loop runs.
    onednn = device.type != "cpu" or _onednn_has_bf16()
    was = torch.backends.mkldnn.enabled
    try:
        if not onednn:
            torch.backends.mkldnn.enabled = False
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.mkldnn.enabled = was


def _onednn_has_bf16() -> bool:
    # torch's own test before it hands bf16 tensors to oneDNN.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True  # cuDNN's fused RNN kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
