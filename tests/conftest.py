"""Shared fixtures, each built once per session: the real Qwen2.5 tokenizer, the synthetic sample dataset and
a tiny Mobile-VideoGPT checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mobilevideogpt.qved.sample_dataset import make_sample_dataset


@pytest.fixture(scope="session")
def qwen25_tokenizer():
    """The real Qwen2.5 tokenizer, built once per test session (~5 s)."""
    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    return build_qwen25_tokenizer()


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


@pytest.fixture(scope="session")
def mvgpt_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Mobile-VideoGPT checkpoint (published geometry) + the real Qwen2.5 tokenizer, written
    once per session with `save_tiny_checkpoint(seed=0)` (~6 s). Read-only: copy it before modifying."""
    from mobilevideogpt.model.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("mvgpt_tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def mvgpt_fast_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint with the cheap `fast_geometry()` (4 frames of 112 px, 674 visual tokens), for
    tests where the published geometry does not matter. Read-only."""
    from mobilevideogpt.model.tiny import fast_geometry, save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("mvgpt_fast") / "checkpoint", seed=0, **fast_geometry())


@pytest.fixture(scope="session")
def mvgpt_trained_run(tmp_path_factory: pytest.TempPathFactory, mvgpt_fast_checkpoint: Path) -> Path:
    """A training run folder whose `checkpoint-final/` (LoRA + projectors, both moved away from the base) sits
    on `mvgpt_fast_checkpoint`, written by the trainer's save path (see tests/trained_checkpoint.py). Read-only."""
    from tests.trained_checkpoint import make_training_checkpoint

    run = tmp_path_factory.mktemp("mvgpt_run") / "qved_finetune_tiny"
    make_training_checkpoint(mvgpt_fast_checkpoint, run)
    return run


CPU_PLANS = {"avx2": "-bf16", "bf16": "+bf16"}  # plan name -> $MVGPT_CPU_FEATURES edit that selects it


@pytest.fixture
def cpu_plan(monkeypatch):
    """`cpu_plan("avx2")` / `cpu_plan("bf16")`: the CPU inference plan of a CPU without / with bf16 matrix units,
    whatever this one has (on a CPU without them, torch emulates the bf16 products: slow, but bf16's rounding).
    The whole suite can run under one plan with `MVGPT_CPU_FEATURES=-bf16 pytest` (or `+bf16`)."""
    from mobilevideogpt import runtime

    def use(name: str) -> str:
        monkeypatch.setenv(runtime.CPU_FEATURES_ENV, CPU_PLANS[name])
        runtime.cpu_features.cache_clear()
        return name

    yield use
    monkeypatch.undo()
    runtime.cpu_features.cache_clear()


def require_kernel(module, what: str) -> None:
    """Build a kernel module's library; skip where no C++ compiler exists, fail where it exists and the build fails."""
    from mobilevideogpt.engine import native

    if module.load_kernel() is None:
        if native.compiler() is None:
            pytest.skip("no C++ compiler on this machine: the kernel cannot be built")
        pytest.fail(f"the {what} failed to build: {module.build_error()}")


@pytest.fixture(scope="session")
def linear_kernel():
    """The compiled low-precision linear kernel, built (a machine without a C++ compiler cannot run the packed paths)."""
    from mobilevideogpt.engine import linear_cpu

    require_kernel(linear_cpu, "low-precision linear kernel")


@pytest.fixture(scope="session")
def rows_kernel():
    """The compiled row passes (those of int8 prefills, and the bf16 / fp32 norms and activations), built."""
    from mobilevideogpt.engine import rows_cpu

    require_kernel(rows_cpu, "row kernels")


@pytest.fixture(scope="session")
def attention_kernel():
    """The compiled causal attention of CPU prefills, built."""
    from mobilevideogpt.engine import attention_cpu

    require_kernel(attention_cpu, "causal attention kernel")


def run_demo(folder: Path, *options: str) -> tuple[Path, str, dict]:
    """`mvgpt demo OPTIONS` as a new user runs it, in DEMO_DIR `folder`/demo: (DEMO_DIR, all it printed — stdout,
    then stderr —, the environment it ran with). Fails with the demo's output when it fails."""
    import os
    import subprocess

    mvgpt = shutil.which("mvgpt")
    assert mvgpt, "the `mvgpt` command is not installed: run the set-up command"
    demo = folder / "demo"
    env = {**os.environ, "DEMO_DIR": str(demo), "MASTER_PORT": str(29700 + os.getpid() % 200),
           "TOKENIZERS_PARALLELISM": "false", "REPORT_TO": "none"}  # fmt: skip
    run = subprocess.run([mvgpt, "demo", *options], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return demo, run.stdout + run.stderr, env


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """The README's main job, `mvgpt demo`, run once per session (minutes); see `run_demo`. Read-only."""
    return run_demo(tmp_path_factory.mktemp("quick_start"))
