"""Inference speed: a new video's time to first token, decode tokens/s and a follow-up question (random weights).

    python benchmarks/bench_inference.py                  # tiny model (published token geometry), ~1 min on CPU
    python benchmarks/bench_inference.py --full-size      # the published architecture (Qwen2.5-0.5B, CLIP ViT-B/16,
                                                          # VideoMamba-M) next to a bare transformers Qwen2 at fp32
    python benchmarks/bench_inference.py --full-size --paths bare,auto,int8,fp32 --repeats 2 --busy 1
    python benchmarks/bench_inference.py --full-size --paths bare,auto,auto@0.5,auto@0.25,auto@0.1
    python benchmarks/bench_inference.py --full-size --paths bare,auto,w8a8,auto@0.25,w8a8@0.25

A path PATH@BUDGET runs PATH with a visual-token budget (`--visual-tokens BUDGET`: a count or a fraction of the
2402 tokens); the bare model's prompt stays as long as the full budget's, so "TTFT / bare prefill" compares with
the model that does nothing special.

Each path runs in its own process (so its peak RSS is its own), in the order given, `--repeats` times interleaved
(bare, auto, bare, auto, ...), and the table shows the median of the repeats (min-max when there are several):

- bare: transformers' Qwen2ForCausalLM of the same size at fp32 (its defaults: SDPA attention, DynamicCache), greedy
  `generate` from a prompt of the same length as the project's (visual tokens + text): prefill = time to first token.
- auto / int8 / w8a8 / fp32 / bf16: `VideoChat.answer` (the code path of `inference.py`) with the model placed by
  `runtime.plan_inference(dtype=..., quantize=...)`: decode the video, both encoders (CLIP, frame selection,
  VideoMamba, projectors), prefill, then the same number of greedy tokens; then a follow-up question about the same
  video (its prompt prefix cached). "fp32" is the project's plain fp32 path (`--dtype fp32`).

Every generation decodes exactly --new-tokens tokens (end-of-turn held back). One warm-up run (a short prompt, two
tokens) precedes the timed one in each process. `--busy N` runs N CPU-bound processes (busy loops) alongside every
measurement, the "one other CPU job" case. The table names the CPU it ran on and prints the load average: on a shared
machine read the ratios (measured in the same run), not the seconds.

Reference: the Mobile-VideoGPT paper reports 45.9 tokens/s (0.5B) on an RTX A6000 and 7.3 tokens/s on a Jetson
Orin Nano.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mobilevideogpt  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from mobilevideogpt import openmp_wait

PAPER_TOKENS_PER_S = {"RTX A6000": 45.9, "Jetson Orin Nano": 7.3}
PROMPT = "Analyze this exercise video and provide corrective feedback."
FOLLOW_UP = "Which body part should the person keep straighter?"
PROJECT_PATHS = {  # name → (dtype, quantize)
    "auto": ("auto", None),
    "int8": ("auto", "int8"),
    "w8a8": ("auto", "w8a8"),
    "fp32": ("fp32", None),
    "bf16": ("bf16", None),
}


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def synthetic_video(folder: Path) -> Path:
    """A 10 s, 30 fps, 320×240 clip of moving shapes (the 1-fps grid then gives 10 → 16 sampled frames)."""
    from mobilevideogpt.qved.sample_dataset import SampleVideoSpec, render_frames, write_video

    spec = SampleVideoSpec("squats", "bench", num_frames=300, fps=30, width=320, height=240, arm="right")
    path = folder / "bench.mp4"
    write_video(path, render_frames(spec, class_index=4), spec.fps)
    return path


def model_config(full_size: bool):
    from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
    from mobilevideogpt.model.tiny import tiny_config

    return MobileVideoGPTQwenConfig.published() if full_size else tiny_config()


def prompt_length(config, tokenizer) -> int:
    """Positions of the project's prompt once the video's visual tokens are spliced in."""
    from mobilevideogpt.processing import VideoTextProcessor

    ids = VideoTextProcessor.from_model_config(tokenizer, config).prompt_ids(PROMPT)
    return len(ids) - 1 + config.visual_tokens_per_video


class StepClock:
    """Wall and CPU time at the end of every generation step (the LM head's forward: prefill first, then one per
    token), measured the same way for every path. CPU time is this process's (all threads): with other processes
    on the machine it shows how much of the CPU a path got, and CPU-time ratios are a second view of speed."""

    def __init__(self, lm_head) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        lm_head.register_forward_hook(lambda *_: self.mark())

    def mark(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def start(self) -> None:
        self.wall, self.cpu = [], []
        self.mark()

    def rates(self) -> dict:
        """From start(): prefill (→ first step) and steady decode (first → last step), wall and CPU."""
        steps = len(self.wall) - 2  # decode steps after the prefill's
        return {
            "prefill_s": self.wall[1] - self.wall[0],
            "prefill_cpu_s": self.cpu[1] - self.cpu[0],
            "decode_tok_s": steps / (self.wall[-1] - self.wall[1]),
            "decode_cpu_s_per_token": (self.cpu[-1] - self.cpu[1]) / steps,
        }


def run_bare(args, config, tokenizer) -> dict:
    """transformers' own Qwen2 at fp32, greedy from a prompt as long as the project's."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()  # the LLM part of the config: a plain Qwen2 of the same size
    length = prompt_length(config, tokenizer)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (1, length), generator=generator)
    settings = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    clock = StepClock(model.lm_head)
    with torch.inference_mode():
        model.generate(ids[:, :64], max_new_tokens=2, min_new_tokens=2, **settings)  # warm-up
        clock.start()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **settings)
    rates = clock.rates()
    return {
        **rates,
        "cpu_share": (clock.cpu[-1] - clock.cpu[0]) / (clock.wall[-1] - clock.wall[0]),
        "prompt_tokens": length,
        "ttft_s": rates["prefill_s"],
        "ttft_cpu_s": rates["prefill_cpu_s"],
        "new_tokens": out.shape[1] - length,
    }


