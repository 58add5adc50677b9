"""Compiled row-wise passes of the CPU's int8 x int8 prefills (``int8_matmul.py``): per-row normalisation of the
activations, the row scale (+ bias) on the product, the gated MLP's silu(gate) * up fused with the normalisation of
its result, and CLIP's quick_gelu fused with the scale before it and the normalisation after it. For bf16 / fp32
inference: RMSNorm with the residual add before it (`rms_norm`), and on bf16 CLIP's quick_gelu (`quick_gelu_bf16_`)
and the gated MLP's silu(gate) * up (`silu_mul_bf16_`).

``csrc/rows_cpu.cpp``, built and verified by ``native`` like the other kernels, computes exactly what the PyTorch
expressions in ``int8_matmul.py`` and transformers' activations compute (the same divisions, products and sums; the
exponential of silu and quick_gelu within ~1 ulp), in one or two passes over each row instead of up to five.
``load_kernel()`` returns ``None`` where the library cannot be built or safely loaded here (the reason is in
``build_error()``); the callers then use those PyTorch expressions.
All tensors are on the CPU with unit stride along a row; fp32 unless a function says otherwise.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from . import native

SOURCE = Path(__file__).resolve().parent / "csrc" / "rows_cpu.cpp"

_i64, _ptr_t, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


class Kernels(NamedTuple):
    """The library's entry points (ctypes functions returning 0 on success)."""

    normalize: Callable[..., int]
    silu_mul: Callable[..., int]
    scale_add: Callable[..., int]
    quick_gelu: Callable[..., int]
    rms_norm: Callable[..., int]
    quick_gelu_bf16: Callable[..., int]
    silu_mul_bf16: Callable[..., int]


def _function(lib: ctypes.CDLL, name: str, argtypes: list) -> Callable[..., int]:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = ctypes.c_int, argtypes
    return fn


def _build() -> Kernels:
    lib = native.build_library(SOURCE, "rows_cpu", "row kernels")
    return Kernels(
        _function(lib, "mvg_rows_normalize", [_ptr_t, _i64, _i64, _i64, _ptr_t, _i64, _ptr_t, _int]),
        _function(lib, "mvg_silu_mul", [_ptr_t, _i64, _ptr_t, _i64, _i64, _i64, _ptr_t, _i64, _ptr_t, _int]),
        _function(lib, "mvg_rows_scale_add", [_ptr_t, _i64, _i64, _i64, _ptr_t, _ptr_t, _int]),
        _function(lib, "mvg_quick_gelu", [_ptr_t, _i64, _i64, _i64, _ptr_t, _ptr_t, _ptr_t, _int]),
        _function(lib, "mvg_rms_norm", [_ptr_t, _int, _i64, _ptr_t, _ptr_t, _ptr_t, ctypes.c_float, _i64, _i64, _ptr_t,
                                        _int, _int]),
        _function(lib, "mvg_quick_gelu_bf16", [_ptr_t, _i64, _i64, _i64, _int]),
        _function(lib, "mvg_silu_mul_bf16", [_ptr_t, _i64, _ptr_t, _i64, _i64, _i64, _ptr_t, _i64, _int]),
    )


KERNEL = native.LazyKernel(_build, "compiled row kernels unavailable, using PyTorch")


def load_kernel() -> Optional[Kernels]:
    """Build (first call only, ~2 s) and load the kernels; ``None`` if that is impossible or unsafe here."""
    return KERNEL.load()


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return KERNEL.error


def takes(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can read these (rows, k) matrices in place: fp32 CPU, unit stride along a row."""
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and t.stride(1) == 1 for t in tensors
    )


def available(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run here and can read these matrices (`takes`): where callers pick them over torch."""
    return takes(*tensors) and load_kernel() is not None


def _kernels() -> Kernels:
    kernels = load_kernel()
    if kernels is None:
        raise RuntimeError(f"the compiled row kernels are unavailable: {build_error()}")
    return kernels


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"compiled {what} kernel failed with code {rc}")


