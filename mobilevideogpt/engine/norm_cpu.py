"""The language model's RMSNorms in one compiled pass at CPU inference (`rows_cpu.rms_norm`).

transformers' Qwen2RMSNorm runs five ops per call (widen, square, mean, rsqrt, two products), each into a new tensor:
a full-size prefill of 630 positions spent ~35 ms of its 0.68 s in them on 2 cores of a Xeon with AMX-bf16, and every
decode step runs 49 of them. `CompiledRMSNorm` is the same module (its `weight` and `variance_epsilon`) with a forward
that computes the same formula in one pass over fp32 hidden states; anything else (gradients, other dtypes, no
compiled kernel) runs the stock forward. The numbers are the stock ones up to the order of the mean's sum.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from . import rows_cpu


class CompiledRMSNorm(Qwen2RMSNorm):
    """A `Qwen2RMSNorm` whose inference forward on fp32 CPU hidden states is one compiled pass."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        fast = (
            hidden_states.dtype == self.weight.dtype == torch.float32 and self.weight.shape == hidden_states.shape[-1:]
            and rows_cpu.stands_in(hidden_states, self.weight)
        )  # fmt: skip
        if not fast:
            return super().forward(hidden_states)
        return rows_cpu.rms_norm(hidden_states, self.weight, self.variance_epsilon)[0]


def compile_rms_norms(root: nn.Module) -> int:
    """Turn every `Qwen2RMSNorm` under `root` into a `CompiledRMSNorm` in place; returns how many changed."""
    changed = 0
    for module in root.modules():
        if type(module) is Qwen2RMSNorm:
            module.__class__ = CompiledRMSNorm
            changed += 1
    return changed
