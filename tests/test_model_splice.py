"""Splicing videos into token sequences; batched forward / generate equal per-sample runs; dtypes; training hooks."""

import pytest
import torch

from mobilevideogpt.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX as P
from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
from mobilevideogpt.model.splice import count_video_slots, placeholder_runs, splice_visual_tokens
from mobilevideogpt.model.tiny import fast_geometry, tiny_config

VOCAB = 512
VISUAL = 674  # fast geometry: 4 · 144 + 2 · 49


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, **fast_geometry())
    assert cfg.visual_tokens_per_video == VISUAL
    return MobileVideoGPTQwenForCausalLM(cfg).eval()


def videos(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 3, 112, 112, generator=g), torch.randn(n, 4, 3, 112, 112, generator=g)


def right_pad(rows, value):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def left_pad(rows, value):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


# ---------------------------------------------------------------- splice functions


def test_placeholder_runs_and_slot_counts():
    assert placeholder_runs(torch.tensor([1, P, P, P, 2, P, 3])) == [(1, 4), (5, 6)]
    assert placeholder_runs(torch.tensor([P])) == [(0, 1)]
    assert placeholder_runs(torch.tensor([1, 2])) == []
    ids = torch.tensor([[1, P, P, 2], [3, 4, P, 0]])
    assert count_video_slots(ids) == [1, 1]
    assert count_video_slots(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])) == [1, 0]  # masked placeholder


@pytest.mark.parametrize("side", ["left", "right"])
def test_splice_layout_labels_mask_positions(side):
    embed = torch.nn.Embedding(10, 2)
    ids = torch.tensor([[1, 2, P, 3, 0], [4, P, P, P, 5]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, 2, -100, 3, -100], [-100, -100, -100, -100, 5]])
    visual = [torch.full((3, 2), 7.0), torch.full((4, 2), 8.0)]
    out = splice_visual_tokens(ids, embed, visual, mask, labels, padding_side=side)
    # sample 0: 1 2 [7 7 7] 3 → 6 tokens; sample 1: 4 [8 8 8 8] 5 → 6 tokens; no padding needed
    assert out.inputs_embeds.shape == (2, 6, 2)
    assert out.labels.tolist() == [[-100, 2, -100, -100, -100, 3], [-100, -100, -100, -100, -100, 5]]
    assert out.attention_mask.tolist() == [[1] * 6, [1] * 6]
    assert out.position_ids.tolist() == [list(range(6))] * 2
    torch.testing.assert_close(out.inputs_embeds[0, 2:5], visual[0])
    torch.testing.assert_close(out.inputs_embeds[1, 1:5], visual[1])
    torch.testing.assert_close(out.inputs_embeds[0, 5], embed.weight[3])

    short = splice_visual_tokens(ids[:, :3], embed, visual[:1], torch.tensor([[1, 1, 1], [1, 0, 0]]), padding_side=side)
    # sample 0: 1 2 [7 7 7] = 5 tokens; sample 1 has its placeholder masked out → text only "4" = 1 token
    assert short.labels is None
    expected_mask = [1] + [0] * 4 if side == "right" else [0] * 4 + [1]
    assert short.attention_mask.tolist() == [[1] * 5, expected_mask]
    assert short.position_ids[1].tolist() == [0] * 5
    real = 0 if side == "right" else 4
    torch.testing.assert_close(short.inputs_embeds[1, real], embed.weight[4])
    assert short.inputs_embeds[1].abs().sum() == embed.weight[4].abs().sum()  # padding embeddings are zero


def test_video_count_mismatch_is_a_clear_error(model):
    ids = torch.tensor([[1, P, 2], [3, P, 4]])
    images, context = videos(1, 0)
    with pytest.raises(ValueError, match=r"2 video placeholder run\(s\) .* but 1 video"):
        model(input_ids=ids, images=images, context_images=context)
    with pytest.raises(ValueError, match=r"0 video placeholder run\(s\) .* but 1 video"):
        model(input_ids=torch.tensor([[1, 2, 3]]), images=images, context_images=context)
    with pytest.raises(ValueError, match="1 video placeholder run"):
        model(input_ids=torch.tensor([[1, P, 3]]))
    with pytest.raises(ValueError, match="both"):
        model(input_ids=torch.tensor([[1, P, 3]]), images=images)


