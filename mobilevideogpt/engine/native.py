"""Private, verified builds of the package's C++ kernels (``csrc/*.cpp``), loaded through ``ctypes``.

Each source is compiled on first use with the system C++ compiler into a plain shared library. The sources include
no torch header, so a build takes a couple of seconds and does not depend on the torch ABI. Nothing is compiled at
import time; the kernel modules (``scan_cpu``, ``linear_cpu``, ``rows_cpu``, ``attention_cpu``) call ``build_and_load``
and fall back to PyTorch when it fails.

Where a library lives, and why it can be trusted: ``$TORCH_EXTENSIONS_DIR`` (default: torch's extension cache,
``~/.cache/torch_extensions``), sub-folder ``mobilevideogpt_<kernel>_<hash of source, compiler and flags>``. A
library is only built in and loaded from a folder that this user owns and nobody else can write: missing folders
are created 0700; the build folder and the cache root must be owned by this user and not writable by group or
others; the folders above the cache root must be owned by this user or root and not writable by others unless
sticky (like /tmp). The library itself must be a regular file owned by this user, not writable by others, and its
sha256 must equal the one recorded (atomically) when it was built; otherwise it is rebuilt, never loaded as is.
There is no fallback location: an unwritable or unsafe cache means the PyTorch path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Generic, Iterator, Optional, TypeVar

import torch

logger = logging.getLogger(__name__)
K = TypeVar("K")  # what a LazyKernel's build returns: the loaded library's entry points

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
# Built with g++ and loaded through ctypes rather than torch.utils.cpp_extension.load: measured on 2 shared cores,
# cold build 1.7-2.9 s vs 54-63 s (torch/extension.h + pybind) or 3.2-3.6 s (same plain source through ninja), warm
# load 0.4 ms vs 10-33 ms, identical kernel run time, no ninja / torch ABI dependency, and the library can be
# verified before it is loaded (build_and_load builds and loads in one step).
BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread"]


class UnsafeCacheError(RuntimeError):
    """A kernel's cache folder or library could be written by someone else: nothing is loaded from it."""


