"""Browser-playable copies of videos for the page's players.

Browsers play only some codec/container pairs: VP8/VP9/AV1 in WebM, H.264 or AV1 in MP4. OpenCV writes
MPEG-4 Part 2 (`mp4v`) MP4s (the synthetic sample dataset is one), which no browser plays. Such a video is
transcoded once to VP8 WebM with OpenCV (the codec its wheels can write quickly; VP9 takes ~10x longer),
scaled down to at most `MAX_SIDE` pixels, into a cache keyed by the source's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..data.video import VideoDecodeError

PLAYABLE = {
    ".webm": {"vp80", "vp08", "vp90", "vp09", "av01"},
    ".mp4": {"avc1", "h264", "av01"},
    ".m4v": {"avc1", "h264", "av01"},
}
MAX_SIDE = 480
FALLBACK_FPS = 25.0


def _codec(capture) -> str:
    import cv2

    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    return code.to_bytes(4, "little").decode("ascii", errors="replace").strip("\x00 ").lower()


class PlayableVideos:
    """`get(path)` → `path` itself when browsers play it, else a cached VP8 WebM copy."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> Path:
        """Raises `VideoDecodeError` when `path` cannot be read as a video."""
        import cv2

        source = Path(path).resolve()
        capture = cv2.VideoCapture(str(source))
        try:
            if not capture.isOpened():
                raise VideoDecodeError(source, "OpenCV cannot open it (not a video, corrupt, or unsupported codec)")
            if _codec(capture) in PLAYABLE.get(source.suffix.lower(), ()):
                return source
        finally:
            capture.release()
        stat = source.stat()
        key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
        target = self.cache_dir / f"{key}.webm"
        with self._lock:
            if not target.is_file():
                partial = target.with_suffix(".partial.webm")
                self._transcode(source, partial)
                partial.replace(target)
        return target

    @staticmethod
    def _transcode(source: Path, target: Path) -> None:
        import cv2

        capture = cv2.VideoCapture(str(source))
        writer = None
        try:
            fps = capture.get(cv2.CAP_PROP_FPS)
            fps = fps if 0 < fps < 1000 else FALLBACK_FPS
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if writer is None:
                    height, width = frame.shape[:2]
                    scale = min(1.0, MAX_SIDE / max(height, width))
                    size = (max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2))
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"VP80"), fps, size)
                    if not writer.isOpened():
                        raise VideoDecodeError(source, "this OpenCV build cannot write VP8 WebM for the browser")
                if frame.shape[1::-1] != size:
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                writer.write(frame)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if writer is None:
            target.unlink(missing_ok=True)
            raise VideoDecodeError(source, "no frame could be decoded")
