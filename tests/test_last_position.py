"""The last decoder layer computed for the last position only: same logits, same KV cache, same generations; and
no pruning where the caller reads more than the last position."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mobilevideogpt.engine.decoding import ATTENTION, new_cache
from mobilevideogpt.model.last_position import LastPositionDecoderLayer, all_positions, last_position_only
from mobilevideogpt.model.tiny import TINY_QWEN2, build_tiny_model
from mobilevideogpt.train.model_setup import LLM_LORA_TARGETS

HIDDEN = TINY_QWEN2["hidden_size"]
GREEDY = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}


@pytest.fixture(scope="module")
def model():
    return build_tiny_model(seed=3)


@pytest.fixture
def mlp_rows(model):
    """The number of positions each forward's last-layer MLP computed, in call order."""
    rows: list[int] = []

    def record(module, inputs, output):
        rows.append(inputs[0].shape[1])

    handle = model.model.layers[-1].mlp.register_forward_hook(record)
    yield rows
    handle.remove()


def embeds(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, HIDDEN, generator=torch.Generator().manual_seed(seed))


def left_padded_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.stack([torch.arange(length) >= length - n for n in lengths]).long()


def prefill(model, inputs_embeds, attention_mask=None, cache=None):
    cache = new_cache(model.config) if cache is None else cache
    with torch.inference_mode():
        out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, logits_to_keep=1)
    return out.logits, cache


def assert_same_caches(a, b) -> None:
    assert len(a.layers) == len(b.layers)
    for ours, stock in zip(a.layers, b.layers):
        torch.testing.assert_close(ours.keys, stock.keys, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.values, stock.values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", ["sdpa", "eager", ATTENTION])
@pytest.mark.parametrize(("lengths", "length"), [([40], 40), ([40, 27], 40)])
def test_prefill_logits_and_cache_equal_the_full_layer(model, mlp_rows, implementation, lengths, length):
    """Batch 1 without a mask and a left-padded batch of 2 with one, under each attention the model may run."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        x = embeds(len(lengths), length)
        mask = left_padded_mask(lengths, length) if len(lengths) > 1 else None
        logits, cache = prefill(model, x, mask)
        with all_positions():
            stock_logits, stock_cache = prefill(model, x, mask)
    finally:
        model.set_attn_implementation(previous)
    assert mlp_rows == [1, length]  # pruned, then not
    assert logits.shape == stock_logits.shape == (len(lengths), 1, model.config.vocab_size)
    torch.testing.assert_close(logits, stock_logits, rtol=1e-5, atol=1e-5)
    assert_same_caches(cache, stock_cache)


def test_prefill_after_a_cached_prefix_equals_the_full_layer(model, mlp_rows):
    """A follow-up question: several new positions attend over a cached prefix and themselves."""
    x = embeds(1, 50, seed=1)
    _, cache = prefill(model, x[:, :35])
    _, stock_cache = prefill(model, x[:, :35])
    logits, cache = prefill(model, x[:, 35:], cache=cache)
    with all_positions():
        stock_logits, stock_cache = prefill(model, x[:, 35:], cache=stock_cache)
    assert mlp_rows == [1, 1, 1, 15]
    torch.testing.assert_close(logits, stock_logits, rtol=1e-5, atol=1e-5)
    assert_same_caches(cache, stock_cache)
    with torch.inference_mode():
        whole = model(inputs_embeds=x, logits_to_keep=0).logits
    torch.testing.assert_close(logits[:, -1], whole[:, -1], rtol=1e-5, atol=1e-5)


def test_greedy_generation_is_unchanged(model, mlp_rows):
    ids = torch.randint(1, 1000, (2, 30), generator=torch.Generator().manual_seed(2))
    mask = left_padded_mask([30, 22], 30)
    ours = model.generate(ids, attention_mask=mask, cache=new_cache(model.config), **GREEDY)
    with all_positions():
        stock = model.generate(ids, attention_mask=mask, cache=new_cache(model.config), **GREEDY)
    assert mlp_rows == [1] * 8 + [30] + [1] * 7  # a pruned prefill, then the full one; decode steps are one row
    assert ours.shape == (2, 8) and torch.equal(ours, stock)


def test_callers_reading_more_than_the_last_position_get_every_position(model, mlp_rows):
    x = embeds(1, 12)
    with torch.no_grad():
        assert model(inputs_embeds=x, logits_to_keep=0).logits.shape[1] == 12
        assert model(inputs_embeds=x, logits_to_keep=3).logits.shape[1] == 3
        out = model(inputs_embeds=x, logits_to_keep=1, output_hidden_states=True)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1 and out.hidden_states[-1].shape[1] == 12
        model(inputs_embeds=x, labels=torch.randint(0, 1000, (1, 1)), logits_to_keep=1)  # a loss is asked for
        model.train()
        try:
            model(inputs_embeds=x, logits_to_keep=1)
        finally:
            model.eval()
    model(inputs_embeds=x, logits_to_keep=1)  # gradients enabled
    assert mlp_rows == [12] * 6


def test_the_switch_is_reset_after_an_error(model, mlp_rows):
    with pytest.raises(RuntimeError, match="boom"), last_position_only():
        raise RuntimeError("boom")
    with torch.no_grad():
        model.model(inputs_embeds=embeds(1, 6))  # the base model on its own never prunes
    assert mlp_rows == [6]


def test_state_dict_keys_are_those_of_plain_qwen2(model):
    plain = Qwen2ForCausalLM(Qwen2Config(**TINY_QWEN2))
    layer_keys = {k for k in model.state_dict() if k.startswith("model.layers.")}
    assert layer_keys == {k for k in plain.state_dict() if k.startswith("model.layers.")}
    assert set(plain.state_dict()) <= set(model.state_dict())
    last = model.model.layers[-1]
    assert isinstance(last, LastPositionDecoderLayer) and "LastPositionDecoderLayer" in model._no_split_modules
    assert set(last.state_dict()) == set(model.model.layers[0].state_dict())
    assert model.get_submodule(f"model.layers.{len(model.model.layers) - 1}.self_attn.q_proj") is last.self_attn.q_proj


def test_lora_targets_the_last_layer_and_pruning_uses_the_replaced_modules(model):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(seed=3)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=LLM_LORA_TARGETS, task_type="CAUSAL_LM"))
    last = base.model.layers[-1]
    assert "lora" in type(last.self_attn.q_proj).__module__ and "lora" in type(last.mlp.down_proj).__module__
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:  # non-zero B: the adapters change the output
            torch.nn.init.normal_(parameter, std=0.5)
    lora.eval()
    x = embeds(1, 20)
    with torch.inference_mode():
        ours = lora(inputs_embeds=x, logits_to_keep=1).logits
        with all_positions():
            stock = lora(inputs_embeds=x, logits_to_keep=1).logits
        plain = model(inputs_embeds=x, logits_to_keep=1).logits
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, plain)


def test_activation_checkpointing_reaches_the_last_layer():
    model = build_tiny_model(seed=3)
    model.activation_checkpointing_enable()
    model.train()
    last = model.model.layers[-1]
    checkpointed = []
    checkpoint = last._gradient_checkpointing_func
    last._gradient_checkpointing_func = lambda *args, **kwargs: checkpointed.append(1) or checkpoint(*args, **kwargs)
    x = embeds(1, 10).requires_grad_(True)
    model(inputs_embeds=x, logits_to_keep=1).logits.sum().backward()
    assert checkpointed == [1]
    assert last.mlp.down_proj.weight.grad is not None and x.grad is not None
