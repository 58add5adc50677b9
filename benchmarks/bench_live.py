"""Live loop speed: real-time factor with and without the per-frame cache (random weights).

    python benchmarks/bench_live.py               # tiny model, published geometry
    python benchmarks/bench_live.py --full-size   # + the published architecture (Qwen2.5-0.5B, CLIP ViT-B/16,
                                                  #   VideoMamba-M): many minutes on a CPU
    python benchmarks/bench_live.py --full-size --visual-tokens all,0.25,0.1   # with visual-token budgets
    python benchmarks/bench_live.py --full-size --quantize w8a8                 # int8 x int8 products

The model is placed as `mvgpt live` places it on this CPU (`runtime.plan_inference("cpu", "auto", --quantize)`).

A synthetic session (two exercises, 30 fps, 320×240) is cut into the live windows (default 8 s every 2 s:
16 frames, 2402 visual tokens each, or the --visual-tokens budgets) by the live loop's own pieces (`cut_windows`, `FrameCache` /
`window_inputs`, `VideoChat.answer`). For every full window (the first, growing windows share few frames)
both ways of building the model inputs are timed back to back, in alternating order, so that machine load
hits both alike:

- frames → inputs: preprocessing, plus with the cache the CLIP features of the frames not seen before;
- encoders: CLIP (uncached only), frame selection, VideoMamba, projectors, splice;
- LLM: prefill and exactly --new-tokens greedy tokens, identical for both (run once per window), and again with
  the window before's answer as a draft (`VideoChat.answer(draft=)`, as `LiveSession` passes it; the same tokens,
  asserted), the two in alternating order. The first full window has no window before.

Real-time factor = (frames → inputs + encoders + LLM) / stride: at or below 1 the model keeps up with a live
camera and answers every window. The tiny model is also run end to end through `LiveSession` with and
without the cache (alternating sessions) as a check of the composed figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import mobilevideogpt  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import torch

from mobilevideogpt.constants import QUANTIZE_CHOICES
from mobilevideogpt.live.cache import FrameCache, window_inputs
from mobilevideogpt.live.frames import VideoFileSource, cut_windows, open_stream
from mobilevideogpt.live.session import LiveSession
from mobilevideogpt.live.windows import WindowPlan
from mobilevideogpt.processing import render_prompt, tokenize_with_placeholders
from mobilevideogpt.qved.sessions import make_sessions
from mobilevideogpt.qved.windows import LIVE_PROMPT


def synthetic_session(folder: Path, seconds: float) -> Path:
    """One session of two exercises covering `seconds` at 30 fps, 320×240."""
    half = seconds / 2
    labels = make_sessions(folder, count=1, seed=0, num_segments=2, segment_s=(half, half), fps=30, size=(320, 240))
    return labels.parent / "session_00.mp4"


def build_model(full_size: bool):
    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
    from mobilevideogpt.model.tiny import build_tiny_model

    torch.manual_seed(0)
    if not full_size:
        return build_tiny_model(seed=0)
    return MobileVideoGPTQwenForCausalLM(MobileVideoGPTQwenConfig.published()).eval()


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def _inputs_and_encode(use_cache: bool, chat, cache: FrameCache, ids, frames, window):
    """Build a window's model inputs one way or the other and run the encoders; (inputs, seconds, seconds)."""
    inner = chat.model.model
    if use_cache:
        inputs, prep = _timed(lambda: cache.inputs(frames, window, "bench"))
        context = {"clip_features": inputs.context_features[None]}
        if inputs.context_scores is not None:
            context["clip_scores"] = inputs.context_scores[None]
    else:
        inputs, prep = _timed(lambda: window_inputs(frames, window, chat.image_size, "bench"))
        context = {"context_images": inputs.context_frames[None]}
    _, enc = _timed(lambda: inner.prepare_multimodal_inputs(ids, images=inputs.frames[None], padding_side="left", **context))
    return inputs, prep, enc


def breakdown(chat, video: Path, args) -> list[dict]:
    """Per full window: cached and uncached inputs + encoders (alternating order), LLM once."""
    ids = torch.tensor([tokenize_with_placeholders(render_prompt(LIVE_PROMPT), chat.tokenizer)])
    source = VideoFileSource(video)
    plan = WindowPlan.create(source.fps, args.window, args.stride, chat.num_frames)
    cache = FrameCache(chat.model.model.encode_clip_frames, chat.image_size)
    rows = []
    previous: list[int] = []  # the window before's answer (none before the first full window)
    with open_stream(source, plan) as stream, torch.inference_mode():
        for window, frames in cut_windows(stream, plan):
            cache.release_before(window.start_frame)
            if window.num_window_frames < plan.window_frames:
                cache.inputs(frames, window, "bench")  # growing first windows: only keep the cache as live would
                continue
            hits_before = cache.hits

            order = (True, False) if len(rows) % 2 == 0 else (False, True)
            built = {use: _inputs_and_encode(use, chat, cache, ids, frames, window) for use in order}
            (inputs, prep_c, enc_c), (_, prep_u, enc_u) = built[True], built[False]
            answers = {}
            for drafted in (False, True) if len(rows) % 2 == 0 else (True, False):
                chat.forget_video()  # each answer prefills the whole prompt, as a new window does
                answers[drafted] = chat.answer(inputs, LIVE_PROMPT, max_new_tokens=args.new_tokens,
                                               min_new_tokens=args.new_tokens, draft=previous if drafted else None)
            assert answers[True].token_ids == answers[False].token_ids, "a draft changed the answer"
            previous = answers[False].token_ids
            llm = {d: a.timings.prefill_s + a.timings.decode_s for d, a in answers.items()}
            rows.append({
                "prep_c": prep_c, "enc_c": enc_c, "prep_u": prep_u, "enc_u": enc_u,
                "llm": llm[False], "llm_draft": llm[True], "confirmed": answers[True].draft_accepted,
                "tokens": len(previous), "reused": cache.hits - hits_before,
            })
            print(f"  window ending {window.end_s:.1f} s: cached {prep_c + enc_c:.3f} s, uncached {prep_u + enc_u:.3f} s, "
                  f"LLM {llm[False]:.3f} s, with the last answer as a draft {llm[True]:.3f} s "
                  f"({answers[True].draft_accepted} of {len(previous)} tokens confirmed)", flush=True)
            if len(rows) == args.windows:
                break
    return rows


