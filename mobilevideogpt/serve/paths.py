"""The directories the operator lets the server read (`--allow-root DIR`, repeatable; none by default).

A path is checked after resolving symlinks and `..`, so neither a link inside an allowed directory nor a
`../` segment reaches a file outside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname


class PathNotAllowed(PermissionError):
    """The path resolves outside every allowed directory (the message does not say where it leads)."""


class AllowedRoots:
    def __init__(self, roots: list[str | os.PathLike] | None = None) -> None:
        resolved = []
        for root in roots or []:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"--allow-root {root}: not a directory")
            resolved.append(path)
        self.roots = list(dict.fromkeys(resolved))

    def __bool__(self) -> bool:
        return bool(self.roots)

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether `path`, with symlinks and `..` resolved, lies inside an allowed directory."""
        return self._inside(Path(path).expanduser().resolve())

    def _inside(self, real: Path) -> bool:
        return any(real.is_relative_to(root) for root in self.roots)

    def resolve(self, path: str | os.PathLike) -> Path:
        """The resolved path when it lies inside an allowed directory; `PathNotAllowed` otherwise."""
        real = Path(path).expanduser().resolve()
        if not self._inside(real):
            hint = "the server allows none (start it with --allow-root DIR)" if not self.roots else "see --allow-root"
            raise PathNotAllowed(f"{path} is outside the directories this server may read; {hint}")
        return real

    def resolve_file_url(self, url: str) -> Path:
        """`file:///abs/path` (or `file://localhost/...`) → an allowed, resolved path (which may not exist)."""
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URL: {url[:100]}")
        path = url2pathname(unquote(parsed.path))
        if not os.path.isabs(path):
            raise ValueError(f"a file URL needs an absolute path: {url[:100]}")
        return self.resolve(path)
