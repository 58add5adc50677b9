"""Linear layers that multiply int8 activations by int8 weights on an x86 CPU (fbgemm), for prefills and encoders.

A prefill or an encoder multiplies thousands of activation rows by each weight, so it is bound by arithmetic, not by
memory: bf16 or int8 weights widened to fp32 (`lowp.py`) run at fp32's speed. On a CPU without bf16 matrix units
the only faster arithmetic is int8: fbgemm's dynamic-quantized linear multiplies uint8 activations by int8 weights
into int32 (AVX2 `vpmaddubsw`, or VNNI where the CPU has it). Measured on 2 cores of an AVX2-only AMD EPYC (Zen 3):
a Qwen2.5-0.5B prefill of 2432 tokens took 11.1-12.8 s against 15.6-20.6 s with the same int8 weights widened to
fp32, 1.4-1.6x faster; single matrix products at the prefill's and CLIP's shapes 1.1-2.0x.

Quantization, chosen for quality:
- weights: symmetric per output row (`quantize_rows`), the same int8 values the decode kernel reads;
- activations: per row (per token), dynamically: each row is divided by its largest magnitude before fbgemm
  quantizes the tensor (one range, now [-1, 1] for every row), and the product is multiplied back (these row
  passes are compiled, `rows_cpu.py`, where the library builds; a gated MLP fuses silu(gate) * up into the
  division). fbgemm alone quantizes the whole tensor with one range, so one large token (an attention sink) would
  coarsen every other row: on a (2500 x 896) input with one token 50x and one channel 30x the rest, the relative
  error of the product was 0.55 per tensor and 0.087 per token (what is left is the large channel's, inside each
  row).
- On CPUs without VNNI the activations use 7 bits (`reduce_range`): `vpmaddubsw` adds pairs of u8 x s8 products
  in int16 and would saturate with 8. With VNNI all 8 bits are used.

The error this adds is that of one int8 rounding per activation: opt-in (`--quantize w8a8`), measured by the
tests against fp32. The packed weights are in fbgemm's own layout: for the language model an int8 copy beside the
weights its decode kernel reads.
fbgemm's quantized-tensor API is deprecated in torch (still present in the pinned 2.13); `problem()` says when it is
missing or this CPU has no fbgemm engine.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn

from . import rows_cpu

_ENGINES = ("x86", "fbgemm")  # torch's quantized engines that run fbgemm's kernels
QUANTIZE_ROWS_PER_STEP = 4096  # bounds the fp32 temporaries of quantizing a large matrix (the embedding: ~15 MB)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → int8 (N, K) and fp32 scale (N,), symmetric per row: weight ≈ q · scale[:, None]."""
    weight = weight.detach()
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], QUANTIZE_ROWS_PER_STEP):
        rows = weight[start : start + QUANTIZE_ROWS_PER_STEP].float()
        step = rows.abs().amax(dim=1) / 127.0
        q[start : start + rows.shape[0]] = torch.round(rows / torch.where(step > 0, step, 1.0)[:, None]).clamp_(-127, 127)
        scale[start : start + rows.shape[0]] = step
    return q, scale


@functools.lru_cache(maxsize=1)
def problem() -> str | None:
    """Why int8 x int8 linear layers cannot run here, or None."""
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    if not any(engine in engines for engine in _ENGINES):
        return f"torch has no fbgemm engine on this CPU (quantized engines: {', '.join(engines) or 'none'})"
    try:  # a torch build without these ops raises AttributeError
        packed = pack_rows(torch.ones(2, 4, dtype=torch.int8), torch.ones(2))
        torch.ops.quantized.linear_dynamic(torch.ones(1, 4), packed, True)
    except (AttributeError, RuntimeError, NotImplementedError) as error:
        return f"fbgemm's int8 linear does not run here ({str(error).splitlines()[0]})"
    return None


@functools.lru_cache(maxsize=1)
def reduce_range() -> bool:
    """7-bit activations where the CPU lacks VNNI (see the module docstring)."""
    is_vnni = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (is_vnni is not None and is_vnni())


def pack_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.ScriptObject:
    """int8 (N, K) rows with fp32 scales (N,) (weight ≈ q · scale[:, None]) → fbgemm's packed weight."""
    scales = scale.double().clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero row has scale 0
    zero_points = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
        weight = torch._make_per_channel_quantized_tensor(q.contiguous(), scales, zero_points, 0)
        return torch.ops.quantized.linear_prepack(weight, None)


def normalize_rows(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """flat (rows, K) fp32 → (flat / m, m): each row divided by its largest magnitude m (rows, 1), at least float32's
    tiny, so that fbgemm's one range ([-1, 1]) fits every row."""
    if rows_cpu.available(flat):
        return rows_cpu.normalize_rows(flat)
    # max |x| per row as max(max x, -min x): two reads of x instead of writing |x| and reading it back
    row_max = torch.maximum(flat.amax(dim=1, keepdim=True), flat.amin(dim=1, keepdim=True).neg_())
    row_max.clamp_min_(torch.finfo(torch.float32).tiny)
    return flat / row_max, row_max


def silu_mul_normalized(gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gate, up (rows, K) fp32 → `normalize_rows(silu(gate) * up)`: a gated MLP's input of its down projection, in
    one pass where the compiled kernels run."""
    if rows_cpu.available(gate, up):
        return rows_cpu.silu_mul(gate, up, normalize=True)
    return normalize_rows(torch.nn.functional.silu(gate) * up)


def unscaled_product(normalized: torch.Tensor, packed: torch.ScriptObject) -> torch.Tensor:
    """(rows, K) rows from `normalize_rows` times the packed weight → (rows, N) fp32, not yet scaled back (`product`
    does that, or a fused kernel together with what follows)."""
    return torch.ops.quantized.linear_dynamic(normalized, packed, reduce_range())


def product(
    normalized: torch.Tensor, row_max: torch.Tensor, packed: torch.ScriptObject, bias: torch.Tensor | None
) -> torch.Tensor:
    """(rows, K) rows from `normalize_rows` times the packed weight → (rows, N) fp32, scaled back per row, + bias."""
    out = unscaled_product(normalized, packed)
    if rows_cpu.available(out):
        return rows_cpu.scale_rows_(out, row_max, bias)
    return out.mul_(row_max) if bias is None else torch.addcmul(bias, out, row_max)


def linear(x: torch.Tensor, packed: torch.ScriptObject, out_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) float → (..., N) fp32: x times the packed weight, activations quantized per row."""
    flat = x.reshape(-1, x.shape[-1]).float()
    return product(*normalize_rows(flat), packed, bias).reshape(*x.shape[:-1], out_features)


class Int8Linear(nn.Module):
    """An encoder's linear layer as int8 x int8 (inference only); returns the input's dtype."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.packed = pack_rows(q, scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        return cls(*quantize_rows(layer.weight), layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.out_features, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x int8"


def int8_linears(root: nn.Module, skip: frozenset[str] = frozenset()) -> int:
    """Replace, in place, every nn.Linear under `root` by an `Int8Linear`, except children named in `skip` (layers
    whose weight their parent reads itself); returns how many were replaced."""
    replaced = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name not in skip:
                setattr(parent, name, Int8Linear.from_linear(child))
                replaced += 1
    return replaced
