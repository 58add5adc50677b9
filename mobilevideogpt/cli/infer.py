"""`mvgpt infer` (`python inference.py`): answer a prompt about one video with a base or finetuned Mobile-VideoGPT.

Order of work, so mistakes surface before the slow part: the model path is classified (incomplete or
unusable checkpoints are refused), the video is decoded with the model's frame geometry, and only then are
the weights loaded. The answer streams to stdout; status lines and timings go to stderr. `--json` prints one
JSON object instead (no streaming). `--interactive` then asks for further questions about the same video at a
prompt (an empty line or end of input ends); the video's prompt prefix stays cached, so each follow-up pays only
for its own text. Every expected failure is one `error: ...` line on stderr and exit code 1 (2 for bad arguments);
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator

from .common import add_model_options, load_chat, quiet_libraries

HELP = "answer a prompt about one video (the guide's `python inference.py`)"
DESCRIPTION = (
    "Answer a prompt about a video with Mobile-VideoGPT: a base checkpoint (hub id or folder) "
    "or a finetuning output (checkpoint-N/, checkpoint-final/, or the run folder)."
)
PARSER_KWARGS = {
    "formatter_class": argparse.RawDescriptionHelpFormatter,
    "epilog": """\
--json prints one object: {"model": {"model_path", "base", "checkpoint", "note", "device", "dtype", "plan",
  "visual_tokens"},
  "video_path", "prompt", "text", "num_new_tokens", "finish_reason" ("stop" | "length"), "frame_indices",
  "timings": {"video_decode_s", "encode_s", "prefill_s", "decode_s", "total_s", "new_tokens", "cached_tokens",
              "time_to_first_token_s", "decode_tokens_per_s", "tokens_per_s"},
  "generation": {"max_new_tokens", "temperature", "top_p", "seed"}}
With --interactive, one such object per answer, one per line.

On the CPU, --dtype auto picks per stage what this CPU runs fastest without losing quality: bf16 encoders and
prefill where it has bf16 matrix units (AMX / AVX512-bf16), and the language model's weights kept in bf16 and
read by a compiled fp32 kernel in decode steps. --quantize int8 stores those weights in int8 instead (faster decode,
slightly different numbers); --quantize w8a8 also multiplies int8 activations by int8 weights in the prefill and the
encoders (a sooner first token on CPUs without bf16 units, larger differences). --dtype fp32 runs everything in
plain fp32.

Default prompt: "Analyze this {exercise} video and provide corrective feedback." (the QVED training prompt);
{exercise} comes from --exercise, else from the video's folder when it is a QVED class (dataset/squats/...),
else it reads "Analyze this exercise video and provide corrective feedback.".
""",
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--video_path", required=True, help="video file to analyse")
    parser.add_argument("--prompt", help="question about the video (default: the QVED training prompt, see below)")
    parser.add_argument("--exercise", help="exercise name for the default prompt, e.g. 'squats'")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="default 512")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling with --temperature > 0")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument(
        "--interactive", action="store_true",
        help="after the first answer, ask more questions about the same video (empty line or Ctrl-D ends)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with text and timings")
    parser.add_argument("--no_stream", dest="stream", action="store_false", help="print the answer when complete")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def prompt_for(args: argparse.Namespace) -> str:
    """--prompt, else the QVED prompt for --exercise or the video's class folder, else the generic one."""
    from ..qved import exercise_from_path, exercise_prompt

    if args.prompt is not None:
        if not args.prompt.strip():
            raise ValueError("--prompt is empty; ask a question about the video, or drop --prompt for the default")
        return args.prompt
    return exercise_prompt(args.exercise or exercise_from_path(args.video_path))


def _summary(result, frames: int, visual_tokens: int) -> str:
    t = result.timings
    rate = f"{t.decode_tokens_per_s:.1f} tok/s" if t.decode_tokens_per_s else "n/a tok/s"
    cached = f" | {t.cached_tokens} prompt tokens from the video's cache" if t.cached_tokens else ""
    return (
        f"[{frames} frames, {visual_tokens} visual tokens | decode {t.video_decode_s:.2f} s | encoders {t.encode_s:.2f} s | prefill "
        f"{t.prefill_s:.2f} s | first token after {t.time_to_first_token_s:.2f} s | {result.num_new_tokens} new "
        f"tokens, {rate} | {result.finish_reason}{cached}]"
    )


def _questions(first: str, interactive: bool, ask: Callable[[], str | None]) -> Iterator[str]:
    """The first prompt, then (interactive) each further question until an empty line or end of input."""
    yield first
    while interactive:
        question = ask()
        if question is None or not question.strip():
            return
        yield question


def run(args: argparse.Namespace) -> int:
    if not args.debug:
        quiet_libraries()
    from ..checkpoints import resolve_model_path
    from ..data.video import VideoDecodeError, load_video_inputs
    from ..model.assemble import load_model_config
    from ..runtime import dtype_name, plan_inference

    def status(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    def ask() -> str | None:
        print("question> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    prompt = prompt_for(args)
    source = resolve_model_path(args.model_path, args.model_base)
    plan = plan_inference(args.device, args.dtype, args.quantize)
    if source.note:
        status(source.note)
    config = load_model_config(source)
    started = time.perf_counter()
    try:
        video = load_video_inputs(args.video_path, num_frames=config.num_frames, image_size=config.clip_vision().image_size)
    except VideoDecodeError as err:
        raise VideoDecodeError(err.path, f"{err.reason}; check --video_path (it must be a readable video file)") from err
    decode_s = time.perf_counter() - started

    chat = load_chat(args, status, source, plan)
    streaming = args.stream and not args.json
    model_info = {**source.to_dict(), "device": str(plan.device), "dtype": dtype_name(plan.llm_dtype),
                  "plan": plan.to_dict(), "visual_tokens": chat.visual_tokens}  # fmt: skip

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    for number, question in enumerate(_questions(prompt, args.interactive, ask)):
        result = chat.answer(
            video,
            question,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            on_text=emit if streaming else None,
        )
        if number == 0:
            # The video was decoded before the model loaded (to fail fast); count that time where it belongs.
            result.timings = dataclasses.replace(
                result.timings, video_decode_s=decode_s, total_s=result.timings.total_s + decode_s
            )
        if args.json:
            payload = {"model": model_info, **result.to_dict()}
            indent = None if args.interactive else 2  # one JSON line per answer at the prompt
            print(json.dumps(payload, indent=indent, ensure_ascii=False), flush=True)
            continue
        if streaming:
            emit("\n")
        else:
            print(result.text, flush=True)
        if not result.text:
            status(
                f"(the model answered with {result.num_new_tokens} token(s) of whitespace only: an untrained or random "
                "model? Finetune it first, e.g. `mvgpt demo`)"
            )
        status(f"Prompt: {result.prompt}")
        status(_summary(result, config.num_frames, chat.visual_tokens))
    return 0
