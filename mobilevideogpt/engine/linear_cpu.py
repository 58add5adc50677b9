"""Compiled CPU kernel for linear layers with few rows and bf16 or int8 weights (the language model's decode steps).

A decode step multiplies one activation row by every weight of the language model, so it runs at the speed weights
stream from memory. The kernel (``csrc/linear_cpu.cpp``, built and verified by ``native``) reads bf16 weights, or int8
weights with one fp32 scale per output row, and computes in fp32 with fp32 activations: half (bf16) or a quarter
(int8) of the bytes of an fp32 weight, with fp32 arithmetic. Measured on 2 shared cores of an AVX2 EPYC, one decode
step's worth of Qwen2.5-0.5B weights (24 layers + LM head, one row): torch fp32 300-400 ms, this kernel 190-210 ms
(bf16) and 100-140 ms (int8); torch's own bf16 matrix-vector path was slower than fp32 (it converts in a way that
does not keep up with memory), and torchao's int8 weight-only linear was 2.2x slower than fp32 in eager mode and
4.3x slower compiled (after a 70 s compile) on this CPU.

``linear_lowp`` takes at most ``MAX_ROWS`` activation rows; longer inputs (a prefill) are multiplied by the widened
weight with torch's matrix multiply instead (``lowp.py`` decides). ``load_kernel()`` returns ``None`` when the
kernel cannot be built or safely loaded here (the reason is kept in ``build_error()``).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, Optional

import torch

from . import native


SOURCE = Path(__file__).resolve().parent / "csrc" / "linear_cpu.cpp"
MAX_ROWS = 8  # activation rows per kernel call (kMaxRows in the source)
_WEIGHT_CODES = {torch.bfloat16: 1, torch.int8: 2}


def _build() -> Callable[..., int]:
    lib = native.build_library(SOURCE, "linear_cpu", "low-precision linear kernel")
    fn = lib.mvg_linear_lowp
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32]
    fn.argtypes += [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32]
    return fn


KERNEL = native.LazyKernel(_build, "compiled low-precision linear kernel unavailable")


def load_kernel() -> Optional[Callable[..., int]]:
    """Build (first call only, ~2 s) and load the kernel; ``None`` if that is impossible or unsafe here."""
    return KERNEL.load()


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return KERNEL.error


def linear_lowp(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x (..., K) fp32 with at most MAX_ROWS rows; weight (N, K) bf16, or int8 with ``scale`` (N,) fp32 (the row's
    value is weight · scale); bias (N,) fp32 or None → (..., N) fp32 = x · (weight · scale)ᵀ + bias."""
    fn = load_kernel()
    if fn is None:
        raise RuntimeError(f"the compiled low-precision linear kernel is unavailable: {build_error()}")
    n, k = weight.shape
    if weight.dtype not in _WEIGHT_CODES or not weight.is_contiguous() or weight.device.type != "cpu":
        raise ValueError(f"weight must be a contiguous CPU bf16 or int8 (N, K) tensor, got {weight.dtype} {weight.shape}")
    if (weight.dtype == torch.int8) != (scale is not None):
        raise ValueError("int8 weights need a per-row fp32 scale, bf16 weights take none")
    if x.dtype != torch.float32 or x.shape[-1] != k:
        raise ValueError(f"x must be fp32 (..., {k}), got {x.dtype} {tuple(x.shape)}")
    rows = x.numel() // k if k else 0
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"the kernel takes 1 to {MAX_ROWS} rows, got {rows}")
    x2 = x.reshape(rows, k)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(rows, n, dtype=torch.float32)
    scale32 = None if scale is None else scale.detach().to(torch.float32).contiguous()
    bias32 = None if bias is None else bias.detach().to(torch.float32).contiguous()
    rc = fn(
        x2.data_ptr(), rows, k, x2.stride(0), weight.data_ptr(), _WEIGHT_CODES[weight.dtype],
        None if scale32 is None else scale32.data_ptr(), None if bias32 is None else bias32.data_ptr(),
        out.data_ptr(), n, n, torch.get_num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"compiled low-precision linear kernel failed with code {rc}")
    return out.reshape(*x.shape[:-1], n)