def end_to_end(chat, video: Path, args) -> dict[bool, list[float]]:
    """Real-time factor of whole `LiveSession` runs, cached and uncached alternating."""
    factors: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for cache in (True, False) if repeat % 2 == 0 else (False, True):
            session = LiveSession(chat, prompt=LIVE_PROMPT, window_s=args.window, stride_s=args.stride, cache=cache,
                                  max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            factors[cache].append(session.run(VideoFileSource(video)).summary.real_time_factor)
    return factors


def bench(name: str, full_size: bool, video: Path, tokenizer, args) -> list[dict]:
    from mobilevideogpt.chat import VideoChat
    from mobilevideogpt.model.token_budget import parse_visual_tokens, set_visual_token_budget

    from mobilevideogpt.model.assemble import place_for_inference
    from mobilevideogpt.runtime import plan_inference

    started = time.perf_counter()
    plan = plan_inference("cpu", "auto", args.quantize)  # what `mvgpt live` runs on this CPU
    chat = VideoChat(place_for_inference(build_model(full_size), plan), tokenizer, plan=plan)
    print(f"{name} on {plan.describe()}: built in {time.perf_counter() - started:.0f} s; warming up ...", flush=True)
    chat.answer(chat.load_video(video), LIVE_PROMPT, max_new_tokens=2)
    results = []
    for budget in args.visual_tokens.split(","):
        set_visual_token_budget(chat.model.config, parse_visual_tokens(budget))
        print(f"{name}, {chat.visual_tokens} visual tokens per window:", flush=True)
        rows = breakdown(chat, video, args)
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        result = {"model": name, "visual_tokens": chat.visual_tokens, "windows": len(rows), "frames": chat.num_frames,
                  **median}  # fmt: skip
        if not full_size:
            result["end_to_end"] = end_to_end(chat, video, args)
        results.append(result)
    return results


def print_table(results: list[dict], stride: float) -> None:
    print("\nMedians over full windows (16 frames each):\n")
    print("| model | visual tokens | frame cache | frames → inputs | encoders | LLM (prefill + decode) | per window "
          "| real-time factor | frames reused |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for cache, prep, enc in ((True, r["prep_c"], r["enc_c"]), (False, r["prep_u"], r["enc_u"])):
            total = prep + enc + r["llm"]
            reused = f"{r['reused']:.0f}/{r['frames']}" if cache else "-"
            print(f"| {r['model']} | {r['visual_tokens']} | {'on' if cache else 'off'} | {prep:.3f} s | {enc:.3f} s "
                  f"| {r['llm']:.3f} s | {total:.3f} s | {total / stride:.2f} | {reused} |")
        saved = (r["prep_u"] + r["enc_u"]) - (r["prep_c"] + r["enc_c"])
        print(f"|  |  | saved by the cache | | | | {saved:.3f} s ({saved / (r['prep_u'] + r['enc_u'] + r['llm']):.0%}) "
              "| | |")
        total = r["prep_c"] + r["enc_c"] + r["llm_draft"]
        print(f"|  |  | on, the window before's answer as a draft | | | {r['llm_draft']:.3f} s | {total:.3f} s "
              f"| {total / stride:.2f} | {r['confirmed']:.0f} of {r['tokens']:.0f} tokens confirmed |")
    for r in results:
        if "end_to_end" in r:
            cached, plain = (statistics.median(r["end_to_end"][c]) for c in (True, False))
            print(f"\n{r['model']}, {r['visual_tokens']} visual tokens, whole LiveSession runs (all windows, median of "
                  f"{len(r['end_to_end'][True])}): real-time factor {cached:.2f} with the cache, {plain:.2f} without")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="also benchmark the published architecture")
    parser.add_argument("--seconds", type=float, default=24.0, help="session length (default 24 s)")
    parser.add_argument("--window", type=float, default=8.0, help="window seconds (default 8)")
    parser.add_argument("--stride", type=float, default=2.0, help="stride seconds (default 2)")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per window (default 8)")
    parser.add_argument("--windows", type=int, default=8, help="full windows timed per model (default 8)")
    parser.add_argument("--full-windows", type=int, default=3, help="full windows timed at full size (default 3)")
    parser.add_argument("--repeats", type=int, default=4, help="end-to-end session pairs, tiny model (default 4)")
    parser.add_argument(
        "--visual-tokens", default="all,0.25",
        help="comma-separated visual-token budgets to time (all, counts or fractions; default all,0.25)",
    )  # fmt: skip
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES, help="as `mvgpt live --quantize`")
    args = parser.parse_args()

    from mobilevideogpt.runtime import cpu_features
    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    torch.set_grad_enabled(False)
    tokenizer = build_qwen25_tokenizer()
    load = os.getloadavg()
    print(f"CPU {cpu_features().describe_machine()}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}, "
          f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_session(Path(tmp), args.seconds)
        results = bench("tiny (random)", False, video, tokenizer, args)
        if args.full_size:
            args.windows = args.full_windows
            results += bench("Mobile-VideoGPT-0.5B architecture (random)", True, video, tokenizer, args)
    print_table(results, args.stride)
    load = os.getloadavg()
    print(f"\nload average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
