"""The offline demo's inputs: a tiny base that knows the answers' language, a training set, held-out videos.

Why each piece is as it is (measured on 2 CPU cores; the demo must show that finetuning teaches the model to tell
the exercise from the video):
- The base keeps the published visual geometry (224 px, 14×14 grids, 16 frames → 2402 visual tokens) with
  random frozen towers and projectors, and a wider tiny LLM (hidden 64, 2 layers) whose language part is warmed
  up on the sample answers as text (`train.text_warmup`): a random hidden-32 LLM with frozen tied embeddings
  cannot raise any logit above ≈0.6, so its loss stays at ln 151,665 ≈ 11.9 whatever LoRA does.
- The warm-up corpus teaches the answers after the prompt that names the exercise, after the generic prompt (a
  uniform guess: without the video the base cannot know), and with the exercise's name blended into the video
  span, so the base can read a name there once the finetuned projectors write it. The base itself names the
  exercise of a video no better than chance.
- The training set has 20 videos per exercise and asks every question generically ("Analyze this exercise
  video …"): with the exercise in the prompt the model could copy it instead of looking at the video.
- The held-out set is rendered with another seed: videos the model never saw, asked the same generic question.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import QVED_EXERCISES, exercise_name, exercise_prompt
from .recipe import DEMO_DATASET, DEMO_HELDOUT, DEMO_MODEL

logger = logging.getLogger(__name__)

# The demo base's LLM: wider than the tests' hidden-32 one, still cheap over 2402 visual tokens on a CPU.
DEMO_LLM: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
WARMUP_STEPS = 200
TRAIN_VIDEOS_PER_EXERCISE = 20
HELDOUT_SEED = 1
HELDOUT_VIDEOS_PER_EXERCISE = 6
# Maximum answer length asked of the demo's models in the held-out evaluation (answers are ≈ 10–20 tokens).
EVAL_MAX_NEW_TOKENS = 32


def warmup_examples(copies: int = 3) -> list:
    """The demo base's text warm-up corpus (see the module docstring), balanced over the exercises."""
    from ..train.text_warmup import WarmupExample
    from .sample_dataset import FEEDBACK, class_answers

    generic = exercise_prompt(None)
    examples = []
    for exercise_class in QVED_EXERCISES:
        named = exercise_prompt(exercise_name(exercise_class))
        answers = class_answers(exercise_class)
        for index in range(copies * len(FEEDBACK[exercise_class][1])):
            answer = answers[index % len(answers)]
            examples.append(WarmupExample(named, answer))
            examples.append(WarmupExample(generic, answer))
            examples.append(WarmupExample(generic, answer, video_text=answer.split(" - ", 1)[0]))
    return examples


def save_demo_base(out_dir: Path, log: Callable[[str], None] = logger.info) -> Path:
    """The tiny base with the demo's LLM, its language warmed up on `warmup_examples()`."""
    from ..model.tiny import save_tiny_checkpoint
    from ..train.text_warmup import warm_up_language

    def warm_up(model, tokenizer) -> None:
        losses = warm_up_language(model, tokenizer, warmup_examples(), steps=WARMUP_STEPS, log=log)
        log(f"text warm-up of the demo's base: loss {losses[0]:.2f} -> {losses[-1]:.2f}")

    return save_tiny_checkpoint(out_dir, seed=0, prepare=warm_up, **DEMO_LLM)


def prepare_demo(demo_dir: str | Path, log: Callable[[str], None] = logger.info) -> tuple[Path, Path, Path]:
    """(base model folder, training dataset folder, held-out dataset folder) under `demo_dir`, each written only
    when it is not there yet."""
    from .sample_dataset import make_sample_dataset

    demo_dir = Path(demo_dir)
    model_dir, dataset_dir, heldout_dir = demo_dir / DEMO_MODEL, demo_dir / DEMO_DATASET, demo_dir / DEMO_HELDOUT
    if not (model_dir / "config.json").is_file():
        save_demo_base(model_dir, log)
        log(f"wrote the demo's tiny base model to {model_dir}")
    if not (dataset_dir / "qved_train.json").is_file():
        make_sample_dataset(dataset_dir, log=log, videos_per_exercise=TRAIN_VIDEOS_PER_EXERCISE, generic_prompt_ratio=1.0)
    if not (heldout_dir / "qved_train.json").is_file():
        make_sample_dataset(
            heldout_dir, seed=HELDOUT_SEED, log=log, videos_per_exercise=HELDOUT_VIDEOS_PER_EXERCISE,
            generic_prompt_ratio=1.0,
        )
    return model_dir, dataset_dir, heldout_dir
