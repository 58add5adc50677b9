"""Starting the training ranks through DeepSpeed's launcher, and staying in charge of them.

The ranks run `python -m mobilevideogpt.cli.train_rank` (one process per GPU, or on CPU). `supervise` keeps the
launcher in its own process group: a Ctrl-C or `kill` of the supervisor reaches every rank, a launcher that
dies takes its ranks with it, and the exit status is the training's — DeepSpeed's runner itself reports a rank
killed by a signal as success (it only propagates positive exit codes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence

RANK_MODULE = "mobilevideogpt.cli.train_rank"


def launcher_command(
    trainer_args: Sequence[str],
    *,
    num_gpus: int | None = None,
    hostfile: str | None = None,
    master_port: int = 29500,
    python: str = sys.executable,
) -> list[str]:
    """The DeepSpeed launcher command that runs `RANK_MODULE trainer_args` on `num_gpus` ranks or a hostfile's nodes."""
    where = ["--hostfile", hostfile] if hostfile else ["--num_gpus", str(num_gpus or 1)]
    return [
        python, "-m", "deepspeed.launcher.runner", *where, "--master_port", str(master_port),
        "--module", RANK_MODULE, *trainer_args,
    ]


def supervise(command: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run `command` in a new process group until it ends; returns its status (128 + N when killed by signal N).

    SIGINT / SIGTERM received meanwhile are passed to the whole group; whatever is left of the group when the
    launcher ends (ranks of a killed launcher) is terminated.
    """
    process = subprocess.Popen(list(command), env=env, start_new_session=True)
    group = process.pid

    def forward(signum, _frame) -> None:
        _signal_group(group, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(group, signal.SIGTERM)
    return 128 - status if status < 0 else status


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass
