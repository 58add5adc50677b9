"""Errors the library raises for expected failures, and how to say one in a line.

Every expected failure carries a message that names the file (or id) and says what to do; applications
print it as one `error: …` line. `first_line` quotes a library's exception inside such a message.
"""

from __future__ import annotations

import errno


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message says which file or id and what to do about it."""


def first_line(err: BaseException) -> str:
    """`Type: first line of the message`, for quoting another library's error inside ours."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def one_line(err: BaseException) -> str:
    """The whole message on one line, for applications that print a single `error: …` line."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__


class RunFolderError(ValueError):
    """A training output folder cannot take this run (another run's, unwritable, ...); the message says what to do."""


def is_write_failure(err: BaseException) -> bool:
    """An error of the file system while writing (libraries that write natively report it as their own type)."""
    text = str(err)
    return isinstance(err, OSError) or is_disk_full(err) or "write failed" in text or "I/O error" in text


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, also when a library reports it only in its message (safetensors, torch.save)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text


class SaveError(OSError):
    """Writing a file failed; the message names the file and what to do (`errno`: the cause, ENOSPC for a full disk)."""

    def __init__(self, code: int, message: str, path) -> None:
        super().__init__(code, message)
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


def saving_error(err: BaseException, what: str, path) -> SaveError:
    """The error to raise when writing `what` at `path` failed with `err`; says "disk full" when it was."""
    if is_disk_full(err):
        return SaveError(
            errno.ENOSPC,
            f"no space left on the disk while writing {what} {path} ({first_line(err)}); free space there or "
            "write elsewhere",
            path,
        )
    code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    return SaveError(code, f"cannot write {what} {path} ({first_line(err)})", path)
