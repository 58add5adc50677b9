"""Mamba mixer with VideoMamba's bidirectional scan ("bimamba v2").

Forward direction: in_proj → causal depthwise conv + SiLU → x_proj → (dt, B, C) → selective scan gated by
SiLU(z). Backward direction: the same on the time-reversed sequence with the `_b` parameters (upstream flips xz and
the output; here the conv and the scan run backwards in time, `reverse=True`, which is the same and lets the CPU
kernels skip the flipped copies). The two gated outputs are summed before the single shared `out_proj`. Parameter
names and shapes match the VideoMamba fork of mamba_ssm, so upstream and Mobile-VideoGPT checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scan import causal_conv1d, selective_scan
from .zero import gathered


# Linear layers whose weight `Mamba._direction` multiplies by itself (F.linear on a transposed input, no bias): a
# replacement module (int8 inference) must leave them as they are.
WEIGHTS_READ_DIRECTLY = frozenset({"x_proj", "x_proj_b", "dt_proj", "dt_proj_b"})


class Mamba(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bimamba: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.bimamba = bimamba

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        directions = ("", "_b") if bimamba else ("",)
        for suffix in directions:
            conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
            x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            self._init_dt_proj(dt_proj, dt_min, dt_max, dt_init_floor)
            # S4D-real initialisation; A_log and D are used in fp32 whatever the module dtype.
            a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
            setattr(self, f"conv1d{suffix}", conv)
            setattr(self, f"x_proj{suffix}", x_proj)
            setattr(self, f"dt_proj{suffix}", dt_proj)
            # Upstream names: A_log / A_b_log, D / D_b.
            setattr(self, "A_log" if not suffix else "A_b_log", nn.Parameter(a_log))
            setattr(self, f"D{suffix}", nn.Parameter(torch.ones(self.d_inner)))

    def _init_dt_proj(self, dt_proj: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        """dt = softplus(bias) starts log-uniform in [dt_min, dt_max], as in Mamba."""
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        # Under ZeRO-3 construction (zero.Init) the Linear is already partitioned here.
        with gathered(dt_proj.parameters()), torch.no_grad():
            nn.init.uniform_(dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        dt_proj.bias._no_reinit = True

    def _direction(self, x: torch.Tensor, z: torch.Tensor, suffix: str, reverse: bool) -> torch.Tensor:
        """One scan direction (`reverse`: from the last step to the first). x, z: (B, d_inner, L) → gated output
        (B, d_inner, L)."""
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        a_log = self.A_log if not suffix else self.A_b_log
        d_skip = getattr(self, f"D{suffix}")

        x = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, activation="silu", reverse=reverse)
        x_dbl = F.linear(x.transpose(1, 2), x_proj.weight)  # (B, L, dt_rank + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # bias goes in as delta_bias, before softplus
        return selective_scan(
            x,
            delta,
            -torch.exp(a_log.float()),
            b.transpose(1, 2),
            c.transpose(1, 2),
            D=d_skip.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            reverse=reverse,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, d_model) → (B, L, d_model)."""
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        out = self._direction(x, z, "", reverse=False)
        if self.bimamba:
            out = out + self._direction(x, z, "_b", reverse=True)
        return self.out_proj(out.transpose(1, 2))
