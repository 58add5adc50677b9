"""Mamba's selective scan and the depthwise causal conv1d, with the semantics of mamba_ssm's ``selective_scan_fn``
and causal_conv1d's ``causal_conv1d_fn``.

Shapes: u, delta, z: (batch, D, L); A: (D, N), real; B, C: (batch, N, L), or grouped (batch, G, N, L) where channel
d reads group d // (D / G); D (the skip weight), delta_bias: (D,). For every channel d and state n:

    delta_t = softplus(delta_t + delta_bias)          (bias and softplus optional)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   h_0 = 0
    y_t     = sum_n C_t[n] * h_t[n] + D * u_t,        out = y * silu(z) when z is given

All arithmetic runs in fp32 (fp64 if an input is fp64) whatever the input dtype; the output has u's dtype and the
optional last state (batch, D, N) stays fp32. ``reverse=True`` runs either function backwards in time (the scan from
the last step to the first, the conv anti-causal): the same as flipping the inputs along time and the output back,
which is the backward direction of VideoMamba's bidirectional mixer.

Implementations:
- ``selective_scan_ref`` / ``causal_conv1d_ref``: plain step-by-step loops, the tested references.
- ``selective_scan`` / ``causal_conv1d``: dispatch. CUDA tensors use the mamba_ssm / causal_conv1d kernels when those
  packages import (backwards in time through flipped copies); CPU tensors that need no gradient use the compiled
  kernels of ``scan_cpu`` when they build (they read fp32 and bf16 in place at any strides and run either direction,
  so a bf16 model pays no conversion and the mixer no copies; fp16 goes through fp32); everything else uses the
  pure-PyTorch fast path (autograd-capable, any device).
  ``MOBILEVIDEOGPT_SCAN_BACKEND`` = ``auto`` (default) | ``torch`` (pure PyTorch only) | ``cpp`` (the compiled CPU
  kernels, or an error saying why not).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from mobilevideogpt.engine import scan_cpu

logger = logging.getLogger(__name__)

BACKEND_ENV = "MOBILEVIDEOGPT_SCAN_BACKEND"
BACKENDS = ("auto", "torch", "cpp")

# Time steps per block of the pure-PyTorch scan. On CPU a block's (steps, D, N) buffers should stay in cache
# (32 x 1152 x 16 fp32 = 2.4 MB; 32 measured fastest among 8..128 at VideoMamba-M size, forward and backward);
# on GPU memory is not the limit, so bigger blocks mean fewer small kernel launches outside the step loop.
_BLOCK_CPU = 32
_BLOCK_GPU = 512
_LOG2E = 1.0 / math.log(2.0)

ScanResult = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def scan_backend() -> str:
    """The backend named by ``$MOBILEVIDEOGPT_SCAN_BACKEND`` (``auto`` when unset)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r} is not one of {', '.join(BACKENDS)}; unset it or pick one of them")
    return value


def _compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> tuple[int, int, int, int, int]:
    """Validate shapes/devices; returns (batch, dim, dstate, groups, seqlen)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (VideoMamba uses real A = -exp(A_log))")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (D, N) = ({dim}, N), got {tuple(A.shape)}")
    dstate = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and t.shape == (batch, dstate, seqlen):
            g = 1
        elif t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (dstate, seqlen):
            g = t.shape[1]
        else:
            raise ValueError(
                f"selective_scan: {name} must be input-dependent, (batch, N, L) = ({batch}, {dstate}, {seqlen}) or "
                f"grouped (batch, G, N, L); got {tuple(t.shape)} (input-independent (D, N) {name} is not supported)"
            )
        if g < 1 or dim % g != 0:
            raise ValueError(f"selective_scan: {name} has {g} groups, which does not divide D = {dim}")
        if groups is not None and g != groups:
            raise ValueError(f"selective_scan: B has {groups} groups but C has {g}; they must match")
        groups = g
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias)):
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    return batch, dim, dstate, groups, seqlen


def _prepare_delta(delta, delta_bias, delta_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y, u, D, z, dtype_out: torch.dtype) -> torch.Tensor:
    """out = (y + D * u) * silu(z), computed in y's dtype, returned in dtype_out."""
    if D is not None:
        y = torch.addcmul(y, u, D.to(y.dtype)[:, None])
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_out)


