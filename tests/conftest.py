import pytest


@pytest.fixture(scope="session")
def qwen25_tokenizer():
    """The real Qwen2.5 tokenizer, built once per test session (~5 s)."""
    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    return build_qwen25_tokenizer()
