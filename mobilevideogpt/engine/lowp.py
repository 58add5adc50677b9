"""The language model's weights kept in bf16 or int8 on the CPU, computed with in fp32 (inference only).

`pack_language_model` replaces every linear layer of the LLM (attention and MLP projections, the LM head) and the
token embedding with modules that store the weight in low precision and widen it when it is used:

- bf16: exact for checkpoints published in bf16 (Qwen2.5 and Mobile-VideoGPT are), half the memory of fp32; a
  weight that already is bf16 is kept as it is (no copy).
- int8: symmetric per-output-row quantization (scale = max |row| / 127), a quarter of the memory of fp32; weight
  error ≤ scale / 2 per element. Opt-in (`--quantize int8`): it changes the model's numbers.

Forward of `LowPrecisionLinear`, chosen by the number of activation rows:
- up to `linear_cpu.MAX_ROWS` (a decode step, a draft's verification): the compiled kernel reads the stored weight
  directly, fp32 activations and arithmetic — half (bf16) or a quarter (int8) of fp32's memory traffic, which sets
  decode speed;
- more rows (a prefill): the weight is widened to `matmul_dtype` (fp32, or bf16 on CPUs with bf16 matrix units)
  for torch's matrix multiply; widening one layer at a time costs a few percent of a 2.4 k-token prefill. With
  `int8_prefill` (int8 weights, `--quantize w8a8`) the prefill multiplies int8 activations by the same int8 weights
  instead (`int8_matmul.py`: faster where the CPU has no bf16 units, one more rounding per activation).

Each gated MLP becomes a `PrefillMLP`, which runs a prefill's silu(gate) * up as one compiled pass (and with int8 x
int8 prefills multiplies by gate and up together).

Everything outside the LLM's linear layers and embedding (norms, biases, rotary tables, the vision towers and
projectors) keeps its dtype. Hidden states stay fp32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.activations import SiLUActivation

from . import int8_matmul, linear_cpu, rows_cpu
from .int8_matmul import quantize_rows

WeightFormat = Literal["bf16", "int8"]
WEIGHT_FORMATS: tuple[str, ...] = ("bf16", "int8")
# Up to this many rows (a decode step, a draft's verification) the kernel multiplies them in one pass over the stored
# weight; longer inputs (a prefill, a follow-up question) widen the weight for torch's matmul in the prefill's dtype.
KERNEL_ROWS = linear_cpu.MAX_ROWS


def _store(weight: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, torch.Tensor | None]:
    if fmt == "bf16":
        return weight.detach().to(torch.bfloat16).contiguous(), None
    if fmt == "int8":
        return quantize_rows(weight)
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")


def widen(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The stored weight as a `dtype` tensor (int8 rows times their scale)."""
    if scale is None:
        return weight.to(dtype)
    return (weight.to(torch.float32) * scale[:, None]).to(dtype)