def selective_scan_ref(
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
) -> ScanResult:
    """Reference selective scan: one Python step per time step, as mamba_ssm's reference does it.

    Args/returns as in the module docstring: out (batch, D, L) in u's dtype, and the last state (batch, D, N) in
    the compute dtype if ``return_last_state``. Differentiable through plain autograd (slowly).
    """
    batch, dim, dstate, groups, seqlen = _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u_ = u.to(dtype)
    delta_ = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    # Per-channel B and C: (batch, D, N, L).
    if B.dim() == 3:
        B_, C_ = B.to(dtype).unsqueeze(1), C.to(dtype).unsqueeze(1)
    else:
        B_ = B.to(dtype).repeat_interleave(dim // groups, dim=1)
        C_ = C.to(dtype).repeat_interleave(dim // groups, dim=1)
    decay = torch.exp(delta_.unsqueeze(-1) * A.to(dtype).unsqueeze(1))  # (batch, D, L, N)
    drive = (delta_ * u_).unsqueeze(-1) * B_.transpose(2, 3)  # (batch, D, L, N)
    h = u_.new_zeros(batch, dim, dstate)
    ys = []
    # unbind: per-step views whose backward is one stack, not one full-size zero gradient per indexed step.
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C_.unbind(3)):
        h = decay_t * h + drive_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(batch, dim, 0)
    out = _finish(y, u_, D, z, u.dtype)
    return (out, h) if return_last_state else out


class _BlockedScan(torch.autograd.Function):
    """Core recurrence y_t = C_t . h_t, h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, in time blocks.

    Everything runs time-major: (L, b, G, K) tensors made by one 2-D transpose each (much faster than
    per-block strided copies). Inside a block of l steps the work is laid out as (l, b, G, N, D/G): the decays
    exp(delta A) and drives delta u B of the whole block come from two vectorised ops, the recurrence is one
    in-place fused multiply-add per step over a contiguous (b, G, N, D/G) slab, and the readout is one batched
    matmul. The block buffers are reused, so nothing (L, D, N)-sized is allocated. Backward recomputes each
    block's states from the state saved at its start and runs the adjoint recurrence
    g_{t-1} += exp(delta_t A) g_t in reverse.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, block: int):
        # u, delta: (b, D, L); A: (D, N); B, C: (b, G, N, L); one float dtype.
        batch, dim, seqlen = u.shape
        groups, dstate = B.shape[1], B.shape[2]
        per_group = dim // groups
        A_t = A.reshape(groups, per_group, dstate).transpose(1, 2).contiguous()  # (G, N, Dg)
        A2_t = A_t * _LOG2E
        delta_tm = _to_time_major(delta, groups)  # (L, b, G, Dg)
        drive_tm = _to_time_major(delta * u, groups)
        B_tm = _to_time_major(B, groups)  # (L, b, G, N)
        C_tm = _to_time_major(C, groups)
        y_tm = u.new_empty(seqlen, batch, groups, 1, per_group)
        starts = range(0, seqlen, block)
        start_states = u.new_zeros(len(starts) + 1, batch, groups, dstate, per_group)  # last entry: final h
        size = min(block, seqlen)
        decay = u.new_empty(size, batch, groups, dstate, per_group)
        states = u.new_empty(size, batch, groups, dstate, per_group)
        for k, s in enumerate(starts):
            e = min(s + block, seqlen)
            n = e - s
            _block_states(delta_tm[s:e], drive_tm[s:e], B_tm[s:e], A2_t, start_states[k], decay[:n], states[:n])
            torch.matmul(C_tm[s:e].unsqueeze(3), states[:n], out=y_tm[s:e])
            start_states[k + 1].copy_(states[n - 1])
        ctx.save_for_backward(u, delta, A_t, B_tm, C_tm, start_states)
        ctx.block = block
        last = start_states[-1].transpose(2, 3).reshape(batch, dim, dstate)
        return _from_time_major(y_tm.view(seqlen, batch, dim)), last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A_t, B_tm, C_tm, start_states = ctx.saved_tensors
        block = ctx.block
        batch, dim, seqlen = u.shape
        groups, dstate, per_group = A_t.shape
        A2_t = A_t * _LOG2E
        delta_tm = _to_time_major(delta, groups)  # (L, b, G, Dg)
        u_tm = _to_time_major(u, groups)
        drive_tm = _to_time_major(delta * u, groups)
        dy_tm = _to_time_major(dy, groups)
        # Adjoint flowing into the last step of the current block from the step after it.
        carry = dlast.reshape(batch, groups, per_group, dstate).transpose(2, 3).contiguous()
        du_tm = torch.empty_like(u_tm)
        ddelta_tm = torch.empty_like(u_tm)
        dA_t = torch.zeros_like(A_t)
        dB_tm = torch.empty_like(B_tm)
        dC_tm = torch.empty_like(C_tm)
        size = min(block, seqlen)
        decay = u.new_empty(size, batch, groups, dstate, per_group)
        states = u.new_empty(size + 1, batch, groups, dstate, per_group)  # states[0] = h before the block
        adj = u.new_empty(size, batch, groups, dstate, per_group)
        tmp = u.new_empty(size, batch, groups, dstate, per_group)
        for k in reversed(range(start_states.shape[0] - 1)):
            s = k * block
            e = min(s + block, seqlen)
            n = e - s
            states[0].copy_(start_states[k])
            _block_states(delta_tm[s:e], drive_tm[s:e], B_tm[s:e], A2_t, states[0], decay[:n], states[1 : n + 1])
            dy_blk = dy_tm[s:e].unsqueeze(3)  # (n, b, G, 1, Dg)
            delta_blk = delta_tm[s:e].unsqueeze(3)
            # Adjoint of h_t: g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
            g = adj[:n]
            torch.mul(C_tm[s:e].unsqueeze(4), dy_blk, out=g)
            g[n - 1].add_(carry)
            for t in range(n - 1, 0, -1):
                g[t - 1].addcmul_(decay[t], g[t])
            carry = decay[0] * g[0]
            # dC_t[n] = sum_d h_t[n, d] dy_t[d];  dB_t[n] = sum_d g_t[n, d] delta_t[d] u_t[d]. (einsum: matmul
            # against a (.., Dg, 1) column can hit a batched-GEMM path ten times slower.)
            dC_tm[s:e] = torch.einsum("lbgnd,lbgd->lbgn", states[1 : n + 1], dy_tm[s:e])
            dB_tm[s:e] = torch.einsum("lbgnd,lbgd->lbgn", g, drive_tm[s:e])
            # w = g_t * h_{t-1} * exp(delta_t A): the gradient w.r.t. (delta_t A).
            w = decay[:n].mul_(g).mul_(states[:n])
            dA_t += torch.mul(w, delta_blk, out=tmp[:n]).sum(dim=(0, 1))
            ddelta_blk = torch.mul(w, A_t, out=tmp[:n]).sum(dim=3)  # (n, b, G, Dg)
            gb = torch.matmul(B_tm[s:e].unsqueeze(3), g).squeeze(3)  # sum_n g_t[n, d] B_t[n]: (n, b, G, Dg)
            torch.mul(gb, delta_tm[s:e], out=du_tm[s:e])
            torch.addcmul(ddelta_blk, gb, u_tm[s:e], out=ddelta_tm[s:e])
        dA = dA_t.transpose(1, 2).reshape(dim, dstate)
        return (
            _from_time_major(du_tm.view(seqlen, batch, dim)),
            _from_time_major(ddelta_tm.view(seqlen, batch, dim)),
            dA,
            _from_time_major(dB_tm.view(seqlen, batch, groups, dstate)),
            _from_time_major(dC_tm.view(seqlen, batch, groups, dstate)),
            None,
        )


def _to_time_major(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, ..., L) -> contiguous (L, b, G, K), K = prod(...) / G, via one 2-D transpose."""
    seqlen = x.shape[-1]
    per_group = math.prod(x.shape[1:-1]) // groups
    return x.reshape(-1, seqlen).t().contiguous().view(seqlen, x.shape[0], groups, per_group)


def _from_time_major(x: torch.Tensor) -> torch.Tensor:
    """(L, *rest) -> contiguous (*rest, L), via one 2-D transpose."""
    seqlen, rest = x.shape[0], x.shape[1:]
    return x.reshape(seqlen, -1).t().contiguous().view(*rest, seqlen)


def _block_states(delta_blk, drive_blk, B_blk, A2_t, h0, decay, states) -> None:
    """For one block given time-major (n, b, G, Dg) delta and delta*u, (n, b, G, N) B, A2_t = A log2(e) as
    (G, N, Dg) and the (b, G, N, Dg) state before it: fill decay[t] = exp(delta_t A) and states[t] = h_t, both
    (n, b, G, N, Dg)."""
    torch.mul(delta_blk.unsqueeze(3), A2_t, out=decay)
    decay.exp2_()  # torch's exp2 is ~3x faster than its exp on CPU, and this is the biggest op of the scan
    torch.mul(B_blk.unsqueeze(4), drive_blk.unsqueeze(3), out=states)
    steps_h = states.unbind(0)
    steps_a = decay.unbind(0)
    steps_h[0].addcmul_(steps_a[0], h0)
    for t in range(1, len(steps_h)):
        steps_h[t].addcmul_(steps_a[t], steps_h[t - 1])


def selective_scan_torch(
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
) -> ScanResult:
    """The pure-PyTorch fast path (any device, autograd-capable); arguments and results as ``selective_scan``."""
    batch, dim, dstate, groups, seqlen = _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u_ = u.to(dtype)
    if seqlen == 0 or batch == 0:
        out = _finish(u_.new_zeros(batch, dim, seqlen), u_, D, z, u.dtype)
        return (out, u_.new_zeros(batch, dim, dstate)) if return_last_state else out
    delta_ = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    B4 = (B if B.dim() == 4 else B.unsqueeze(1)).to(dtype)
    C4 = (C if C.dim() == 4 else C.unsqueeze(1)).to(dtype)
    block = _BLOCK_CPU if u.device.type == "cpu" else _BLOCK_GPU
    y, last = _BlockedScan.apply(u_, delta_, A.to(dtype), B4, C4, block)
    out = _finish(y, u_, D, z, u.dtype)
    return (out, last) if return_last_state else out


@functools.lru_cache(maxsize=None)
def _cuda_kernel(package: str) -> Optional[Callable]:
    """mamba_ssm's selective_scan_fn or causal_conv1d's causal_conv1d_fn, or None if the package does not import."""
    # The compiled extension is imported explicitly too: a CPU-only install of these sdists can import the Python
    # package yet lack it (importing mamba_ssm's ops then fails with "No module named 'selective_scan_cuda'").
    try:
        if package == "mamba_ssm":
            import selective_scan_cuda  # noqa: F401
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            return selective_scan_fn
        import causal_conv1d_cuda  # noqa: F401
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn
    except Exception as exc:  # not installed, or built against another torch/CUDA: use PyTorch
        logger.info("%s kernels unavailable, using PyTorch: %s", package, exc)
        return None


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def scan_route(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
) -> str:
    """Which implementation ``selective_scan`` runs for these inputs: "mamba_ssm" (the CUDA kernel), "cpp" (the
    compiled CPU kernel) or "torch" (the pure-PyTorch fast path). Raises what ``selective_scan`` raises when
    ``$MOBILEVIDEOGPT_SCAN_BACKEND`` = cpp cannot run them."""
    backend = scan_backend()
    if (
        backend == "auto"
        and u.is_cuda
        and u.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and A.shape[1] <= 256
        and _cuda_kernel("mamba_ssm") is not None
    ):
        return "mamba_ssm"
    return "cpp" if _compiled_cpu_runs(backend, u, delta, A, B, C, D, z, delta_bias) else "torch"


def _compiled_cpu_runs(backend: str, x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Whether the compiled CPU kernels take these tensors under `backend`; under ``cpp`` an error saying why
    they cannot."""
    tensors = (x, *others)
    if backend == "cpp":
        if x.device.type != "cpu":
            raise RuntimeError(f"{BACKEND_ENV}=cpp runs CPU tensors only, got {x.device}; use auto or torch")
        if _compute_dtype(*tensors) != torch.float32:
            raise RuntimeError(f"{BACKEND_ENV}=cpp computes in fp32 only; fp64 inputs need auto or torch")
        if _needs_grad(*tensors):
            raise RuntimeError(
                f"{BACKEND_ENV}=cpp is forward-only but a gradient is needed here; use auto or torch, "
                "or run under torch.no_grad()"
            )
        return True
    return (
        backend == "auto"
        and x.device.type == "cpu"
        and _compute_dtype(*tensors) == torch.float32
        and not _needs_grad(*tensors)
        and scan_cpu.load_kernel() is not None
    )


def _flip_time(*tensors: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
    """Each tensor reversed along its last (time) axis; None stays None."""
    return [None if t is None else t.flip(-1) for t in tensors]


def selective_scan(
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
) -> ScanResult:
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics (see the module docstring), on the fastest
    available backend; with ``reverse`` from the last time step to the first.

    Args:
        u, delta: (batch, D, L); A: (D, N) real; B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (D,);
        z: (batch, D, L) gate; delta_softplus: apply softplus to delta + delta_bias.
    Returns:
        out (batch, D, L) in u's dtype; with ``return_last_state`` also the fp32 state after the last step
        (batch, D, N). The pure-PyTorch path back-propagates through the last state too; mamba_ssm's kernel, like
        upstream, does not.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    route = scan_route(u, delta, A, B, C, D, z, delta_bias)
    if route == "cpp":
        return scan_cpu.selective_scan_cpu(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse=reverse
        )
    if reverse:
        u, delta, B, C, z = _flip_time(u, delta, B, C, z)
        result = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        return (result[0].flip(-1), result[1]) if return_last_state else result.flip(-1)
    if route == "mamba_ssm":
        # The CUDA kernel wants delta/B/C/z in u's dtype and A/D/delta_bias in fp32.
        dt = u.dtype
        return _cuda_kernel("mamba_ssm")(
            u, delta.to(dt), A.float(), B.to(dt), C.to(dt),
            D=None if D is None else D.float(),
            z=None if z is None else z.to(dt),
            delta_bias=None if delta_bias is None else delta_bias.float(),
            delta_softplus=delta_softplus,
            return_last_state=return_last_state,
        )
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _check_conv_inputs(x, weight, bias, activation) -> torch.Tensor:
    """Validate; returns the weight as (D, W)."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, D, L), got shape {tuple(x.shape)}")
    dim = x.shape[1]
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]  # nn.Conv1d's depthwise layout (D, 1, W)
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"causal_conv1d: weight must be (D, W) = ({dim}, W), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"causal_conv1d: bias must be ({dim},), got {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"causal_conv1d: {name} is on {t.device} but x is on {x.device}")
    return weight


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Reference depthwise causal conv: out[:, d, t] = bias[d] + sum_k weight[d, k] * x[:, d, t - (W - 1) + k],
    with x = 0 before the start; one explicit shifted product per tap. x: (batch, D, L); weight: (D, W) (or
    (D, 1, W)); bias: (D,); activation None or "silu"/"swish". Returns (batch, D, L) in x's dtype."""
    weight = _check_conv_inputs(x, weight, bias, activation)
    dtype = _compute_dtype(x, weight, bias)
    x_ = x.to(dtype)
    w = weight.to(dtype)
    seqlen, width = x.shape[2], w.shape[1]
    out = x_.new_zeros(x.shape)
    if bias is not None:
        out = out + bias.to(dtype)[:, None]
    for k in range(width):
        shift = width - 1 - k  # tap k reads the input `shift` steps back
        if shift < seqlen:
            out[..., shift:] = out[..., shift:] + w[:, k, None] * x_[..., : seqlen - shift]
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Pure-PyTorch depthwise causal conv (one grouped F.conv1d on the left-padded input, fp32 math)."""
    weight = _check_conv_inputs(x, weight, bias, activation)
    dtype = _compute_dtype(x, weight, bias)
    width = weight.shape[1]
    x_ = F.pad(x.to(dtype), (width - 1, 0))
    out = F.conv1d(x_, weight.to(dtype).unsqueeze(1), None if bias is None else bias.to(dtype), groups=x.shape[1])
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal conv1d with causal_conv1d's ``causal_conv1d_fn`` semantics.

    Args:
        x: (batch, D, L); weight: (D, W) (nn.Conv1d's (D, 1, W) also accepted); bias: (D,);
        activation: None, "silu" or "swish"; reverse: anti-causal instead (out[t] sees x[>= t] only: the causal
        conv of the time-reversed sequence, reversed back).
    Returns:
        (batch, D, L) in x's dtype: the conv over the left-zero-padded sequence, so out[t] sees x[<= t] only.
    """
    weight = _check_conv_inputs(x, weight, bias, activation)
    route = conv_route(x, weight, bias)
    if route == "cpp":
        return scan_cpu.causal_conv1d_cpu(x, weight, bias, silu=activation is not None, reverse=reverse)
    if reverse:
        return causal_conv1d(x.flip(-1), weight, bias, activation).flip(-1)
    if route == "causal_conv1d":
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        # Recent causal_conv1d builds require weight and bias in x's dtype.
        return _cuda_kernel("causal_conv1d")(
            x,
            weight.to(x.dtype).contiguous(),
            None if bias is None else bias.to(x.dtype).contiguous(),
            activation=activation,
        )
    return causal_conv1d_torch(x, weight, bias, activation)


def conv_route(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> str:
    """Which implementation ``causal_conv1d`` runs for x (batch, D, L) and a (D, W) weight: "causal_conv1d" (the
    CUDA kernel), "cpp" (the compiled CPU kernel) or "torch"; under ``$MOBILEVIDEOGPT_SCAN_BACKEND`` = cpp an error
    when the compiled kernel cannot run them."""
    backend = scan_backend()
    if (
        backend == "auto"
        and x.is_cuda
        and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and 2 <= weight.shape[-1] <= 4
        and _cuda_kernel("causal_conv1d") is not None
    ):
        return "causal_conv1d"
    return "cpp" if _compiled_cpu_runs(backend, x, weight, bias) else "torch"
