"""Starting the training ranks through DeepSpeed's launcher, and staying in charge of them.

The ranks run `python -m mobilevideogpt.cli.train_rank` (one process per GPU, or on CPU). `supervise` keeps the
launcher in its own process group: a Ctrl-C or `kill` of the supervisor reaches every rank, a launcher that
dies takes its ranks with it, and the exit status is the training's — DeepSpeed's runner itself reports a rank
killed by a signal as success (it only propagates positive exit codes). Each rank also watches the supervisor
(`SUPERVISOR_ENV`), so even a supervisor killed with SIGKILL leaves no rank training on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

RANK_MODULE = "mobilevideogpt.cli.train_rank"
# "host:pid" of the supervisor; ranks on that host stop when it is gone (see `cli/train_rank.py`).
SUPERVISOR_ENV = "MVGPT_SUPERVISOR"
# Set to "1" by `mvgpt train --verbose`: the ranks then show the libraries' known-benign messages too.
VERBOSE_ENV = "MVGPT_VERBOSE"
# How long the ranks get to exit after SIGTERM before they are killed.
TERMINATE_GRACE_S = 10.0


def launcher_command(
    trainer_args: Sequence[str],
    *,
    num_gpus: int | None = None,
    hostfile: str | None = None,
    master_port: int = 29500,
    python: str = sys.executable,
    verbose: bool = False,
) -> list[str]:
    """The DeepSpeed launcher command that runs `RANK_MODULE trainer_args` on `num_gpus` ranks or a hostfile's nodes.

    Unless `verbose`, the launcher logs errors only: its INFO lines and the "Unable to find hostfile" warning of every
    single-node run are the launcher's bookkeeping, not the training's."""
    where = ["--hostfile", hostfile] if hostfile else ["--num_gpus", str(num_gpus or 1)]
    return [
        python, "-m", "deepspeed.launcher.runner", *where, "--master_port", str(master_port),
        "--log_level", "info" if verbose else "error", "--module", RANK_MODULE, *trainer_args,
    ]


def rank_environment(environ: dict[str, str], *, on_gpu: bool, ranks_per_node: int, verbose: bool) -> dict[str, str]:
    """The launcher's environment: what the ranks would otherwise guess (and warn about) is said outright.

    On CPU, DeepSpeed is told its accelerator (it warns "Setting accelerator to CPU" in every process when it has to
    detect it) and each rank gets its share of the cores as OMP_NUM_THREADS (accelerate sets the same when it is
    unset, with a warning). A value the user set is kept."""
    env = dict(environ)
    if not on_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(ranks_per_node, 1))))
    if verbose:
        env[VERBOSE_ENV] = "1"
    return env


def supervise(command: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run `command` in a new process group until it ends; returns its status (128 + N when killed by signal N).

    SIGINT / SIGTERM received meanwhile are passed to the whole group; whatever is left of the group when the
    launcher ends (ranks of a killed launcher) is terminated, and killed if it has not exited after
    `TERMINATE_GRACE_S`.
    """
    child_env = {**(os.environ if env is None else env), SUPERVISOR_ENV: f"{socket.gethostname()}:{os.getpid()}"}
    process = subprocess.Popen(list(command), env=child_env, start_new_session=True)
    group = process.pid

    def forward(signum, _frame) -> None:
        _signal_group(group, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(group)
    return 128 - status if status < 0 else status


def stop_group(group: int, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM every process left in `group`, then SIGKILL those still running after `grace_s`."""
    if not _signal_group(group, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not group_running(group):
            return
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> bool:
    """Send `signum` to the group; False when no process is left in it."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def _proc_stat(pid: str) -> list[str] | None:
    """Fields after the command name in /proc/PID/stat (state, ppid, pgrp, ...); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_running(pid: int) -> bool:
    """The process exists and has not ended (a zombie waiting for its parent counts as ended)."""
    if os.path.isdir("/proc/self"):
        fields = _proc_stat(str(pid))
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_running(group: int) -> bool:
    """Some process of the group has not ended (zombies left for a parent that never reaps them do not count)."""
    if not os.path.isdir("/proc/self"):
        return _signal_group(group, 0)
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (fields := _proc_stat(pid)) is not None and fields[2] == str(group):
            if fields[0] not in ("Z", "X"):
                return True
    return False
