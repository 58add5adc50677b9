"""Inference speed: time to first token for a 16-frame video and greedy decode tokens/s (random weights).

    python benchmarks/bench_inference.py                 # tiny model (published token geometry), ~20 s on CPU
    python benchmarks/bench_inference.py --full-size     # + the published architecture (Qwen2.5-0.5B, CLIP
                                                         #   ViT-B/16, VideoMamba-M); minutes on CPU, meant for a GPU

Both models see the published pipeline: 16 frames → 2402 visual tokens spliced into the chat prompt. Each
run is one `VideoChat.answer` (the code path of `inference.py`): decode the video, encode it (CLIP, frame
selection, VideoMamba, projectors), prefill, then exactly --new-tokens greedy tokens (end-of-turn is held back,
so every run decodes the same length). Medians over --runs after one warm-up run.

Reference: the Mobile-VideoGPT paper reports 45.9 tokens/s (0.5B) on an RTX A6000; the goal for an H100
is at least twice that.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from mobilevideogpt.chat import VideoChat
from mobilevideogpt.qved.sample_dataset import SampleVideoSpec, render_frames, write_video
from mobilevideogpt.runtime import resolve_device, resolve_dtype

PAPER_TOKENS_PER_S = 45.9
PROMPT = "Analyze this exercise video and provide corrective feedback."


def synthetic_video(folder: Path) -> Path:
    """A 10 s, 30 fps, 320×240 clip of moving shapes (the 1-fps grid then gives 10 → 16 sampled frames)."""
    spec = SampleVideoSpec("squats", "bench", num_frames=300, fps=30, width=320, height=240, arm="right")
    path = folder / "bench.mp4"
    write_video(path, render_frames(spec, class_index=4), spec.fps)
    return path


def build_model(full_size: bool):
    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
    from mobilevideogpt.model.tiny import build_tiny_model

    torch.manual_seed(0)
    if not full_size:
        return build_tiny_model(seed=0)
    return MobileVideoGPTQwenForCausalLM(MobileVideoGPTQwenConfig.published()).eval()


def bench(name: str, full_size: bool, video: Path, tokenizer, args) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = build_model(full_size).to(device=device, dtype=dtype)
    chat = VideoChat(model, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    runs = []
    for i in range(args.runs + 1):
        result = chat.answer(video, PROMPT, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        if i:  # the first run warms up kernels and caches
            runs.append(result.timings)
    median = statistics.median
    row = {
        "model": name,
        "params": params,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "frames": chat.num_frames,
        "visual_tokens": model.config.visual_tokens_per_video,
        "decode_video_s": median([t.video_decode_s for t in runs]),
        "encoders_s": median([t.encode_s for t in runs]),
        "prefill_s": median([t.prefill_s for t in runs]),
        "ttft_s": median([t.time_to_first_token_s for t in runs]),
        "decode_tok_s": median([t.decode_tokens_per_s for t in runs]),
        "new_tokens": runs[0].new_tokens,
    }
    del chat, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(rows: list[dict]) -> None:
    header = (
        "| model | params | device | dtype | frames → visual tokens | video decode | encoders | prefill "
        "| time to first token | greedy decode |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(
            f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['device']} | {r['dtype']} | {r['frames']} → "
            f"{r['visual_tokens']} | {r['decode_video_s']:.3f} s | {r['encoders_s']:.3f} s | {r['prefill_s']:.3f} s "
            f"| {r['ttft_s']:.3f} s | {r['decode_tok_s']:.1f} tok/s ({r['new_tokens']} tokens) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="also benchmark the published architecture")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up (default 3)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per run (default 64)")
    parser.add_argument("--video", type=Path, help="video to use (default: a synthetic 10 s clip)")
    args = parser.parse_args()

    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    tokenizer = build_qwen25_tokenizer()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or synthetic_video(Path(tmp))
        rows = [bench("tiny (random)", False, video, tokenizer, args)]
        if args.full_size:
            rows.append(bench("Mobile-VideoGPT-0.5B architecture (random)", True, video, tokenizer, args))
    print_table(rows)
    print(
        f"\nPaper: {PAPER_TOKENS_PER_S} tok/s (0.5B, RTX A6000); goal on an H100: ≥ {2 * PAPER_TOKENS_PER_S:.1f} tok/s."
    )


if __name__ == "__main__":
    main()