class StageClock:
    """Wall time spent in the named modules' forward passes (CLIP, VideoMamba, projectors)."""

    def __init__(self, modules: dict) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        self._started: dict[str, float] = {}
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda m, a, n=name: self._started.__setitem__(n, time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, n=name: self._add(n))

    def _add(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._started[name]

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def run_project(args, config, tokenizer, video: Path, dtype: str, quantize: str | None, budget: str | None) -> dict:
    import torch

    from mobilevideogpt import VideoChat
    from mobilevideogpt.model.assemble import place_for_inference
    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
    from mobilevideogpt.model.token_budget import parse_visual_tokens, set_visual_token_budget
    from mobilevideogpt.runtime import cpu_features, plan_inference

    set_visual_token_budget(config, parse_visual_tokens(budget))

    plan = plan_inference(args.device, dtype, quantize)
    torch.manual_seed(0)
    # Built the way the published checkpoint stores its weights (bf16) when the plan keeps LLM weights packed, so
    # the process never holds a full fp32 copy (as loading that checkpoint does not need to); fp32 otherwise.
    torch.set_default_dtype(torch.bfloat16 if plan.llm_weights else torch.float32)
    try:
        model = MobileVideoGPTQwenForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model = place_for_inference(model, plan)
    chat = VideoChat(model, tokenizer, plan=plan)
    inner = model.model
    stages = StageClock(
        {
            "clip": inner.image_vision_tower,
            "videomamba": inner.vision_tower,
            "video_projector": inner.mm_projector,
            "image_projector": inner.image_mm_projector,
        }
    )
    tokens = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    clock = StepClock(model.lm_head)
    chat.answer(video, PROMPT, max_new_tokens=2, min_new_tokens=2)  # warm-up
    chat.forget_video()
    stages.reset()
    clock.start()
    new = chat.answer(video, PROMPT, **tokens).timings
    encoder_stages = dict(stages.seconds)
    cpu_share = (clock.cpu[-1] - clock.cpu[0]) / (clock.wall[-1] - clock.wall[0])
    llm = clock.rates()  # its decode numbers; the prefill is `new.prefill_s` (start() was before the encoders)
    follow = chat.answer(video, FOLLOW_UP, **tokens).timings
    if follow.cached_tokens == 0:
        raise RuntimeError("the follow-up question did not use the video's cached prefix")
    return {
        "plan": plan.describe(),
        "cpu": cpu_features().describe(),
        "prompt_tokens": prompt_length(config, tokenizer),
        "visual_tokens": config.visual_tokens_per_video,
        "video_decode_s": new.video_decode_s,
        "encoders_s": new.encode_s,
        "encoder_stages_s": encoder_stages,
        "prefill_s": new.prefill_s,
        "ttft_s": new.time_to_first_token_s,
        "ttft_cpu_s": llm["prefill_cpu_s"],  # from start(): video decode, encoders and prefill
        "decode_tok_s": llm["decode_tok_s"],
        "decode_cpu_s_per_token": llm["decode_cpu_s_per_token"],
        "new_tokens": new.new_tokens,
        "follow_up_ttft_s": follow.time_to_first_token_s,
        "follow_up_decode_tok_s": follow.decode_tokens_per_s,
        "follow_up_cached_tokens": follow.cached_tokens,
        "cpu_share": cpu_share,
    }


def child(args) -> None:
    """One path in this process; prints one JSON line."""
    import torch

    from mobilevideogpt.tokenizer import build_qwen25_tokenizer

    torch.set_grad_enabled(False)
    load_before = load_average()
    tokenizer = build_qwen25_tokenizer()
    config = model_config(args.full_size)
    if args.child == "bare":
        row = run_bare(args, config, tokenizer)
    else:
        name, _, budget = args.child.partition("@")
        dtype, quantize = PROJECT_PATHS[name]
        row = run_project(args, config, tokenizer, args.video, dtype, quantize, budget or None)
    row.update(path=args.child, peak_rss_gib=peak_rss_gib(), threads=torch.get_num_threads(),
               load=f"{load_before} → {load_average()}", omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
               gomp_spincount=os.environ.get("GOMP_SPINCOUNT"))
    print(json.dumps(row), flush=True)


def start_busy(count: int) -> list[subprocess.Popen]:
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def spawn(args, path: str, video: Path, timeout: float | None = None) -> dict:
    """Run one path in a child process (at most `timeout` seconds: subprocess.TimeoutExpired past it)."""
    command = [sys.executable, __file__, "--child", path, "--video", str(video), "--device", args.device,
               "--new-tokens", str(args.new_tokens)] + (["--full-size"] if args.full_size else [])  # fmt: skip
    env = dict(os.environ)
    if args.omp_wait_policy:
        # An empty value is kept by the project (the user "set" it) and ignored by libgomp: its own default. A spin
        # count the project chose for this process would override the policy asked for, so it does not pass on.
        env["OMP_WAIT_POLICY"] = "" if args.omp_wait_policy == "unset" else args.omp_wait_policy
        if "GOMP_SPINCOUNT" in openmp_wait.APPLIED:
            env.pop("GOMP_SPINCOUNT", None)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"path {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    text = fmt.format(statistics.median(values))
    return text + (f" ({fmt.format(min(values))}–{fmt.format(max(values))})" if len(values) > 1 else "")


def print_table(rows: dict[str, list[dict]]) -> None:
    bare = rows.get("bare")
    bare_prefill = statistics.median(r["prefill_s"] for r in bare) if bare else None
    bare_prefill_cpu = statistics.median(r["ttft_cpu_s"] for r in bare) if bare else None
    bare_decode = statistics.median(r["decode_tok_s"] for r in bare) if bare else None
    bare_cpu = statistics.median(r["decode_cpu_s_per_token"] for r in bare) if bare else None
    print(
        "| path | video decode | encoders | prefill | time to first token | decode | decode CPU time | follow-up TTFT "
        "| peak RSS | TTFT / bare prefill (CPU-time view) | decode / bare decode (CPU-time view) "
        "| follow-up / bare prefill |"
    )
    print("|---" * 12 + "|")
    for path, runs in rows.items():
        cells = [
            summarise([r.get("video_decode_s") for r in runs], "{:.2f} s"),
            summarise([r.get("encoders_s") for r in runs], "{:.1f} s"),
            summarise([r["prefill_s"] for r in runs], "{:.1f} s"),
            summarise([r["ttft_s"] for r in runs], "{:.1f} s"),
            summarise([r["decode_tok_s"] for r in runs], "{:.2f} tok/s"),
            summarise([r["decode_cpu_s_per_token"] * 1e3 for r in runs], "{:.0f} ms/token"),
            summarise([r.get("follow_up_ttft_s") for r in runs], "{:.2f} s"),
            summarise([r["peak_rss_gib"] for r in runs], "{:.2f} GiB"),
        ]
        if bare_prefill:
            cells += [
                summarise([r["ttft_s"] / bare_prefill for r in runs], "{:.2f}×")
                + " ("
                + summarise([r["ttft_cpu_s"] / bare_prefill_cpu for r in runs], "{:.2f}×")
                + ")",
                summarise([r["decode_tok_s"] / bare_decode for r in runs], "{:.2f}×")
                + " ("
                + summarise([bare_cpu / r["decode_cpu_s_per_token"] for r in runs], "{:.2f}×")
                + ")",
                summarise([r.get("follow_up_ttft_s") and r["follow_up_ttft_s"] / bare_prefill for r in runs], "{:.3f}×"),
            ]
        else:
            cells += ["–"] * 3
        print(f"| {path} | " + " | ".join(cells) + " |")
    print()
    for path, runs in rows.items():
        first = runs[0]
        detail = f"plan: {first['plan']}, CPU {first['cpu']}" if "plan" in first else "transformers Qwen2ForCausalLM, fp32"
        stages = first.get("encoder_stages_s")
        if stages:
            detail += "; encoders: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
        loads = "; ".join(r["load"] for r in runs)
        share = summarise([r["cpu_share"] for r in runs], "{:.2f}")
        print(f"- {path}: {detail}; prompt {first['prompt_tokens']} tokens, {first['new_tokens']} greedy tokens, "
              f"{first['threads']} threads, OMP_WAIT_POLICY={first['omp_wait_policy']}, "
              f"GOMP_SPINCOUNT={first.get('gomp_spincount')}; CPU seconds per wall second "
              f"{share}; load average {loads}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="the published architecture (default: tiny)")
    parser.add_argument(
        "--paths",
        default="bare,auto,auto@0.25",
        help="comma-separated: bare, auto, int8, w8a8, fp32, bf16, each project path optionally @BUDGET (visual tokens: a "
        "count or a fraction, e.g. auto@0.25); default bare,auto,auto@0.25",
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of every path (default 1)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per answer (default 32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running alongside (default 0)")
    parser.add_argument(
        "--omp-wait-policy",
        help="OMP_WAIT_POLICY for the measured processes: PASSIVE, ACTIVE, or 'unset' for libgomp's own default "
        "(spin a while, then sleep); default: what the project sets (mobilevideogpt/openmp_wait.py)",
    )
    parser.add_argument("--video", type=Path, help="video to use (default: a synthetic 10 s clip)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p != "bare" and p.partition("@")[0] not in PROJECT_PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from bare, {', '.join(PROJECT_PATHS)}")
    rows: dict[str, list[dict]] = {p: [] for p in paths}
    busy = start_busy(args.busy)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            video = args.video or synthetic_video(Path(tmp))
            for _ in range(args.repeats):
                for path in paths:
                    rows[path].append(spawn(args, path, video))
                    print(f"{path}: {json.dumps(rows[path][-1])}", file=sys.stderr, flush=True)
    finally:
        for process in busy:
            process.kill()
    from mobilevideogpt.runtime import cpu_features

    size = "published architecture (random weights)" if args.full_size else "tiny (random weights)"
    machine = cpu_features().describe_machine()
    print(f"\n{size} on {machine}, {args.new_tokens} greedy tokens, {args.busy} busy process(es) alongside\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
