"""`mvgpt serve`: the web page and the OpenAI-compatible API for one model (and optionally a second to compare).

Order of work, so mistakes surface before the slow part: the options and allowed directories are checked,
the address is bound (a port in use fails at once), then the models load and the server runs until Ctrl-C.
It listens on 127.0.0.1 unless --host says otherwise, and reads no file outside the --allow-root directories.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import sys
import tempfile

from .common import add_quantize_option, add_visual_tokens_option, visual_tokens_request

HELP = "serve a web page and an OpenAI-compatible API for a model"
DEFAULT_PORT = 7860
DEFAULT_QUEUE_SIZE = 8
DEFAULT_MAX_UPLOAD_MB = 200


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a Mobile-VideoGPT checkpoint: a web page (upload or record a video, read the feedback, browse a "
        "dataset) at http://HOST:PORT/ and an OpenAI-compatible API at http://HOST:PORT/v1 — one process, one "
        "model worker, requests queued."
    )
    parser.add_argument(
        "--model_path",
        "--model-path",
        required=True,
        help="hub id, model folder, training checkpoint folder, or training run folder (uses checkpoint-final)",
    )
    parser.add_argument("--compare", help="a second model (e.g. the base) whose answers are shown side by side")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port")
    parser.add_argument(
        "--allow_root",
        "--allow-root",
        dest="allow_roots",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory the server may read (dataset browser, file:// video URLs); repeatable; default none",
    )
    parser.add_argument(
        "--max_upload_mb",
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest video accepted, in MiB (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--queue_size",
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help=f"requests that may wait for the model; beyond it the API answers 503 (default {DEFAULT_QUEUE_SIZE})",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (CUDA: bf16 where supported, else fp16; CPU: per stage, the fastest choice this CPU keeps quality "
        "with), fp32, bf16, fp16",
    )
    add_quantize_option(parser)
    add_visual_tokens_option(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _serve(args: argparse.Namespace) -> int:
    from mobilevideogpt.serve.app import bind, create_app, serve, url_of
    from mobilevideogpt.serve.models import load_models
    from mobilevideogpt.serve.paths import AllowedRoots

    if args.queue_size < 1:
        raise ValueError(f"--queue_size must be at least 1, got {args.queue_size}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max_upload_mb must be positive, got {args.max_upload_mb}")
    roots = AllowedRoots(args.allow_roots)
    sock = bind(args.host, args.port)
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the models and read "
            "videos under --allow-root (there is no login)",
            file=sys.stderr,
        )
    workdir = tempfile.mkdtemp(prefix="mvgpt-serve-")
    try:
        label = args.model_path + (f" and {args.compare}" if args.compare else "")
        print(f"Loading {label} ...", file=sys.stderr, flush=True)
        models = load_models(
            args.model_path, args.compare, args.device, args.dtype, visual_tokens_request(args), args.quantize
        )
        app = create_app(
            models,
            workdir=workdir,
            roots=roots,
            queue_size=args.queue_size,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
        )
        url = url_of(sock)
        print(f"Serving {label} at {url}/ (page) and {url}/v1 (OpenAI-compatible API); Ctrl-C stops", flush=True)
        serve(app, sock)
    finally:
        sock.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelLoadError, one_line
    from .common import quiet_libraries

    if not args.debug:
        quiet_libraries()
    try:
        return _serve(args)
    except KeyboardInterrupt:
        return 0
    except (ModelLoadError, OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
