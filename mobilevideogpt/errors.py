"""Errors the library raises for expected failures, and how to say one in a line.

Every expected failure carries a message that names the file (or id) and says what to do; applications
print it as one `error: …` line. `first_line` quotes a library's exception inside such a message.
"""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message says which file or id and what to do about it."""


def first_line(err: BaseException) -> str:
    """`Type: first line of the message`, for quoting another library's error inside ours."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def one_line(err: BaseException) -> str:
    """The whole message on one line, for applications that print a single `error: …` line."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip()) or type(err).__name__