def normalize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, k) → (x / m, m) with m (rows, 1) = the largest |x| of each row, at least float32's tiny."""
    if not takes(x):
        raise ValueError(f"x must be an fp32 CPU matrix with unit stride along its rows, got {x.dtype} {tuple(x.stride())}")
    rows, k = x.shape
    out = torch.empty(rows, k, dtype=torch.float32)
    row_max = torch.empty(rows, 1, dtype=torch.float32)
    rc = _kernels().normalize(x.data_ptr(), rows, k, x.stride(0), out.data_ptr(), k, row_max.data_ptr(),
                              torch.get_num_threads())  # fmt: skip
    _check(rc, "row normalisation")
    return out, row_max


def silu_mul(gate: torch.Tensor, up: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """gate, up (rows, k) → silu(gate) * up, and with `normalize` that product divided by its rows' largest |value|
    together with those (rows, 1) maxima (as `normalize_rows` of the product); else (product, None)."""
    if not takes(gate, up) or gate.shape != up.shape:
        raise ValueError(f"gate and up must be fp32 CPU matrices of one shape, got {tuple(gate.shape)}, {tuple(up.shape)}")
    rows, k = gate.shape
    out = torch.empty(rows, k, dtype=torch.float32)
    row_max = torch.empty(rows, 1, dtype=torch.float32) if normalize else None
    rc = _kernels().silu_mul(gate.data_ptr(), gate.stride(0), up.data_ptr(), up.stride(0), rows, k, out.data_ptr(), k,
                             None if row_max is None else row_max.data_ptr(), torch.get_num_threads())  # fmt: skip
    _check(rc, "silu(gate) * up")
    return out, row_max


def _check_scale(y: torch.Tensor, row_max: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if not takes(y):
        raise ValueError(f"y must be an fp32 CPU matrix with unit stride along its rows, got {y.dtype} {tuple(y.stride())}")
    if row_max is not None and (
        row_max.dtype != torch.float32 or not row_max.is_contiguous() or row_max.numel() != y.shape[0]
    ):
        raise ValueError(f"y {tuple(y.shape)} / row_max {row_max.dtype} {tuple(row_max.shape)} do not fit the kernel")
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous() or bias.numel() != y.shape[1]):
        raise ValueError(f"bias must be fp32 contiguous ({y.shape[1]},), got {bias.dtype} {tuple(bias.shape)}")


def scale_rows_(y: torch.Tensor, row_max: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """In place: y (rows, n) = y * row_max (rows, 1), plus bias (n,) if given (fp32, contiguous); returns y."""
    _check_scale(y, row_max, bias)
    rc = _kernels().scale_add(y.data_ptr(), y.shape[0], y.shape[1], y.stride(0), row_max.data_ptr(),
                              None if bias is None else bias.data_ptr(), torch.get_num_threads())  # fmt: skip
    _check(rc, "row scale")
    return y


def quick_gelu_(
    y: torch.Tensor, row_max: torch.Tensor | None = None, bias: torch.Tensor | None = None, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """In place: y (rows, n) = quick_gelu(y * row_max + bias) (`scale_rows_`'s scale first when row_max is given;
    quick_gelu(v) = v * sigmoid(1.702 v)); with `normalize` each row is then divided by its largest |value| and those
    (rows, 1) maxima are returned beside y (as `normalize_rows`); else (y, None)."""
    _check_scale(y, row_max, bias)
    if bias is not None and row_max is None:
        raise ValueError("quick_gelu_ adds a bias only together with a row scale")
    rows, n = y.shape
    out_max = torch.empty(rows, 1, dtype=torch.float32) if normalize else None
    rc = _kernels().quick_gelu(y.data_ptr(), rows, n, y.stride(0), None if row_max is None else row_max.data_ptr(),
                               None if bias is None else bias.data_ptr(),
                               None if out_max is None else out_max.data_ptr(), torch.get_num_threads())  # fmt: skip
    _check(rc, "quick_gelu")
    return y, out_max


ROW_DTYPES = (torch.float32, torch.bfloat16)


def takes_rows(x: torch.Tensor) -> bool:
    """Whether `rms_norm` and (bf16) `quick_gelu_bf16_` can read `x` in place: an fp32 or bf16 CPU tensor whose rows
    (its last dimension) have unit stride and follow each other at one stride."""
    if x.dtype not in ROW_DTYPES or x.device.type != "cpu" or x.dim() < 1 or x.shape[-1] < 1 or x.stride(-1) != 1:
        return False
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return rows.data_ptr() == x.data_ptr() and (rows.shape[0] <= 1 or rows.stride(0) >= x.shape[-1])


def stands_in(*tensors: torch.Tensor) -> bool:
    """Whether the bf16 / fp32 passes can replace torch's ops on these tensors at inference: none of them takes part
    in autograd, `takes_rows` reads each, and the kernels run here."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(takes_rows(t) for t in tensors) and load_kernel() is not None


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])


def _row_stride(rows: torch.Tensor) -> int:
    """The distance between rows (a single row's stride may be anything: then its width)."""
    return rows.stride(0) if rows.shape[0] > 1 else rows.shape[1]


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    keep_sum: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm of v = x (+ residual), times `weight`, as VideoMamba's and Qwen2's RMSNorms compute it: v in fp32,
    v * (1 / sqrt(mean(v²) + eps)) * weight, returned in `out_dtype` (default: x's dtype). x (..., d) fp32 or bf16
    (`takes_rows`), residual fp32 of x's shape, weight (d,) of any float dtype (its values widened to fp32).
    Returns (normalised, v as a new fp32 tensor if `keep_sum`, else None)."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    d = x.shape[-1]
    if not takes_rows(x) or out_dtype not in ROW_DTYPES:
        raise ValueError(
            f"x must be an fp32 or bf16 CPU tensor with unit-stride rows, got {x.dtype} {tuple(x.stride())}"
        )
    if residual is not None and (
        residual.dtype != torch.float32 or residual.shape != x.shape or not residual.is_contiguous()
    ):
        raise ValueError(
            f"residual must be a contiguous fp32 tensor of x's shape {tuple(x.shape)}, got "
            f"{residual.dtype} {tuple(residual.shape)}"
        )
    if weight.shape != (d,):
        raise ValueError(f"weight must be ({d},), got {tuple(weight.shape)}")
    rows = _as_rows(x)
    w = weight.detach().to(torch.float32).contiguous()
    out = torch.empty(x.shape, dtype=out_dtype)
    total = torch.empty(x.shape, dtype=torch.float32) if keep_sum else None
    rc = _kernels().rms_norm(
        rows.data_ptr(), int(x.dtype == torch.bfloat16), _row_stride(rows),
        None if residual is None else residual.data_ptr(), None if total is None else total.data_ptr(),
        w.data_ptr(), float(eps), rows.shape[0], d, out.data_ptr(), int(out_dtype == torch.bfloat16),
        torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "RMSNorm")
    return out, total


def quick_gelu_bf16_(y: torch.Tensor) -> torch.Tensor:
    """In place: y = quick_gelu(y) = y * sigmoid(1.702 y) for a bf16 y (`takes_rows`), computed in fp32 and rounded
    to bf16 once (torch's three bf16 ops round after each); returns y."""
    if y.dtype != torch.bfloat16 or not takes_rows(y):
        raise ValueError(f"y must be a bf16 CPU tensor with unit-stride rows, got {y.dtype} {tuple(y.stride())}")
    rows = _as_rows(y)
    rc = _kernels().quick_gelu_bf16(
        rows.data_ptr(), rows.shape[0], rows.shape[1], _row_stride(rows), torch.get_num_threads()
    )
    _check(rc, "bf16 quick_gelu")
    return y


def silu_mul_bf16_(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """In place into gate: silu(gate) * up for bf16 (rows, k) matrices with unit-stride rows (they may be the two
    halves of one matrix), computed in fp32 and rounded to bf16 once (torch's silu_ and mul_ round after each);
    returns gate."""
    for t in (gate, up):
        if t.dtype != torch.bfloat16 or t.dim() != 2 or not takes_rows(t):
            raise ValueError(f"gate and up must be bf16 CPU matrices with unit-stride rows, got {t.dtype} "
                             f"{tuple(t.shape)} {tuple(t.stride())}")  # fmt: skip
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    rows, k = gate.shape
    rc = _kernels().silu_mul_bf16(
        gate.data_ptr(), _row_stride(gate), up.data_ptr(), _row_stride(up), rows, k, gate.data_ptr(),
        _row_stride(gate), torch.get_num_threads(),
    )  # fmt: skip
    _check(rc, "bf16 silu(gate) * up")
    return gate
