"""What every command shares: option spellings, the model-loading options, and the one-line error promise."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import warnings
from collections.abc import Callable

from ..constants import QUANTIZE_CHOICES
from ..errors import one_line


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that accepts `--a_b` and `--a-b` for every long option declared with either spelling."""

    def add_argument(self, *names, **kwargs):
        spelled = list(names)
        for name in names:
            if name.startswith("--") and len(name) > 3:
                for twin in (name[:2] + name[2:].replace("_", "-"), name[:2] + name[2:].replace("-", "_")):
                    if twin not in spelled:
                        spelled.append(twin)
        return super().add_argument(*spelled, **kwargs)


VISUAL_TOKENS_HELP = (
    "visual tokens per video the language model reads: a count (e.g. 600), a fraction of all 2402 (e.g. 0.25) or "
    "all; fewer make the first token come sooner (default: what the checkpoint was trained with, all as published)"
)


def add_model_options(parser: argparse.ArgumentParser, *, required: bool = True, repeat: bool = False) -> None:
    """--model_path (+ --model_base, --device, --dtype, --quantize, the tower sources and the visual-token budget), as
    every model-loading command takes."""
    parser.add_argument(
        "--model_path",
        required=required,
        action="append" if repeat else "store",
        help="hub id, model folder, training checkpoint folder, or training run folder (uses checkpoint-final)"
        + ("; repeat to compare" if repeat else ""),
    )
    parser.add_argument(
        "--model_base", help="base model for a training checkpoint (default: the one recorded in its adapter_config.json)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (CUDA: bf16 where supported, else fp16; CPU: per stage, the fastest choice this CPU keeps quality "
        "with), fp32, bf16, fp16",
    )
    add_quantize_option(parser)
    parser.add_argument("--clip_path", help="CLIP weights when the checkpoint lacks them (dir or hub id)")
    parser.add_argument("--videomamba_path", help="VideoMamba .pth when the checkpoint lacks its weights")
    add_visual_tokens_option(parser)


def add_quantize_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize", choices=QUANTIZE_CHOICES, default="none",
        help="CPU only: int8 = int8 language-model weights (faster decode, small quality cost); w8a8 = also int8 x "
        "int8 prefill and encoder matrix products (first token sooner where the CPU has no bf16 units, larger "
        "quality cost); default none",
    )  # fmt: skip


def add_visual_tokens_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visual_tokens", metavar="N|FRACTION|all", help=VISUAL_TOKENS_HELP)


def visual_tokens_request(args: argparse.Namespace):
    """`--visual_tokens` parsed (None when not given); a ValueError with the accepted forms."""
    from ..model.token_budget import parse_visual_tokens

    return parse_visual_tokens(args.visual_tokens)


def load_chat(args: argparse.Namespace, status: Callable[[str], None], source, plan, **options):
    """Say what loads on which plan, then load it as a VideoChat from the options of `add_model_options`."""
    from ..chat import VideoChat

    status(f"Loading {source.describe()} on {plan.describe()} ...")
    return VideoChat.from_pretrained(
        args.model_path,
        model_base=args.model_base,
        device=args.device,
        dtype=args.dtype,
        clip_path=args.clip_path,
        videomamba_path=args.videomamba_path,
        quantize=args.quantize,
        visual_tokens=visual_tokens_request(args),
        **options,
    )


def quiet_libraries() -> None:
    """Keep output to our own lines: no weight-loading bars or library deprecation chatter."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mobilevideogpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


@functools.cache  # once per process: each call would add another filter to the same loggers
def hide_benign_library_messages() -> None:
    """Hide the libraries' messages every run prints that say nothing about this one (`mvgpt train -v` shows them).

    - accelerate's "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config has N":
      the Trainer gives accelerate 1 on purpose and DeepSpeed accumulates the N steps (transformers
      `Trainer.create_accelerator_and_postprocess`);
    - peft reads the deprecated `is_gradient_checkpointing` property when it wraps the model (FutureWarning);
    - DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." from
      every process that imports it without a GPU (transformers does, to save a model)."""
    logging.getLogger("DeepSpeed").addFilter(_DropMessages("Setting accelerator to CPU"))
    logging.getLogger("accelerate.accelerator").addFilter(_DropMessages("Gradient accumulation steps mismatch"))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a command reports in one line: bad input, unusable files, unloadable models."""
    from ..data.video import VideoDecodeError
    from ..errors import ModelLoadError
    from ..evaluation.predictions import EvaluationError
    from ..live.frames import FrameSourceError
    from ..processing import AnnotationError
    from ..qved.convert import QvedInputError

    return (
        ModelLoadError,
        VideoDecodeError,
        EvaluationError,
        FrameSourceError,
        AnnotationError,
        QvedInputError,
        OSError,
        ValueError,
    )


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command: expected failures become one `error: …` line and exit 1; `--debug` shows tracebacks.
    Known-benign library messages stay hidden unless the command's `--verbose` or `--debug` asks for everything."""
    debug = getattr(args, "debug", False)
    if not (debug or getattr(args, "verbose", False)):
        hide_benign_library_messages()
    try:
        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: nothing more to say, and nothing went wrong.
        sys.stderr.close()
        return 1
    except Exception as err:  # noqa: BLE001 - the promise: one line, no traceback, unless --debug
        if debug:
            raise
        if isinstance(err, expected_errors()):
            message = one_line(err)
        else:
            message = f"unexpected failure: {type(err).__name__}: {one_line(err)} (rerun with --debug for the traceback)"
        print(f"error: {message}", file=sys.stderr)
        return 1
