"""Optional compiled CPU kernels for the Mamba mixer (forward only): the selective scan and the depthwise causal
conv1d (+ SiLU) in front of it.

The C++ source ``csrc/scan_cpu.cpp`` (shipped inside the package) is compiled on first use with the system C++
compiler into a plain shared library and called through ``ctypes``. It includes no torch header, so it builds in
about two seconds and does not depend on the torch ABI. Inputs are read in place at any strides as fp32 or bf16;
all arithmetic is fp32 and the outputs keep the input's dtype. Both kernels also run backwards in time
(``reverse``), which is how the backward direction of VideoMamba's bidirectional mixer avoids flipped copies.

Nothing is compiled at import time. ``load_kernel()`` returns ``None`` when the kernels cannot be built or safely
loaded (the reason is kept in ``build_error()``), and ``mobilevideogpt.model.scan`` then uses its pure-PyTorch path.

Where the library is built and why it can be trusted: see ``native``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from . import native
from .native import UnsafeCacheError, folder_problem, library_problem  # noqa: F401  (part of this module's API)


SOURCE = Path(__file__).resolve().parent / "csrc" / "scan_cpu.cpp"
_LIBRARY = "scan_cpu.so"
_WHAT = "Mamba mixer kernels"
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # element types the kernel reads and writes natively

_compiler = native.compiler


def build_recipe() -> tuple[str, list[str], bytes, str]:
    """(compiler, flags, source bytes, build folder name); raises RuntimeError if the kernel cannot be built here."""
    return native.build_recipe(SOURCE, "scan_cpu", _compiler())


def _compile(cxx: str, flags: list[str], source: bytes, build_dir: Path) -> None:
    native.compile_library(cxx, flags, source, build_dir, _LIBRARY, _WHAT)


class Kernels(NamedTuple):
    """The library's entry points (ctypes functions returning 0 on success)."""

    scan: Callable[..., int]
    conv: Callable[..., int]


def _build() -> Kernels:
    lib = native.build_and_load(build_recipe(), _LIBRARY, _WHAT, lambda *args: _compile(*args))
    scan = lib.mvg_selective_scan_fwd
    scan.restype = ctypes.c_int
    scan.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 5
    scan.argtypes += [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32), ctypes.c_int, ctypes.c_int]
    conv = lib.mvg_causal_conv1d_fwd
    conv.restype = ctypes.c_int
    conv.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_void_p] + [ctypes.c_int64] * 4
    conv.argtypes += [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32), ctypes.c_int]
    return Kernels(scan, conv)


KERNEL = native.LazyKernel(_build, "compiled CPU Mamba kernels unavailable, using PyTorch")


def load_kernel() -> Optional[Kernels]:
    """Build (first call only, ~2 s) and load the kernels; ``None`` if that is impossible or unsafe here."""
    return KERNEL.load()


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return KERNEL.error


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _native(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t as the kernel reads it, in place: fp32 and bf16 as they are (any strides), other dtypes converted to fp32."""
    if t is None:
        return None
    t = t.detach()
    return t if t.dtype in _DTYPE_CODES else t.to(torch.float32)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty (batch, D, L) tensor laid out as x: time-major memory when x is channel contiguous (a transposed
    Linear output, which the next Linear then reads without a copy), time contiguous otherwise."""
    batch, dim, seqlen = x.shape
    if x.stride(1) == 1 and dim > 1 and seqlen > 1:
        return torch.empty(batch, seqlen, dim, dtype=dtype).transpose(1, 2)
    return torch.empty(batch, dim, seqlen, dtype=dtype)


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
):
    """Selective scan with the compiled kernel: same arguments and results as ``scan.selective_scan``.

    Expects inputs already validated by ``scan.selective_scan`` (CPU tensors; u, delta, z: (batch, D, L);
    A: (D, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (D,)); u, delta, z, B and C may have any
    strides (e.g. transposed Linear outputs) and are not copied when fp32 or bf16. No autograd: outputs are
    detached. Returns out (batch, D, L) in u's dtype and u's layout (`_output_like`; written directly for fp32 and
    bf16), plus the fp32 last state (batch, D, N) if ``return_last_state``. With ``reverse`` the scan runs from the
    last step to the first (see ``scan.selective_scan``).
    """
    kernels = load_kernel()
    if kernels is None:
        raise RuntimeError(f"the compiled CPU selective scan is unavailable: {build_error()}")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u_, delta_, z_ = _native(u), _native(delta), _native(z)
    B_ = _native(B if B.dim() == 4 else B.unsqueeze(1))
    C_ = _native(C if C.dim() == 4 else C.unsqueeze(1))
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    out = _output_like(u, u.dtype if u.dtype in _DTYPE_CODES else torch.float32)
    last = torch.empty(batch, dim, dstate, dtype=torch.float32) if return_last_state else None
    if out.numel() > 0:
        strides = [*u_.stride(), *delta_.stride(), *(z_.stride() if z_ is not None else (0, 0, 0))]
        strides += [*B_.stride(), *C_.stride(), *out.stride()]
        dtypes = [_DTYPE_CODES[t.dtype] for t in (u_, delta_, z_ if z_ is not None else u_, B_, C_, out)]
        rc = kernels.scan(
            _ptr(u_), _ptr(delta_), _ptr(A32), _ptr(B_), _ptr(C_), _ptr(D32), _ptr(z_), _ptr(bias32),
            int(bool(delta_softplus)), _ptr(out), _ptr(last),
            batch, dim, dstate, B_.shape[1], seqlen, (ctypes.c_int64 * len(strides))(*strides),
            (ctypes.c_int32 * len(dtypes))(*dtypes), int(bool(reverse)), torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"compiled CPU selective scan failed with code {rc}")
    elif last is not None:
        last.zero_()
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def causal_conv1d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    silu: bool = False,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv1d (+ SiLU) with the compiled kernel: ``scan.causal_conv1d``'s results for inputs it
    has validated (x (batch, D, L) on the CPU at any strides; weight (D, W)). No autograd. Returns (batch, D, L) in
    x's dtype and x's layout (`_output_like`); sums in fp32. With ``reverse`` the conv is anti-causal (out[t] reads
    x[t .. t + W - 1]), the causal conv of the time-reversed sequence, reversed back."""
    kernels = load_kernel()
    if kernels is None:
        raise RuntimeError(f"the compiled CPU causal conv1d is unavailable: {build_error()}")
    batch, dim, seqlen = x.shape
    x_ = _native(x)
    w32, bias32 = _f32(weight), _f32(bias)
    out = _output_like(x, x_.dtype)
    if out.numel() > 0:
        strides = [*x_.stride(), *out.stride()]
        dtypes = [_DTYPE_CODES[x_.dtype], _DTYPE_CODES[out.dtype]]
        rc = kernels.conv(
            _ptr(x_), _ptr(w32), _ptr(bias32), int(bool(silu)), int(bool(reverse)), _ptr(out),
            batch, dim, seqlen, w32.shape[1], (ctypes.c_int64 * len(strides))(*strides),
            (ctypes.c_int32 * len(dtypes))(*dtypes), torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"compiled CPU causal conv1d failed with code {rc}")
    return out.to(x.dtype)
