"""Frozen vision towers stay in eval mode.

The HF Trainer calls `model.train()` every step, which would switch on VideoMamba's stochastic depth
(drop-path up to 0.25) inside a tower whose weights are frozen (upstream `videomamba/config.py`: drop_path_rate 0.25; the HF Trainer calls `model.train()` on every submodule). A tower whose
parameters all have `requires_grad=False` ignores `train(True)`.
"""

from __future__ import annotations

import torch.nn as nn


class FrozenAwareModule(nn.Module):
    def is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> "FrozenAwareModule":
        return super().train(mode and not self.is_frozen())
