"""Compiled causal attention for CPU prefills (fp32, forward only): flash attention with grouped-query heads packed.

``csrc/attention_cpu.cpp``, built and verified by ``native`` like the other kernels, computes softmax(q kᵀ · scale)
v over keys up to each query's position, for queries and keys at the same positions (a prompt's first prefill), and
writes the (batch, positions, heads, head_dim) layout the attention's output projection reads, so no transposed copy
is made. ``load_kernel()`` returns ``None`` where the library cannot be built or safely loaded here (the reason is in
``build_error()``); callers then use torch's scaled_dot_product_attention.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, Optional

import torch

from . import native

SOURCE = Path(__file__).resolve().parent / "csrc" / "attention_cpu.cpp"


def _build() -> Callable[..., int]:
    lib = native.build_library(SOURCE, "attention_cpu", "causal attention kernel")
    fn = lib.mvg_causal_attention_fwd
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.POINTER(ctypes.c_int64)] * 3
    fn.argtypes += [ctypes.c_float, ctypes.c_int]
    return fn


KERNEL = native.LazyKernel(_build, "compiled causal attention kernel unavailable, using torch's SDPA")


def load_kernel() -> Optional[Callable[..., int]]:
    """Build (first call only, ~2 s) and load the kernel; ``None`` if that is impossible or unsafe here."""
    return KERNEL.load()


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return KERNEL.error


def takes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernel computes this causal self-attention: fp32 CPU (batch, heads, positions, head_dim) tensors,
    unit stride along head_dim, as many positions in the keys as in the queries, whole groups of query heads."""
    tensors = (query, key, value)
    return (
        all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 4 and t.stride(3) == 1 for t in tensors)
        and key.shape == value.shape
        and query.shape[0] == key.shape[0]
        and query.shape[2:] == key.shape[2:]
        and query.shape[1] % key.shape[1] == 0
    )


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """query (B, Hq, T, D), key and value (B, Hkv, T, D), Hq a multiple of Hkv (query head h reads key/value head
    h // (Hq / Hkv)) → (B, T, Hq, D) fp32: each position attends to the keys at and before it."""
    fn = load_kernel()
    if fn is None:
        raise RuntimeError(f"the compiled causal attention kernel is unavailable: {build_error()}")
    if not takes(query, key, value):
        raise ValueError(
            f"the kernel takes fp32 CPU (B, H, T, D) tensors with unit stride along D and Hq a multiple of Hkv, got "
            f"{tuple(query.shape)} / {tuple(key.shape)} / {tuple(value.shape)}"
        )
    batch, heads, positions, dim = query.shape
    out = torch.empty(batch, positions, heads, dim, dtype=torch.float32)

    def strides(t: torch.Tensor):
        return (ctypes.c_int64 * 3)(*t.stride()[:3])

    rc = fn(query.data_ptr(), key.data_ptr(), value.data_ptr(), out.data_ptr(), batch, heads, key.shape[1], positions,
            dim, strides(query), strides(key), strides(value), float(scale), torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"compiled causal attention kernel failed with code {rc}")
    return out
