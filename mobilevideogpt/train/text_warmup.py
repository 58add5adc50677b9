"""Text-only warm-up of a tiny model's LLM, so that a demo finetune starts from a model that knows its answers.

It stands in for what the published model got from Qwen2.5's pretraining and the Stage-1/2 projector alignment:
a language model that writes the answers' words, and reads what the projectors write into the video span.

A randomly initialised tiny LLM cannot learn to answer in a few finetuning steps: its frozen random tied
embeddings give each of the 151,936 tokens nearly the same logit (train loss stays at ln 151,665 ≈ 11.9), and
LoRA cannot change embeddings. This warm-up trains the whole LLM (embeddings, decoder layers, final norm) on
a small corpus of conversations before the model is saved as a base; towers and projectors are not touched.

- Vocabulary: only the rows of tokens that occur in the corpus train. Every other embedding row is set to
  zero, so its logit is exactly 0 and the softmax over all V rows equals a softmax over the n corpus tokens
  plus one constant term log(V − n): the loss below is exact without a 151,936-wide product per position.
- Layout: each conversation is rendered with the chat template and its video tag, as in finetuning; the
  video's span keeps its length in the position ids (RoPE distances between prompt and answer are the
  finetuning ones).
- The video span: each conversation gets a random number of "stand-in" visual vectors there (random
  directions around a random mean: nothing to read), so the LLM keeps its answer format next to a block of
  unfamiliar embeddings. An example with `video_text` blends that text's token embeddings into the stand-ins
  by a random weight, so the LLM learns to read a name from the video span in proportion to how clearly it
  is there; a finetune then only has to teach the projectors to write it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..processing import parse_conversation, tokenize_segments


@dataclass(frozen=True)
class WarmupExample:
    question: str  # user turn; its video tag (added when missing) marks the video span
    answer: str
    video_text: str = ""  # text blended into the video span's stand-in vectors ("" for none)


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]  # without the video placeholder
    labels: list[int]
    slot: int  # index in `ids` where the video span starts
    video_ids: list[int]


def _encode(example: WarmupExample, tokenizer) -> _Encoded:
    turns = [{"from": "human", "value": example.question}, {"from": "gpt", "value": example.answer}]
    ids, labels = tokenize_segments(parse_conversation(turns, video="").segments(), tokenizer)
    slot = ids.index(IMAGE_TOKEN_INDEX)
    video_ids = tokenizer.encode(example.video_text, add_special_tokens=False) if example.video_text else []
    return _Encoded(ids[:slot] + ids[slot + 1 :], labels[:slot] + labels[slot + 1 :], slot, video_ids)


def _with_stand_ins(e: _Encoded, rows, compact_index, span: int, max_stand_ins: int, scale, rng, generator):
    """(embeddings, labels, position ids) of one example with 1..max_stand_ins stand-ins at random positions of
    its video span; an example with `video_ids` has its text blended into them by a random weight."""
    n = rng.randint(1, max_stand_ins)
    at = sorted(rng.sample(range(span), n))
    hidden = rows.shape[1]
    stand_ins = scale * (torch.randn(hidden, generator=generator) + 0.5 * torch.randn(n, hidden, generator=generator))
    if e.video_ids:
        text = rows[compact_index[torch.tensor([e.video_ids[i % len(e.video_ids)] for i in range(n)])]]
        weight = rng.random()
        stand_ins = (1 - weight) * stand_ins + weight * text
    ids = torch.tensor(e.ids)
    tail = len(e.ids) - e.slot
    embeddings = torch.cat([rows[compact_index[ids[: e.slot]]], stand_ins, rows[compact_index[ids[e.slot :]]]])
    labels = torch.tensor(e.labels[: e.slot] + [IGNORE_INDEX] * n + e.labels[e.slot :])
    positions = torch.tensor([*range(e.slot), *(e.slot + a for a in at), *range(e.slot + span, e.slot + span + tail)])
    return embeddings, labels, positions


def warm_up_language(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[WarmupExample],
    *,
    steps: int = 200,
    lr: float = 1e-2,
    batch_size: int = 32,
    max_stand_ins: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train `model`'s LLM on `examples` in place (AdamW, 20 warm-up steps, cosine); returns the loss per step.

    `model` is a `MobileVideoGPTQwenForCausalLM` with tied embeddings; its visual token count sets the span.
    """
    if not examples:
        raise ValueError("the warm-up corpus is empty")
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    span = model.config.visual_tokens_per_video
    encoded = [_encode(example, tokenizer) for example in examples]
    embedding = model.get_input_embeddings().weight
    used = sorted({t for e in encoded for t in e.ids + e.video_ids} | {tokenizer.pad_token_id})
    used_ids = torch.tensor(used)
    compact_index = torch.full((embedding.shape[0],), -1, dtype=torch.long)
    compact_index[used_ids] = torch.arange(len(used))
    rest = math.log(embedding.shape[0] - len(used))
    with torch.no_grad():
        unused = torch.ones(embedding.shape[0], dtype=torch.bool)
        unused[used_ids] = False
        embedding[unused] = 0
    # The used rows train as a compact copy (written back at the end): Adam never touches the 151k others.
    rows = torch.nn.Parameter(embedding.detach()[used_ids].clone())
    llm = model.get_decoder()
    layers = [p for name, p in llm.named_parameters() if name.startswith(("layers.", "norm."))]
    model.requires_grad_(False)
    for p in layers:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(layers + [rows], lr=lr, weight_decay=0.0)
    warmup = min(20, steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        scale = rows.detach().pow(2).mean().sqrt()
        batch = [
            _with_stand_ins(encoded[rng.randrange(len(encoded))], rows, compact_index, span, max_stand_ins, scale, rng,
                            generator)
            for _ in range(batch_size)
        ]  # fmt: skip
        embeds = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True)
        labels = torch.nn.utils.rnn.pad_sequence([b[1] for b in batch], batch_first=True, padding_value=IGNORE_INDEX)
        position_ids = torch.nn.utils.rnn.pad_sequence([b[2] for b in batch], batch_first=True)
        # Right padding: the causal mask alone keeps padding away from every true token.
        states = llm(inputs_embeds=embeds, position_ids=position_ids).last_hidden_state
        shifted = labels[:, 1:]
        keep = shifted != IGNORE_INDEX
        logits = states[:, :-1][keep] @ rows.T
        logits = torch.cat([logits, logits.new_full((logits.shape[0], 1), rest)], dim=1)
        loss = F.cross_entropy(logits, compact_index[shifted[keep]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"warm-up step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    with torch.no_grad():
        embedding[used_ids] = rows.detach()
    model.requires_grad_(True)
    model.eval()
    return losses
