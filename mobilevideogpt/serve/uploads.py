"""Uploaded videos: a size limit, a check by content, and storage private to the server.

Files live in a directory only the server's user can read (created 0700, files 0600), under names the
server chooses (`file-<hex>`); the client's file name is kept as metadata only. A file is accepted when the
project's decoder reads it as a video of at least two frames, whatever its name or declared type says.
Everything is deleted when the server stops (`UploadStore.close`), or earlier with `DELETE /v1/files/{id}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..data.video import VideoDecodeError, decode_video
from .models import NotAVideoError, require_moving_picture

# Uploads kept at once; beyond it the client deletes some first (files are never dropped behind its back).
MAX_STORED_FILES = 100
CHUNK_BYTES = 1 << 20
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE
)


class UploadError(Exception):
    """An upload is refused; `status` is the HTTP status, `code` a short machine-readable reason."""

    def __init__(self, status: int, message: str, code: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


def too_large(max_bytes: int) -> UploadError:
    return UploadError(
        413, f"the video is larger than this server's limit of {max_bytes / 2**20:g} MiB", "file_too_large"
    )


def check_video(path: Path) -> None:
    """Decode `path` with the project's decoder; `UploadError` (400) when it is not a readable video."""
    try:
        require_moving_picture(decode_video(path).num_total_frames)
    except (VideoDecodeError, NotAVideoError) as err:
        raise UploadError(400, f"not a readable video: {reason(err)}", "invalid_video") from err


def reason(err: Exception) -> str:
    """Why a video was refused, short and without the server-side path of the file."""
    if not isinstance(err, VideoDecodeError):
        return str(err)
    if "decord:" in err.reason and "OpenCV:" in err.reason:
        return "neither decord nor OpenCV can open it (not a video, or corrupt)"
    return err.reason.replace(err.path, os.path.basename(err.path))


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:<type>;base64,<data>` URL; 413 beyond `max_bytes`, 400 when malformed."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise UploadError(400, "a data URL must look like data:video/mp4;base64,<base64 data>", "invalid_data_url")
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise too_large(max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise UploadError(400, f"the data URL's base64 payload is malformed ({err})", "invalid_data_url") from err
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return data


@dataclass(frozen=True)
class StoredUpload:
    id: str
    filename: str
    bytes: int
    created_at: int
    purpose: str
    path: Path

    def to_openai(self) -> dict:
        """The OpenAI file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class UploadStore:
    """Videos uploaded with `POST /v1/files`, and short-lived copies of data-URL videos."""

    def __init__(self, directory: Path, max_bytes: int, max_files: int = MAX_STORED_FILES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._files: dict[str, StoredUpload] = {}
        self._lock = threading.Lock()

    def _new_file(self, prefix: str) -> tuple[str, Path, int]:
        name = f"{prefix}-{uuid.uuid4().hex}"
        path = self.directory / name
        return name, path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    async def save(self, chunks: AsyncIterator[bytes], filename: str, purpose: str) -> StoredUpload:
        """Store a streamed upload after checking its size and content (`UploadError` otherwise)."""
        with self._lock:
            if len(self._files) >= self.max_files:
                raise UploadError(
                    429,
                    f"{len(self._files)} uploads are stored already (the limit); delete some with DELETE /v1/files/ID",
                    "too_many_files",
                )
        file_id, path, fd = self._new_file("file")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise too_large(self.max_bytes)
                    out.write(chunk)
            if size == 0:
                raise UploadError(400, "the uploaded file is empty", "invalid_video")
            await asyncio.to_thread(check_video, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        upload = StoredUpload(file_id, Path(filename or "upload").name[:255], size, int(time.time()), purpose, path)
        with self._lock:
            self._files[file_id] = upload
        return upload

    def write_temporary(self, data: bytes) -> Path:
        """A private file holding `data` (a data-URL video); the caller deletes it."""
        _, path, fd = self._new_file("inline")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return path

    def get(self, file_id: str) -> StoredUpload:
        with self._lock:
            upload = self._files.get(file_id)
        if upload is None:
            raise UploadError(
                404, f"no uploaded file with id {file_id!r} (upload with POST /v1/files)", "file_not_found"
            )
        return upload

    def list(self) -> list[StoredUpload]:
        with self._lock:
            return sorted(self._files.values(), key=lambda u: (u.created_at, u.id))

    def delete(self, file_id: str) -> StoredUpload:
        upload = self.get(file_id)
        with self._lock:
            self._files.pop(file_id, None)
        upload.path.unlink(missing_ok=True)
        return upload

    def close(self) -> None:
        with self._lock:
            self._files.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
