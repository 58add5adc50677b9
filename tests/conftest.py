import pytest


@pytest.fixture(scope="session")
def mvgpt_tiny_checkpoint(tmp_path_factory):
    """A tiny random Mobile-VideoGPT checkpoint (published geometry) + the real Qwen2.5 tokenizer, written
    once per session with `save_tiny_checkpoint(seed=0)` (~6 s). Read-only: copy it before modifying."""
    from mobilevideogpt.model.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("mvgpt_tiny") / "checkpoint", seed=0)