# ---------------------------------------------------------------- batched forward equals per-sample forward


PROMPT_A = [5, 6, 7, P, 8, 9, 10, 11, 12]  # one placeholder
PROMPT_B = [13, P, P, P, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]  # a run of three = one video slot


def labels_for(prompt):
    return [IGNORE_INDEX if t == P or i < 5 else t for i, t in enumerate(prompt)]


def test_batched_forward_matches_each_sample_alone(model):
    images, context = videos(2, 1)
    ids, mask = right_pad([PROMPT_A, PROMPT_B], 0)
    labels, _ = right_pad([labels_for(PROMPT_A), labels_for(PROMPT_B)], IGNORE_INDEX)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, labels=labels, images=images, context_images=context)
        alone = [
            model(
                input_ids=torch.tensor([p]),
                labels=torch.tensor([labels_for(p)]),
                images=images[i : i + 1],
                context_images=context[i : i + 1],
            )
            for i, p in enumerate([PROMPT_A, PROMPT_B])
        ]
    lengths = [len(PROMPT_A) - 1 + VISUAL, len(PROMPT_B) - 3 + VISUAL]
    assert batched.logits.shape == (2, max(lengths), VOCAB)
    for i, out in enumerate(alone):
        assert out.logits.shape == (1, lengths[i], VOCAB)
        torch.testing.assert_close(batched.logits[i, : lengths[i]], out.logits[0], rtol=1e-4, atol=1e-4)
    # The batch loss is the token-weighted mean of the per-sample losses.
    counts = [sum(1 for t in labels_for(p)[1:] if t != IGNORE_INDEX) for p in (PROMPT_A, PROMPT_B)]
    weighted = (alone[0].loss * counts[0] + alone[1].loss * counts[1]) / sum(counts)
    torch.testing.assert_close(batched.loss, weighted, rtol=1e-4, atol=1e-5)


