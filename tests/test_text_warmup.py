"""The demo base's text warm-up: it learns the corpus, leaves the vision side alone, and zeroes unused rows."""

from __future__ import annotations

import torch

from mobilevideogpt.model.tiny import build_tiny_model, fast_geometry
from mobilevideogpt.qved import exercise_prompt
from mobilevideogpt.qved.demo import DEMO_LLM, warmup_examples
from mobilevideogpt.train.text_warmup import WarmupExample, warm_up_language

ANSWERS = {"squats": "squats - Keep your back straight", "knee circles": "knee circles - Bend your knees"}


def test_warm_up_learns_the_answers_and_touches_only_the_llm(qwen25_tokenizer):
    model = build_tiny_model(0, **fast_geometry(), **DEMO_LLM)
    vision_before = {k: v.clone() for k, v in model.state_dict().items() if "vision_tower" in k or "mm_projector" in k}
    examples = [WarmupExample(exercise_prompt(name), answer) for name, answer in ANSWERS.items()]
    examples += [WarmupExample(exercise_prompt(None), answer, video_text=name) for name, answer in ANSWERS.items()]
    losses = warm_up_language(model, qwen25_tokenizer, examples, steps=80, batch_size=8, max_stand_ins=8)
    assert losses[0] > 10 and sum(losses[-5:]) / 5 < 1.0
    for key, value in model.state_dict().items():
        if key in vision_before:
            assert torch.equal(value, vision_before[key]), key
    rows = model.get_input_embeddings().weight
    used = {t for answer in ANSWERS.values() for t in qwen25_tokenizer.encode(answer)}
    assert rows[sorted(used)].abs().sum(-1).gt(0).all()
    assert int(rows.abs().sum(-1).gt(0).sum()) < 200  # every row outside the corpus is zero
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_the_demo_corpus_is_balanced_and_asks_both_ways():
    examples = warmup_examples()
    generic = exercise_prompt(None)
    assert len(examples) == 6 * 3 * 5 * 3  # exercises × copies × answers × forms
    named = [e for e in examples if e.question != generic]
    blended = [e for e in examples if e.video_text]
    assert len(named) == len(blended) == len(examples) // 3
    assert all(e.answer.startswith(e.video_text + " - ") for e in blended)
