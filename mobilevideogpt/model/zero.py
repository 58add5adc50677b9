"""DeepSpeed ZeRO-3 helper: work on full parameters even when they are partitioned across ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch.nn as nn


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter], modifier_rank: int | None = 0) -> Iterator[None]:
    """Full tensors inside the block for ZeRO-3-partitioned parameters (those carrying `ds_id`); writes made on
    `modifier_rank` are broadcast back. Plain parameters pass through untouched, so this costs nothing without
    DeepSpeed."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank):
        yield
