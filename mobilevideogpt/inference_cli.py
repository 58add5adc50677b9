"""`python inference.py`: answer a prompt about one video with a base or finetuned Mobile-VideoGPT.

Order of work, so mistakes surface before the slow part: the model path is classified (incomplete or
unusable checkpoints are refused), the video is decoded with the model's frame geometry, and only then are
the weights loaded. The answer streams to stdout; status lines and timings go to stderr. `--json` prints one
JSON object instead (no streaming). Every expected failure is one `error: ...` line on stderr and exit code 1
(2 for bad arguments); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings

from .data.video import VideoDecodeError, load_video_inputs
from .model.loading import one_line
from .model.finetuned import ModelLoadError, load_model_config, resolve_device, resolve_dtype, resolve_model_path

JSON_FIELDS_HELP = """\
--json prints one object: {"model": {"model_path", "base", "checkpoint", "note", "device", "dtype"},
  "video_path", "prompt", "text", "num_new_tokens", "finish_reason" ("stop" | "length"), "frame_indices",
  "timings": {"video_decode_s", "encode_s", "prefill_s", "decode_s", "total_s", "new_tokens",
              "time_to_first_token_s", "decode_tokens_per_s", "tokens_per_s"},
  "generation": {"max_new_tokens", "temperature", "top_p", "seed"}}

Default prompt: "Analyze this {exercise} video and provide corrective feedback." (the QVED training prompt);
{exercise} comes from --exercise, else from the video's folder when it is a QVED class (dataset/squats/...),
else it reads "Analyze this exercise video and provide corrective feedback.".
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference.py",
        description="Answer a prompt about a video with Mobile-VideoGPT: a base checkpoint (hub id or folder) "
        "or a finetuning output (checkpoint-N/, checkpoint-final/, or the run folder).",
        epilog=JSON_FIELDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        "--model-path",
        required=True,
        help="hub id, model folder, training checkpoint folder, or training run folder (uses checkpoint-final)",
    )
    parser.add_argument("--video_path", "--video-path", required=True, help="video file to analyse")
    parser.add_argument("--prompt", help="question about the video (default: the QVED training prompt, see below)")
    parser.add_argument("--exercise", help="exercise name for the default prompt, e.g. 'squats'")
    parser.add_argument(
        "--model_base",
        "--model-base",
        help="base model for a training checkpoint (default: the one recorded in its adapter_config.json)",
    )
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=512, help="default 512")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top_p", "--top-p", type=float, default=1.0, help="nucleus sampling with --temperature > 0")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 on CUDA with bf16 support, fp16 on other CUDA, fp32 on CPU), fp32, bf16, fp16",
    )
    parser.add_argument(
        "--num_frames", "--num-frames", type=int, help="frames sampled per video (default: what the model takes, 16)"
    )
    parser.add_argument(
        "--clip_path", "--clip-path", help="CLIP weights when the checkpoint lacks them (dir or hub id)"
    )
    parser.add_argument(
        "--videomamba_path", "--videomamba-path", help="VideoMamba .pth when the checkpoint lacks its weights"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with text and timings")
    parser.add_argument(
        "--no-stream", "--no_stream", dest="stream", action="store_false", help="print the answer when complete"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _quiet_libraries() -> None:
    """Keep stdout/stderr to our own lines: no weight-loading bars or library deprecation chatter."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mobilevideogpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _summary(result, frames: int) -> str:
    t = result.timings
    rate = f"{t.decode_tokens_per_s:.1f} tok/s" if t.decode_tokens_per_s else "n/a tok/s"
    return (
        f"[{frames} frames | decode {t.video_decode_s:.2f} s | encoders {t.encode_s:.2f} s | prefill "
        f"{t.prefill_s:.2f} s | first token after {t.time_to_first_token_s:.2f} s | {result.num_new_tokens} new "
        f"tokens, {rate} | {result.finish_reason}]"
    )


def run(args: argparse.Namespace) -> int:
    from .inference import VideoChat

    def status(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    source = resolve_model_path(args.model_path, args.model_base)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if source.note:
        status(source.note)
    config = load_model_config(source)
    frames = config.num_frames if args.num_frames is None else args.num_frames
    if frames != config.num_frames:
        raise ValueError(
            f"--num_frames {frames}: this model takes exactly {config.num_frames} frames per video "
            f"({config.num_frames} frames in chunks of {config.chunk_size}); drop --num_frames"
        )
    started = time.perf_counter()
    video = load_video_inputs(args.video_path, num_frames=frames, image_size=config.clip_vision().image_size)
    decode_s = time.perf_counter() - started

    status(f"Loading {source.describe()} on {device} ({str(dtype).removeprefix('torch.')}) ...")
    chat = VideoChat.from_pretrained(
        args.model_path,
        model_base=args.model_base,
        device=device,
        dtype=dtype,
        clip_path=args.clip_path,
        videomamba_path=args.videomamba_path,
    )
    streaming = args.stream and not args.json

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = chat.answer(
        video,
        args.prompt,
        exercise=args.exercise,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        on_text=emit if streaming else None,
    )
    # The video was decoded before the model loaded (to fail fast); count that time where it belongs.
    result.timings = dataclasses.replace(
        result.timings, video_decode_s=decode_s, total_s=result.timings.total_s + decode_s
    )
    if args.json:
        payload = {
            "model": {
                "model_path": source.model_path,
                "base": source.base,
                "checkpoint": str(source.checkpoint) if source.checkpoint else None,
                "note": source.note,
                "device": str(device),
                "dtype": str(dtype).removeprefix("torch."),
            },
            **result.to_dict(),
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0
    if streaming:
        emit("\n")
    else:
        print(result.text, flush=True)
    status(f"Prompt: {result.prompt}")
    status(_summary(result, frames))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_libraries()
    try:
        return run(args)
    except KeyboardInterrupt:
        message = "interrupted"
    except Exception as err:  # noqa: BLE001 - the CLI's promise: one line, no traceback, unless --debug
        if args.debug:
            raise
        if isinstance(err, VideoDecodeError):
            message = f"{one_line(err)}; check --video_path (it must be a readable video file)"
        elif isinstance(err, (ModelLoadError, ValueError)):
            message = one_line(err)
        else:
            message = (
                f"unexpected failure: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)"
            )
    print(f"error: {message}", file=sys.stderr)
    return 1
