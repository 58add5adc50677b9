"""Shared fixtures: the synthetic sample dataset, generated once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mobilevideogpt.data.sample_dataset import make_sample_dataset


@pytest.fixture(scope="session")
def sample_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp project>/dataset`: the synthetic 6 × 5 QVED-layout dataset with qved_train.json. Read-only:
    tests that modify files use `sample_dataset_copy`."""
    root = tmp_path_factory.mktemp("sample_project")
    make_sample_dataset(root / "dataset", log=lambda message: None)
    return root / "dataset"


@pytest.fixture
def sample_dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the sample dataset at `<tmp_path>/dataset`."""
    target = tmp_path / "dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target
