"""How far a training-free visual-token budget moves the model's output, on one video.

    python benchmarks/budget_deviation.py --full-size            # published architecture, random weights, fp32
    python benchmarks/budget_deviation.py --budgets 0.5,0.25,0.1  # the tiny model (seconds)

The model first answers with all visual tokens (greedy, --new-tokens tokens). Then, for each budget, it reads the
same prompt with fewer tokens, and the table compares with the full budget's run:

- logit cosine: cosine similarity of the next-token logits at the end of the prompt;
- first token: whether the budget's greedy first token is the full budget's;
- greedy agreement: teacher-forced on the full budget's answer, the share of its positions where the budget's
  greedy choice is the same token;
- prefill: time of the prompt's forward pass (the same process, one after the other: read it as ratios).

Frames and CLIP features are computed once; each budget reruns frame selection, VideoMamba, the projectors and
the language model. With random weights the figures say how much the inputs changed, not how much quality a
trained model keeps (the demo's table measures that: README).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import mobilevideogpt  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

PROMPT = "Analyze this exercise video and provide corrective feedback."


def prompt_embeddings(model, ids, video, clip, budget):
    """The spliced prompt (1, N, H) with `budget` visual tokens (None: all)."""
    from mobilevideogpt.model.splice import splice_visual_tokens

    model.config.visual_token_budget = budget
    features, scores = clip
    visual = model.model.encode_videos(video.frames[None], None, features[None], scores[None])
    return splice_visual_tokens(ids, model.model.embed_tokens, visual, padding_side="left").inputs_embeds


def measure(model, ids, video, clip, budget, answer):
    """(next-token logits at the prompt's end, greedy choices along `answer`, prefill seconds) for `budget`."""
    import torch

    embeds = prompt_embeddings(model, ids, video, clip, budget)
    started = time.perf_counter()
    prefill = model(inputs_embeds=embeds, logits_to_keep=1).logits[0, -1]
    seconds = time.perf_counter() - started
    choices = None
    if answer is not None:
        forced = torch.cat([embeds, model.model.embed_tokens(answer[None, :-1])], dim=1)
        logits = model(inputs_embeds=forced, logits_to_keep=len(answer)).logits[0]
        choices = logits.argmax(dim=-1)
    return prefill.float(), choices, seconds


def greedy_answer(model, embeds, tokens: int):
    return model.generate(inputs_embeds=embeds, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="the published architecture (default: tiny)")
    parser.add_argument("--budgets", default="0.5,0.25,0.1", help="comma-separated counts or fractions")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens of the full budget's answer")
    parser.add_argument("--video", type=Path, help="video to use (default: the synthetic clip of bench_inference)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch

    from bench_inference import model_config, synthetic_video
    from mobilevideogpt.data.video import load_video_inputs
    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
    from mobilevideogpt.model.token_budget import budget_for, parse_visual_tokens
    from mobilevideogpt.processing import VideoTextProcessor
    from mobilevideogpt.runtime import cpu_features
    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    torch.set_grad_enabled(False)
    config = model_config(args.full_size)
    budgets = [budget_for(config, parse_visual_tokens(b)) for b in args.budgets.split(",") if b.strip()]
    tokenizer = build_qwen25_tokenizer()
    torch.manual_seed(0)
    model = MobileVideoGPTQwenForCausalLM(config).eval()
    processor = VideoTextProcessor.from_model_config(tokenizer, config)
    ids = torch.tensor([processor.prompt_ids(PROMPT)])
    with tempfile.TemporaryDirectory() as tmp:
        video = load_video_inputs(
            args.video or synthetic_video(Path(tmp)), num_frames=processor.num_frames, image_size=processor.image_size
        )
    clip = model.model.image_vision_tower.features_and_scores(video.context_frames)

    answer = greedy_answer(model, prompt_embeddings(model, ids, video, clip, None), args.new_tokens)
    full_logits, full_choices, full_seconds = measure(model, ids, video, clip, None, answer)
    full = config.full_visual_tokens_per_video
    rows = [{"visual_tokens": full, "logit_cosine": 1.0, "first_token_same": True,
             "greedy_agreement": float((full_choices == answer).float().mean()), "prefill_s": full_seconds}]  # fmt: skip
    for budget in budgets:
        logits, choices, seconds = measure(model, ids, video, clip, budget, answer)
        rows.append({
            "visual_tokens": budget or full,
            "logit_cosine": float(torch.nn.functional.cosine_similarity(logits, full_logits, dim=0)),
            "first_token_same": bool(logits.argmax() == full_logits.argmax()),
            "greedy_agreement": float((choices == answer).float().mean()),
            "prefill_s": seconds,
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    size = "published architecture (random weights, fp32)" if args.full_size else "tiny (random weights, fp32)"
    print(f"\n{size}; CPU {cpu_features().describe()}; {args.new_tokens}-token greedy answer of the full budget\n")
    print("| visual tokens | share | logit cosine | first token | greedy agreement | prefill | prefill / full |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['visual_tokens']} | {row['visual_tokens'] / full:.0%} | {row['logit_cosine']:.4f} | "
            f"{'same' if row['first_token_same'] else 'differs'} | {row['greedy_agreement']:.0%} | "
            f"{row['prefill_s']:.1f} s | {row['prefill_s'] / full_seconds:.2f}× |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
