"""train/memory.py: the parts of the pre-launch memory estimate against what torch really keeps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mobilevideogpt.train.memory import (
    GIB,
    TrainingShape,
    estimate_training_memory,
    largest_fitting_batch,
    layer_activation_bytes_per_token,
    model_sizes,
)

GUIDE = TrainingShape(batch=4, text_tokens=2048, supervised_tokens=2048, lora_r=64, lora_dropout=0.05,
                      precision="bf16", activation_checkpointing=True)  # fmt: skip


def saved_bytes_per_token(dtype: torch.dtype, lora_r: int, dropout: float, tokens: int = 32) -> tuple[float, object]:
    """Bytes one full-size Qwen2.5-0.5B decoder layer (LoRA'd as training does, cast to `dtype` as DeepSpeed does)
    saves for backward per token: distinct storages, parameters, the layer's input and the rotary tables left out."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
    from mobilevideogpt.train.model_setup import LLM_LORA_TARGETS

    config = MobileVideoGPTQwenConfig.published()
    qwen = Qwen2Config(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                       num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                       num_hidden_layers=1, vocab_size=64)  # fmt: skip
    qwen._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([Qwen2DecoderLayer(qwen, 0)])
    model.requires_grad_(False)
    if lora_r:
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=dropout,
                                                 target_modules=LLM_LORA_TARGETS))  # fmt: skip
    model = model.to(dtype).train()
    layer = next(m for m in model.modules() if isinstance(m, Qwen2DecoderLayer))
    x = torch.randn(2, tokens, qwen.hidden_size, dtype=dtype, requires_grad=True)
    rotary = Qwen2RotaryEmbedding(qwen)(x, torch.arange(tokens)[None].expand(2, -1))
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    skip |= {t.untyped_storage().data_ptr() for t in rotary}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, position_embeddings=rotary, attention_mask=None)
    return sum(kept.values()) / (2 * tokens), config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lora_r, dropout", [(0, 0.0), (8, 0.05), (8, 0.0)])
def test_the_layer_activation_term_is_what_a_real_decoder_layer_saves(dtype, lora_r, dropout):
    measured, config = saved_bytes_per_token(dtype, lora_r, dropout)
    sizes = model_sizes(config)
    predicted = layer_activation_bytes_per_token(sizes, lora_r, dropout, torch.finfo(dtype).bits // 8)
    assert predicted == pytest.approx(measured, rel=0.02), (predicted, measured)


def test_the_published_model_is_counted_from_its_layout():
    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig

    sizes = model_sizes(MobileVideoGPTQwenConfig.published())
    assert 0.6e9 < sizes.parameters < 0.7e9  # Qwen2.5-0.5B (tied head) + CLIP ViT-B/16 + VideoMamba-M
    assert sizes.visual_tokens == 2402 and sizes.layers == 24 and sizes.vocab == 151936
    # per layer: q and o (896 -> 896), k and v (896 -> 128), gate, up and down (896 <-> 4864)
    assert sizes.lora_parameters_per_r == 24 * (2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864))


def test_the_estimate_moves_with_each_setting():
    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig

    sizes = model_sizes(MobileVideoGPTQwenConfig.published())
    guide = estimate_training_memory(sizes, GUIDE)
    assert estimate_training_memory(sizes, replace(GUIDE, activation_checkpointing=False)).activations > 5 * guide.activations
    assert estimate_training_memory(sizes, replace(GUIDE, batch=2)).total < guide.total
    assert estimate_training_memory(sizes, replace(GUIDE, supervised_tokens=64)).logits * 32 == guide.logits
    assert estimate_training_memory(sizes, replace(GUIDE, precision="fp32")).weights == 2 * guide.weights
    assert estimate_training_memory(sizes, replace(GUIDE, world_size=2)).trainable_states < guide.trainable_states
    assert estimate_training_memory(sizes, GUIDE, cuda=False).total == guide.total - guide.runtime
    fits = largest_fitting_batch(sizes, GUIDE, 8 * GIB)
    assert estimate_training_memory(sizes, replace(GUIDE, batch=fits)).total <= 8 * GIB
    assert estimate_training_memory(sizes, replace(GUIDE, batch=fits + 1)).total > 8 * GIB
