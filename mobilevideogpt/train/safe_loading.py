"""Resuming runs no code from a checkpoint: every pickle is read by torch's weights-only unpickler.

DeepSpeed reads its optimizer and model-state files with `torch.load(weights_only=False)`, which runs whatever a
planted pickle asks for. Inside `weights_only_unpickling()` torch refuses that (TORCH_FORCE_WEIGHTS_ONLY_LOAD
overrides the argument) and allows only tensors, containers, plain values and the few DeepSpeed types its
checkpoints hold (`resume_safe_globals`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# Files a resume unpickles (transformers' rng/scheduler/optimizer states, DeepSpeed's global_step*/ files);
# training_args.bin is written for reference and never read back.
PICKLE_SUFFIXES = (".pt", ".pth")


def resume_safe_globals() -> list:
    """Types besides tensors and plain values that DeepSpeed ZeRO checkpoints pickle: the ZeRO stage enum and the
    loss scaler (found in ZeRO-3 optimizer states; fp16 runs keep the dynamic one), plain attribute holders. The
    numpy types of rng_state.pth are allowed by transformers itself where it loads that file."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
    except ImportError:
        return []
    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


@contextlib.contextmanager
def weights_only_unpickling() -> Iterator[None]:
    """Every `torch.load` inside reads with weights_only=True, whatever its caller asked for."""
    saved = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)  # both set is an error in torch
    try:
        with torch.serialization.safe_globals(resume_safe_globals()):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _refusal(err: BaseException) -> str:
    """The line of torch's weights-only error that names what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "unsupported" in line.lower()]
    return (named or lines or [type(err).__name__])[0]


def refused_pickles(checkpoint: str | os.PathLike) -> list[str]:
    """"file: what was refused" for each pickle in `checkpoint` that the weights-only unpickler rejects."""
    from transformers.trainer_pt_utils import safe_globals as numpy_safe_globals

    refused = []
    with weights_only_unpickling(), numpy_safe_globals():
        for path in sorted(Path(checkpoint).rglob("*")):
            if not (path.is_file() and path.suffix in PICKLE_SUFFIXES):
                continue
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                refused.append(f"{path}: {_refusal(err)}")
            except Exception:  # noqa: BLE001 - damaged files are reported by the marker check, not here
                continue
    return refused