def arch_flags() -> list[str]:
    """Vector ISA flags matching what torch detected at run time on this CPU (never -march=native, so a cached
    library stays valid for any CPU with that capability)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        return ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


# The OpenMP runtime g++ -fopenmp links (by soname). Where torch has loaded one of that name, a library built with it
# runs its threads in torch's pool (the dynamic loader binds the name to the copy already loaded): csrc/threads.h.
OPENMP_RUNTIME = "libgomp.so.1"


def loaded_libraries(maps: str | None = None) -> set[str]:
    """Paths of the shared libraries mapped into this process (/proc/self/maps; empty where it is not readable)."""
    if maps is None:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                maps = f.read()
        except OSError:
            return set()
    fields = (line.split(None, 5) for line in maps.splitlines())
    return {parts[5].strip() for parts in fields if len(parts) == 6 and ".so" in parts[5]}


def openmp_flags(libraries: set[str] | None = None) -> list[str]:
    """["-fopenmp"] where torch runs on OpenMP and the runtime loaded for it is OPENMP_RUNTIME, so that the kernels'
    threads are torch's own: none is started per call, and none competes with torch threads spinning between their
    operations (2 cores of a Xeon with AMX, the full-size VideoMamba pass with its 128 scan and conv calls: 1.16 ->
    0.85 s where torch's threads spin, ~1.16 -> 1.13 s where they sleep). Else [] and the kernels start their own."""
    if not torch.backends.openmp.is_available():
        return []
    libraries = loaded_libraries() if libraries is None else libraries
    return ["-fopenmp"] if any(os.path.basename(path) == OPENMP_RUNTIME for path in libraries) else []


def compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_root() -> Path:
    """The folder holding the kernel builds: ``$TORCH_EXTENSIONS_DIR`` or torch's default, symlinks resolved (every
    later check and file operation uses this resolved path, so re-pointing a link afterwards changes nothing)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(os.path.realpath(root))


def folder_problem(path: Path, st: os.stat_result, strict: bool) -> Optional[str]:
    """Why a folder with lstat result ``st`` must not hold a library we load, or ``None`` if it may.

    ``strict`` (the cache root and below): a real directory owned by this user, not writable by group or others.
    Otherwise (folders above the cache root): owned by this user or root, and not writable by group or others
    unless sticky, where nobody can rename or replace another user's entries.
    """
    uid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    owners = (uid,) if strict else (uid, 0)
    if st.st_uid not in owners:
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & _GROUP_OTHER_WRITE and (strict or not st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def library_problem(path: Path, st: os.stat_result) -> Optional[str]:
    """Why a library file with lstat/fstat result ``st`` must not be loaded, or ``None`` if its owner and mode
    allow it (its content is checked separately, against the recorded sha256)."""
    uid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {uid})"
    if st.st_mode & _GROUP_OTHER_WRITE:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_build_dir(root: Path, name: str, what: str) -> Path:
    """``root / name``, every missing folder on the way created 0700, every folder from ``/`` down checked with
    ``folder_problem``. Raises ``UnsafeCacheError`` for an unsafe folder and ``OSError`` if one cannot be made."""
    build_dir = root / name
    for path in [*reversed(build_dir.parents), build_dir]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile: it is checked below
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(path))
        strict = path == root or root in path.parents
        problem = folder_problem(path, st, strict)
        if problem:
            raise UnsafeCacheError(
                f"refusing the {what} cache: {problem}; remove it, make it private "
                "(chmod go-w, owned by you) or set TORCH_EXTENSIONS_DIR to a private folder"
            )
    return build_dir


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Serialises check, build and load of one build folder across processes."""
    import fcntl  # POSIX only; build_recipe refuses other systems before this

    fd = os.open(build_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sha256_file(fd: int) -> str:
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_name(library: str) -> str:
    """File next to the library holding its hex sha256, written after a successful build."""
    return f"{library}.sha256"


def library_check(build_dir: Path, library: str) -> Optional[str]:
    """Why build_dir/library must not be loaded as it is (missing, no recorded sha256, wrong owner or mode,
    content differs from the record), or ``None`` if it may."""
    path = build_dir / library
    try:
        recorded = (build_dir / digest_name(library)).read_text().strip()
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        return f"{exc.filename} does not exist"
    except OSError as exc:  # e.g. ELOOP: the library is a symlink
        return f"cannot open {path} safely: {exc}"
    try:
        problem = library_problem(path, os.fstat(fd))
        if problem:
            return problem
        actual = _sha256_file(fd)
    finally:
        os.close(fd)
    if actual != recorded:
        return f"{path} has sha256 {actual[:16]}..., but {recorded[:16]}... was recorded when it was built"
    return None


def _write_private(build_dir: Path, name: str, data: bytes, suffix: str) -> None:
    """Writes build_dir/name atomically (temporary file, then rename), mode 0600."""
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=build_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, build_dir / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compile_library(cxx: str, flags: list[str], source: bytes, build_dir: Path, library: str, what: str) -> None:
    """Compiles ``source`` into build_dir/library and records its sha256 next to it."""
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=build_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(source)  # exactly the bytes the folder name hashes
    fd, out = tempfile.mkstemp(suffix=".so", dir=build_dir)
    os.close(fd)
    try:
        result = subprocess.run([cxx, *flags, src, "-o", out], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build the {what}:\n{result.stderr[-4000:]}")
        os.chmod(out, 0o700)  # the linker applies the umask, which may leave it group-writable
        fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
        try:
            digest = _sha256_file(fd)
        finally:
            os.close(fd)
        os.replace(out, build_dir / library)
        _write_private(build_dir, digest_name(library), f"{digest}\n".encode(), ".sha256")
    finally:
        for path in (src, out):
            if os.path.exists(path):
                os.unlink(path)


_LOCAL_INCLUDE = re.compile(rb'^#include "([A-Za-z0-9_]+\.h)"[ \t]*$', re.MULTILINE)


def expand_local_includes(source: bytes, folder: Path) -> bytes:
    """``source`` with each ``#include "name.h"`` line replaced by that header's text from ``folder`` (the package's
    csrc/), so that a library is compiled from one self-contained file and its cache key covers every line of it.
    Raises ``OSError`` for a missing header."""
    return _LOCAL_INCLUDE.sub(lambda match: (folder / match.group(1).decode()).read_bytes().rstrip(b"\n"), source)


def build_recipe(source_path: Path, kernel: str, cxx: Optional[str]) -> tuple[str, list[str], bytes, str]:
    """(compiler, flags, source bytes, build folder name) for one kernel; raises RuntimeError if it cannot be built
    here. ``cxx`` is the compiler found (``compiler()``), passed in so a caller's lookup can be replaced in tests."""
    if not hasattr(os, "geteuid"):
        raise RuntimeError("the compiled kernel needs a POSIX system (its cache folder's owner is checked)")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    try:
        source = expand_local_includes(source_path.read_bytes(), source_path.parent)
    except OSError as exc:
        missing = exc.filename or source_path
        raise RuntimeError(f"the kernel source {missing} is missing from the installed package; reinstall") from exc
    flags = [*BASE_FLAGS, *arch_flags(), *openmp_flags()]
    key = b"\n".join([source, cxx.encode(), " ".join(flags).encode(), platform.machine().encode()])
    return cxx, flags, source, f"mobilevideogpt_{kernel}_{hashlib.sha256(key).hexdigest()[:16]}"


def build_and_load(
    recipe: tuple[str, list[str], bytes, str],
    library: str,
    what: str,
    compile_fn: Callable[[str, list[str], bytes, Path], None],
) -> ctypes.CDLL:
    """Builds (if its verified copy is missing) and loads one library; ``compile_fn(cxx, flags, source, build_dir)``
    writes build_dir/library and its digest. Raises ``UnsafeCacheError`` or ``RuntimeError`` saying why not."""
    cxx, flags, source, name = recipe
    root = cache_root()
    try:
        build_dir = private_build_dir(root, name, what)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the {what} cache under {root} ({exc}); set TORCH_EXTENSIONS_DIR to a writable private folder"
        ) from exc
    with _build_lock(build_dir):
        problem = library_check(build_dir, library)
        if problem:
            if os.path.lexists(build_dir / library):
                logger.warning("rebuilding the %s: %s", what, problem)
            compile_fn(cxx, flags, source, build_dir)
            problem = library_check(build_dir, library)
            if problem:
                raise UnsafeCacheError(f"refusing to load the {what}: {problem}")
        # The folder is private and the lock is held, so the file checked above is the file loaded here.
        return ctypes.CDLL(str(build_dir / library))


def build_library(source_path: Path, kernel: str, what: str) -> ctypes.CDLL:
    """Build (if needed) and load the library ``<kernel>.so`` of one package source with the compiler found here:
    ``build_recipe`` + ``build_and_load``, for a kernel module's ``LazyKernel`` build function."""
    library = f"{kernel}.so"
    recipe = build_recipe(source_path, kernel, compiler())
    before = loaded_libraries()
    lib = build_and_load(recipe, library, what, lambda *args: compile_library(*args, library, what))
    added = sorted(path for path in loaded_libraries() - before if "omp" in os.path.basename(path))
    if added:  # its threads then compete with torch's instead of being torch's
        logger.warning("the %s brought an OpenMP runtime of its own: %s", what, ", ".join(added))
    return lib


class LazyKernel(Generic[K]):
    """One compiled library's entry points (what ``build`` returns), built and loaded on first use (once,
    thread-safe); ``load()`` is ``None`` where that is impossible or unsafe here, and ``error`` then says why."""

    def __init__(self, build: Callable[[], K], unavailable: str) -> None:
        self._build = build
        self._unavailable = unavailable  # start of the log line, e.g. "compiled CPU Mamba kernels unavailable"
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the outcome: the next ``load()`` builds again."""
        self._tried, self._kernel, self.error = False, None, None

    def load(self) -> Optional[K]:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self._kernel = self._build()
                except Exception as exc:  # any failure means "not available": callers keep their PyTorch path
                    self.error = f"{type(exc).__name__}: {exc}"
                    level = logging.WARNING if isinstance(exc, UnsafeCacheError) else logging.INFO
                    logger.log(level, "%s: %s", self._unavailable, self.error)
            return self._kernel