class LowPrecisionLinear(nn.Module):
    """A bias-optional linear layer whose weight is stored in bf16 or int8 (see the module docstring)."""

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        matmul_dtype: torch.dtype = torch.float32,
        int8_prefill: bool = False,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.matmul_dtype = matmul_dtype
        if int8_prefill and scale is None:
            raise ValueError("int8 x int8 prefills need int8 weights")
        self.packed = int8_matmul.pack_rows(weight, scale) if int8_prefill else None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, fmt: WeightFormat, matmul_dtype: torch.dtype, int8_prefill: bool = False
    ) -> LowPrecisionLinear:
        weight, scale = _store(linear.weight, fmt)
        return cls(weight, scale, linear.bias, matmul_dtype, int8_prefill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows <= KERNEL_ROWS and x.dtype == torch.float32 and linear_cpu.load_kernel() is not None:
            return linear_cpu.linear_lowp(x, self.weight, self.scale, self.bias)
        if self.packed is not None:
            return int8_matmul.linear(x, self.packed, self.out_features, self.bias).to(x.dtype)
        return self.product(x).to(x.dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """A prefill's x · Wᵀ + b by torch's matrix multiply, in `matmul_dtype` (x converted to it unless it is)."""
        dtype = self.matmul_dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), widen(self.weight, self.scale, dtype), bias)

    def extra_repr(self) -> str:
        fmt = "int8" if self.scale is not None else str(self.weight.dtype).removeprefix("torch.")
        matmul = "int8" if self.packed is not None else str(self.matmul_dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={fmt}, matmul={matmul}"


class PrefillMLP(nn.Module):
    """A gated SiLU MLP, down(silu(gate(x)) * up(x)), of `LowPrecisionLinear`s, with its prefill's element-wise work
    compiled (`rows_cpu`): silu(gate) * up in one pass instead of three over (prompt x intermediate) matrices.

    With int8 x int8 prefills (all three projections packed), gate and up are one product (one normalisation of the
    input, one fbgemm call) and silu(gate) * up is fused with the normalisation of down's input
    (`int8_matmul.silu_mul_normalized`). All prompt rows go in one call: fbgemm runs fastest on tall inputs (measured
    on 2 cores of an AVX2 EPYC at 2500 rows, a full-size MLP took 286 ms in one block, 302-328 ms in blocks of
    1024-256 rows). Decode steps use the projections as they are. The same numbers as the unfused layers up to silu's
    rounding."""

    def __init__(
        self, gate_proj: LowPrecisionLinear, up_proj: LowPrecisionLinear, down_proj: LowPrecisionLinear
    ) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.gate_up = None
        int8 = gate_proj.packed is not None and up_proj.packed is not None and down_proj.packed is not None
        if int8 and gate_proj.bias is None and up_proj.bias is None:
            rows = torch.cat([gate_proj.weight, up_proj.weight]), torch.cat([gate_proj.scale, up_proj.scale])
            self.gate_up = int8_matmul.pack_rows(*rows)
            gate_proj.packed = up_proj.packed = None  # their rows live in `gate_up` now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= KERNEL_ROWS:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        width = self.gate_proj.out_features
        if self.gate_up is None:
            return self._widened(x.reshape(rows, x.shape[-1])).reshape(*x.shape[:-1], -1).to(x.dtype)
        gate_up = int8_matmul.linear(x.reshape(rows, x.shape[-1]), self.gate_up, 2 * width, None)
        act = int8_matmul.silu_mul_normalized(gate_up[:, :width], gate_up[:, width:])
        out = int8_matmul.product(*act, self.down_proj.packed, self.down_proj.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)

    def _widened(self, x: torch.Tensor) -> torch.Tensor:
        """A prefill of weights widened for torch's matrix multiply, x (rows, hidden) → down's output in the products'
        dtype. Where they run in bf16 it stays bf16 from gate and up to down: no fp32 copies of (rows x 4864)
        products (a profile of a full-size bf16 prefill on 2 cores of a Xeon with AMX put them at ~1 s of 4.4)."""
        x = x.to(self.gate_proj.matmul_dtype)
        gate, up = self.gate_proj.product(x), self.up_proj.product(x)
        if rows_cpu.available(gate, up):
            act = rows_cpu.silu_mul(gate, up, normalize=False)[0]
        elif gate.dtype == up.dtype == torch.bfloat16 and rows_cpu.load_kernel() is not None:
            act = rows_cpu.silu_mul_bf16_(gate, up)  # rounded once, not after silu and again after the product
        else:
            act = F.silu(gate, inplace=True).mul_(up)
        return self.down_proj.product(act)


def is_gated_silu_mlp(module: nn.Module) -> bool:
    """A transformers Llama/Qwen2-style MLP: `gate_proj`, `up_proj`, `down_proj`, SiLU `act_fn`."""
    projections = all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj"))
    return projections and isinstance(getattr(module, "act_fn", None), (nn.SiLU, SiLUActivation))


class LowPrecisionEmbedding(nn.Module):
    """Token embedding stored like `LowPrecisionLinear` (and shared with a tied LM head); looks up fp32 rows."""

    output_dtype = torch.float32

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight).to(torch.float32)
        return rows if self.scale is None else rows * self.scale[ids, None]


def pack_language_model(
    model: nn.Module, fmt: WeightFormat, matmul_dtype: torch.dtype = torch.float32, int8_prefill: bool = False
) -> nn.Module:
    """Store the LLM weights of a `MobileVideoGPTQwenForCausalLM` (or any transformers causal LM with `.model.layers`,
    `.model.embed_tokens` and `.lm_head`) in `fmt`, in place; returns the model. A tied LM head shares the
    embedding's stored weight. Each fp32 weight is released as soon as its replacement exists, so packing never
    holds two full copies. `int8_prefill` (fmt "int8" only) also packs the decoder layers' weights for int8 x int8
    prefills; the LM head, which a prefill runs on its last position only, is not."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")
    decoder = model.model
    for layer in decoder.layers:
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LowPrecisionLinear.from_linear(child, fmt, matmul_dtype, int8_prefill))
        if is_gated_silu_mlp(layer.mlp):
            layer.mlp = PrefillMLP(layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
    embedding = decoder.embed_tokens
    tied = model.lm_head.weight is embedding.weight
    weight, scale = _store(embedding.weight, fmt)
    decoder.embed_tokens = LowPrecisionEmbedding(weight, scale)
    head = model.lm_head
    if tied:
        model.lm_head = LowPrecisionLinear(weight, scale, head.bias, matmul_dtype)
    else:
        model.lm_head = LowPrecisionLinear.from_linear(head, fmt, matmul_dtype)
    return model
