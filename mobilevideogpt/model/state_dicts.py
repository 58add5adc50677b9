"""Comparing a state dict with the one a module expects: the basis of every strict key report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeyDiff:
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]  # "key: given (shape) vs model (shape)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)


def diff_state_dicts(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> KeyDiff:
    """Keys the module needs but `given` lacks, keys it does not know, and shape disagreements (all sorted)."""
    return KeyDiff(
        missing=sorted(set(expected) - set(given)),
        unexpected=sorted(set(given) - set(expected)),
        wrong_shape=sorted(
            f"{k}: given {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in set(expected) & set(given)
            if given[k].shape != expected[k].shape
        ),
    )


def preview(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f", … (+{len(keys) - n} more)" if len(keys) > n else "")
