"""What each training rank runs: `python -m mobilevideogpt.cli.train_rank [TrainingArguments flags]`.

`mvgpt train` starts one per GPU (or one on the CPU) through DeepSpeed's launcher; torchrun or SLURM start it on
several nodes (README, "Several machines"); running it by hand trains in one process (`--help` lists every
flag: the project's and transformers' TrainingArguments). An expected failure ends the rank with one
`error: …` line (the file and what to do) and exit status 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings

from ..errors import one_line
from ..train.launch import SUPERVISOR_ENV, VERBOSE_ENV, process_running
from .common import expected_errors, hide_benign_library_messages

_WATCH_INTERVAL_S = 1.0


def watch_supervisor_from_env() -> None:
    """`watch_supervisor` for the supervisor `supervise` named in the environment, when it runs on this host."""
    host, _, pid = os.environ.get(SUPERVISOR_ENV, "").rpartition(":")
    if pid.isdigit() and host == socket.gethostname():
        watch_supervisor(int(pid))


def watch_supervisor(pid: int) -> None:
    """Stop this rank's whole process group (launcher, ranks, loader workers) once `pid` has ended.

    `supervise` passes its pid in `SUPERVISOR_ENV`: a supervisor killed with SIGKILL cannot forward the signal,
    and the ranks must not train on unattended.
    """

    def watch() -> None:
        while process_running(pid):
            time.sleep(_WATCH_INTERVAL_S)
        print(f"error: the supervising `mvgpt train` (pid {pid}) is gone; stopping this rank", file=sys.stderr, flush=True)
        os.killpg(os.getpgrp(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def worker_message(err: BaseException) -> str:
    """The original message of an error a DataLoader worker raised (torch wraps it with the worker's traceback)."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, _, message = last.partition(": ")
        return message if message and " " not in name else last
    return one_line(err)


def main(argv: list[str] | None = None) -> int:
    import transformers
    from transformers import HfArgumentParser

    from ..data.dataset import UnusableDataError
    from ..train.arguments import DataArguments, ModelArguments, TrainingArguments
    from ..train.finetune import run
    from ..train.trainer import ResumeError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    watch_supervisor_from_env()
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    # DeepSpeed 0.19 still calls collectives that torch 2.13 deprecates; one warning per call floods the log.
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if os.environ.get(VERBOSE_ENV) != "1":
        hide_benign_library_messages()
    try:
        run(model_args, data_args, training_args)
    except (*expected_errors(), ResumeError, UnusableDataError) as err:
        if debug:
            raise
        # On a line of its own: a progress bar may have left the cursor mid-line.
        print(f"\nerror: {worker_message(err)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
