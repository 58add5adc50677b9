"""CLIP's encoder layers for CPU inference: one product for the query, key and value projections, and the MLP's
quick_gelu compiled (`rows_cpu.quick_gelu_`).

- `MergedQKVAttention`: q, k and v come from one (tokens x 3·768) product instead of three (tokens x 768) ones, which
  run slower per output on these thin shapes (16 frames, one layer, 2 cores of an AVX2 EPYC: 75 → 71 ms at fp32,
  57 → 52 ms int8 x int8). q_proj / k_proj / v_proj stay (what reads them, e.g. the [CLS] scores of a visual-token
  budget, still works); at fp32 their weights are views of the merged one, so no memory is added.
- `QuickGeluMLP`: transformers computes quick_gelu(v) = v * sigmoid(1.702 v) in three passes over (tokens x 3072)
  matrices, each into a new 39 MB tensor for 16 frames; here it is one pass in place (in bf16 too, rounded once:
  `rows_cpu.quick_gelu_bf16_`). With int8 x int8 layers
  (`--quantize w8a8`) that pass also scales fc1's product back per row, adds fc1's bias and normalises the rows for
  fc2's int8 product, which the unfused layers do in three more passes (one MLP: 156 → 145 ms on those cores).

The same numbers as the stock layers up to rounding: the merged product may sum in another order, and the
exponential is within ~1 ulp of torch's. Inference only: with gradients (or, for the MLP, on other dtypes or where
the kernels cannot be built) each runs the stock forward. `fuse_clip_layers` installs both; it runs before the
towers' linear layers become int8 x int8, so the merged projection is quantized like the others.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.activations import QuickGELUActivation
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPAttention, eager_attention_forward

from . import int8_matmul, rows_cpu
from .int8_matmul import Int8Linear


def _needs_grad(module: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


class MergedQKVAttention(CLIPAttention):
    """A `CLIPAttention` whose `qkv` projection computes the query, key and value together (see `merge_qkv`)."""

    qkv: nn.Module

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if _needs_grad(self, hidden_states):
            return super().forward(hidden_states, attention_mask, **kwargs)
        input_shape = hidden_states.shape[:-1]
        heads = (*input_shape, -1, self.head_dim)
        queries, keys, values = (
            part.reshape(heads).transpose(1, 2) for part in self.qkv(hidden_states).split(self.embed_dim, dim=-1)
        )
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, queries, keys, values, attention_mask, scaling=self.scale, dropout=0.0, **kwargs)
        return self.out_proj(out.reshape(*input_shape, -1).contiguous()), weights


def merge_qkv(attention: CLIPAttention) -> MergedQKVAttention:
    """Turn `attention` (nn.Linear projections) into a `MergedQKVAttention` in place and return it: `qkv` holds the
    concatenated weights and biases, and q_proj / k_proj / v_proj's weights become views of them."""
    projections = attention.q_proj, attention.k_proj, attention.v_proj
    weight = torch.cat([p.weight.detach() for p in projections])
    bias = torch.cat([p.bias.detach() for p in projections])
    qkv = nn.Linear(weight.shape[1], weight.shape[0], device="meta")  # no initialisation: its weights come next
    qkv.weight, qkv.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    for index, projection in enumerate(projections):
        rows = slice(index * attention.embed_dim, (index + 1) * attention.embed_dim)
        projection.weight = nn.Parameter(weight[rows], requires_grad=projection.weight.requires_grad)
        projection.bias = nn.Parameter(bias[rows], requires_grad=projection.bias.requires_grad)
    attention.__class__ = MergedQKVAttention  # the same module, its forward now reads `qkv`
    attention.qkv = qkv
    return attention


class QuickGeluMLP(nn.Module):
    """fc2(quick_gelu(fc1(x))) for fc1 / fc2 both `nn.Linear` or both `Int8Linear`, keeping their names."""

    def __init__(self, fc1: nn.Module, fc2: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2
        self.activation_fn = QuickGELUActivation()

    @property
    def int8(self) -> bool:
        return isinstance(self.fc1, Int8Linear) and isinstance(self.fc2, Int8Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        dtypes = {p.dtype for p in self.parameters()}
        bf16 = dtypes == {x.dtype} == {torch.bfloat16} and not self.int8
        if bf16 and not _needs_grad(self, x) and rows_cpu.load_kernel() is not None:
            out = self.fc2(rows_cpu.quick_gelu_bf16_(self.fc1(flat)))
            return out.reshape(*x.shape[:-1], out.shape[-1])
        if _needs_grad(self, x) or dtypes != {torch.float32} or not rows_cpu.available(flat):
            return self.fc2(self.activation_fn(self.fc1(x)))
        if self.int8:
            normalized, row_max = int8_matmul.normalize_rows(flat)
            hidden = int8_matmul.unscaled_product(normalized, self.fc1.packed)
            act = rows_cpu.quick_gelu_(hidden, row_max, self.fc1.bias, normalize=True)
            out = int8_matmul.product(*act, self.fc2.packed, self.fc2.bias)
        else:
            out = self.fc2(rows_cpu.quick_gelu_(self.fc1(flat))[0])
        return out.reshape(*x.shape[:-1], out.shape[-1])


def is_quick_gelu_mlp(module: nn.Module) -> bool:
    """A transformers CLIP-style MLP: `fc1`, `fc2` and a quick_gelu `activation_fn`."""
    return (
        not isinstance(module, QuickGeluMLP)
        and all(isinstance(getattr(module, name, None), nn.Linear) for name in ("fc1", "fc2"))
        and isinstance(getattr(module, "activation_fn", None), QuickGELUActivation)
    )


def fuse_clip_layers(root: nn.Module) -> int:
    """Merge the q/k/v projections of every `CLIPAttention` under `root` and replace every quick_gelu MLP by a
    `QuickGeluMLP`, in place; returns how many modules changed."""
    changed = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if is_quick_gelu_mlp(child):
                setattr(parent, name, QuickGeluMLP(child.fc1, child.fc2))
                changed += 1
            elif type(child) is CLIPAttention and all(
                isinstance(p, nn.Linear) for p in (child.q_proj, child.k_proj, child.v_proj)
            ):
                merge_qkv(child)
                changed += 1
    return changed