def test_left_padded_forward_matches_right_padded(model):
    images, context = videos(2, 2)
    with torch.no_grad():
        ids, mask = right_pad([PROMPT_A, PROMPT_B], 0)
        right = model(input_ids=ids, attention_mask=mask, images=images, context_images=context).logits
        ids, mask = left_pad([PROMPT_A, PROMPT_B], 0)
        left = model(input_ids=ids, attention_mask=mask, images=images, context_images=context).logits
    n_a = len(PROMPT_A) - 1 + VISUAL
    torch.testing.assert_close(left[0, -n_a:], right[0, :n_a], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(left[1], right[1], rtol=1e-4, atol=1e-4)


def test_text_only_sample_in_a_video_batch(model):
    images, context = videos(1, 3)
    text = [30, 31, 32, 33]
    ids, mask = right_pad([text, PROMPT_A], 0)
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, images=images, context_images=context).logits
        text_alone = model(input_ids=torch.tensor([text])).logits
        video_alone = model(input_ids=torch.tensor([PROMPT_A]), images=images, context_images=context).logits
    torch.testing.assert_close(batched[0, :4], text_alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched[1], video_alone[0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- generate


def test_batched_greedy_generate_matches_each_sample_alone(model):
    images, context = videos(2, 4)
    ids, mask = right_pad([PROMPT_A, PROMPT_B], 0)  # any padding side in; generate re-pads left
    batched = model.generate(
        ids,
        images=images,
        context_images=context,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
    )
    assert batched.shape == (2, 6)  # only the new tokens, as the published model returns
    for i, prompt in enumerate([PROMPT_A, PROMPT_B]):
        alone = model.generate(
            torch.tensor([prompt]),
            images=images[i : i + 1],
            context_images=context[i : i + 1],
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
        assert alone.tolist()[0] == batched.tolist()[i]
    # KV-cached greedy decoding equals step-by-step argmax over full forwards.
    with torch.no_grad():
        seq = torch.tensor([PROMPT_A])
        for _ in range(6):
            logits = model(input_ids=seq, images=images[:1], context_images=context[:1]).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert seq[0, len(PROMPT_A) :].tolist() == batched[0].tolist()


def test_sampling_and_text_only_generate(model):
    images, context = videos(1, 5)
    torch.manual_seed(0)
    sampled = model.generate(
        torch.tensor([PROMPT_A]),
        images=images,
        context_images=context,
        max_new_tokens=5,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        pad_token_id=0,
    )
    assert sampled.shape == (1, 5) and bool(((sampled >= 0) & (sampled < VOCAB)).all())
    text = model.generate(torch.tensor([[30, 31, 32]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        first = model(input_ids=torch.tensor([[30, 31, 32]])).logits[0, -1].argmax()
    assert text.shape == (1, 3) and text[0, 0] == first


# ---------------------------------------------------------------- dtypes and training behaviour


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_forward_close_to_fp32(model, dtype, tol):
    half = MobileVideoGPTQwenForCausalLM(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.to(dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    images, context = videos(1, 6)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([PROMPT_A]), images=images, context_images=context).logits
        got = half(input_ids=torch.tensor([PROMPT_A]), images=images, context_images=context).logits
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0, atol=tol)


def test_frozen_towers_stay_in_eval_and_projectors_always_get_gradients():
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, **fast_geometry())
    model = MobileVideoGPTQwenForCausalLM(cfg)
    model.requires_grad_(False)
    for projector in model.model.projectors:
        projector.requires_grad_(True)
    model.train()
    assert not model.model.vision_tower.training and not model.model.image_vision_tower.training
    assert model.model.mm_projector.training
    # A text-only training batch still routes (zero) gradients to every trainable projector parameter.
    ids = torch.tensor([[30, 31, 32, 33]])
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    for projector in model.model.projectors:
        for p in projector.parameters():
            assert p.grad is not None and float(p.grad.abs().sum()) == 0.0
    model.eval()
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss  # the anchor adds exactly zero
    torch.testing.assert_close(out.loss.detach(), reference)
    # With a video, real gradients reach both projectors through the spliced embeddings.
    model.zero_grad()
    model.train()
    images, context = videos(1, 8)
    video_ids = torch.tensor([PROMPT_A])
    model(input_ids=video_ids, labels=video_ids.clamp(min=0), images=images, context_images=context).loss.backward()
    for projector in model.model.projectors:
        assert float(projector.mlp.mlp[0].weight.grad.abs().sum()) > 0
    # Unfrozen towers do follow train().
    model.model.vision_tower.requires_grad_(True)
    model.train()
    assert model.model.vision_tower.training


def test_lora_wrapped_model_forward_and_generate_with_videos(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = MobileVideoGPTQwenForCausalLM(model.config)
    base.load_state_dict(model.state_dict())
    lora = get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=8,
            task_type="CAUSAL_LM",
            target_modules=r".*model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
        ),
    )
    images, context = videos(2, 7)
    ids, mask = right_pad([PROMPT_A, PROMPT_B], 0)
    lora.train()
    out = lora(input_ids=ids, attention_mask=mask, labels=ids.clamp(min=0), images=images, context_images=context)
    out.loss.backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_" in n)
    lora.eval()
    new = lora.generate(
        input_ids=ids,
        attention_mask=mask,
        images=images,
        context_images=context,
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
    )
    # LoRA B starts at zero, so the wrapped model decodes exactly like the base model.
    assert torch.equal(
        new,
        model.generate(
            ids,
            images=images,
            context_images=context,
            attention_mask=mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        ),
    )
