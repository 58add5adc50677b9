"""Starting `mvgpt serve` for the server tests, and the videos they send it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 240
URL_LINE = re.compile(r"^Serving .* at (http://\S+)/ \(page\)", re.MULTILINE)

def serve_command(*args: str) -> list[str]:
    """The one place that says how the tests launch the command."""
    return [sys.executable, "-m", "mobilevideogpt", "serve", *args]


@dataclass
class Server:
    """A running server: `url` without a trailing slash; `tmpdir` is the TMPDIR it keeps its private files in."""

    process: subprocess.Popen
    url: str
    log: Path
    tmpdir: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        """Ctrl-C, as an operator would stop it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_server(workdir: Path, *args: str) -> Server:
    """`mvgpt serve --port 0 ARGS` with its log in `workdir`; returns once /health answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(exist_ok=True)
    log = workdir / "server.log"
    env = {**os.environ, "TMPDIR": str(tmpdir), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_command("--port", "0", "--device", "cpu", *args),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    server = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {process.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
            )
        match = URL_LINE.search(log.read_text(errors="replace"))
        if match:
            server = Server(process, match.group(1), log, tmpdir)
            try:
                if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(
        f"the server did not answer /health within {STARTUP_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-4000:]}"
    )


def write_video(path: Path, frames: int = 24, fps: float = 8.0, size: tuple[int, int] = (160, 120)) -> Path:
    """A small moving-square MPEG-4 video written with OpenCV."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        x = (i * 6) % (width - 30)
        frame[40:70, x : x + 30] = (0, 180, 255)
        writer.write(frame)
    writer.release()
    return path
