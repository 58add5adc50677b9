"""`train/launch.py::supervise` over the real DeepSpeed launcher: the exit status is the training's, and no rank
outlives a killed launcher or supervisor (Ctrl-C, SIGTERM, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobilevideogpt.train.launch import process_running
from tests.test_train import free_port

REPO = Path(__file__).resolve().parents[1]
# The supervisor loads launch.py by its path: importing the package would load the model (seconds per process),
# and launch.py needs nothing but the standard library.
SUPERVISOR = (
    "import importlib.util, sys; "
    "spec = importlib.util.spec_from_file_location('launch', 'mobilevideogpt/train/launch.py'); "
    "launch = importlib.util.module_from_spec(spec); spec.loader.exec_module(launch); "
    "sys.exit(launch.supervise([sys.executable, '-m', 'deepspeed.launcher.runner', '--num_gpus', '2', "
    "'--master_port', sys.argv[1], '--module', 'tests.sleeping_rank']))"
)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def start(pid_dir: Path) -> tuple[subprocess.Popen, list[int]]:
    """A supervisor running the DeepSpeed launcher over two sleeping ranks; returns it and the ranks' pids."""
    pid_dir.mkdir()
    watch = "1" if pid_dir.name == "supervisor_sigkill" else "0"
    env = {**os.environ, "RANK_PID_DIR": str(pid_dir), "WATCH_SUPERVISOR": watch}
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(free_port())], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while len(list(pid_dir.iterdir())) < 2:
        assert supervisor.poll() is None, supervisor.stderr.read()
        assert time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.2)
    time.sleep(0.2)
    return supervisor, [int(path.read_text()) for path in sorted(pid_dir.iterdir())]


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(process_running(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if process_running(pid)]


@pytest.mark.slow
def test_no_rank_outlives_a_killed_launcher_or_supervisor(tmp_path):
    # All four started first and checked afterwards: each start costs seconds of imports.
    runs = {how: start(tmp_path / how) for how in ("launcher_sigkill", "sigint", "sigterm", "supervisor_sigkill")}
    supervisor, ranks = runs["launcher_sigkill"]
    launcher = parent(parent(ranks[0]))  # rank → deepspeed.launcher.launch → deepspeed.launcher.runner
    assert parent(launcher) == supervisor.pid
    os.kill(launcher, signal.SIGKILL)
    # DeepSpeed's runner reports a child killed by a signal as success; the supervisor must not.
    assert supervisor.wait(timeout=60) == 128 + signal.SIGKILL
    assert wait_gone(ranks, 15) == []

    for how, sig in (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM)):
        supervisor, ranks = runs[how]
        supervisor.send_signal(sig)
        assert supervisor.wait(timeout=60) != 0, how
        assert wait_gone(ranks, 15) == [], how

    supervisor, ranks = runs["supervisor_sigkill"]
    supervisor.kill()
    supervisor.wait(timeout=10)
    # Nobody is left to forward a signal: each rank notices its supervisor is gone and stops its process group.
    assert wait_gone(ranks, 15) == []
