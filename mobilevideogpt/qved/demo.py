"""The offline demo's inputs: a tiny random base model and the synthetic sample dataset, made when missing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .recipe import DEMO_DATASET, DEMO_MODEL

logger = logging.getLogger(__name__)


def prepare_demo(demo_dir: str | Path, log: Callable[[str], None] = logger.info) -> tuple[Path, Path]:
    """(tiny base model folder, dataset folder) under `demo_dir`, each written only when it is not there yet."""
    demo_dir = Path(demo_dir)
    model_dir, dataset_dir = demo_dir / DEMO_MODEL, demo_dir / DEMO_DATASET
    if not (model_dir / "config.json").is_file():
        from ..model.tiny import save_tiny_checkpoint

        save_tiny_checkpoint(model_dir, seed=0)
        log(f"wrote the demo's tiny base model to {model_dir}")
    if not (dataset_dir / "qved_train.json").is_file():
        from .convert import convert
        from .sample_dataset import make_sample_dataset

        make_sample_dataset(dataset_dir, log=log)
        convert(dataset_dir, val_ratio=0.2, log=log)
    return model_dir, dataset_dir
