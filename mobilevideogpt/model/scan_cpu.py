"""Optional compiled CPU kernel for the Mamba selective scan (forward only).

The C++ source ``csrc/scan_cpu.cpp`` (shipped inside the package) is compiled on first use with the system C++
compiler into a plain shared library and called through ``ctypes``. It includes no torch header, so it builds in
about two seconds and does not depend on the torch ABI. u, delta, z, B and C are read in place as fp32 or bf16;
the state and all arithmetic are fp32 and the output keeps u's dtype.

Nothing is compiled at import time. ``load_kernel()`` returns ``None`` when the kernel cannot be built or safely
loaded (the reason is kept in ``build_error()``), and ``mobilevideogpt.model.scan`` then uses its pure-PyTorch path.

Where the library lives, and why it can be trusted: ``$TORCH_EXTENSIONS_DIR`` (default: torch's extension cache,
``~/.cache/torch_extensions``), sub-folder ``mobilevideogpt_scan_cpu_<hash of source, compiler and flags>``. A
library is only built in and loaded from a folder that this user owns and nobody else can write: missing folders
are created 0700; the build folder and the cache root must be owned by this user and not writable by group or
others; the folders above the cache root must be owned by this user or root and not writable by others unless
sticky (like /tmp). The library itself must be a regular file owned by this user, not writable by others, and its
sha256 must equal the one recorded (atomically) when it was built; otherwise it is rebuilt, never loaded as is.
There is no fallback location: an unwritable or unsafe cache means the pure-PyTorch path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

logger = logging.getLogger(__name__)

# Built with g++ and loaded through ctypes rather than torch.utils.cpp_extension.load: measured on 2 shared cores,
# cold build 1.7-2.9 s vs 54-63 s (torch/extension.h + pybind) or 3.2-3.6 s (same plain source through ninja), warm
# load 0.4 ms vs 10-33 ms, identical kernel run time, no ninja / torch ABI dependency, and the library can be
# verified before it is loaded (load() builds and loads in one step).
SOURCE = Path(__file__).resolve().parent / "csrc" / "scan_cpu.cpp"
_LIBRARY = "scan_cpu.so"
_DIGEST = "scan_cpu.so.sha256"  # hex sha256 of the library, written after a successful build
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # element types the kernel reads and writes natively

_lock = threading.Lock()
_kernel: Optional[Callable[..., int]] = None
_tried = False
_error: Optional[str] = None


class UnsafeCacheError(RuntimeError):
    """The kernel's cache folder or library could be written by someone else: nothing is loaded from it."""


def _arch_flags() -> list[str]:
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


def _compiler() -> Optional[str]:
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


def private_build_dir(root: Path, name: str) -> Path:
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
                f"refusing the selective-scan kernel cache: {problem}; remove it, make it private "
                "(chmod go-w, owned by you) or set TORCH_EXTENSIONS_DIR to a private folder"
            )
    return build_dir


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Serialises check, build and load of one build folder across processes."""
    import fcntl  # POSIX only; _build refuses other systems before this

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


def library_check(build_dir: Path) -> Optional[str]:
    """Why the library in ``build_dir`` must not be loaded as it is (missing, no recorded sha256, wrong owner or
    mode, content differs from the record), or ``None`` if it may."""
    library = build_dir / _LIBRARY
    try:
        recorded = (build_dir / _DIGEST).read_text().strip()
        fd = os.open(library, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        return f"{exc.filename} does not exist"
    except OSError as exc:  # e.g. ELOOP: the library is a symlink
        return f"cannot open {library} safely: {exc}"
    try:
        problem = library_problem(library, os.fstat(fd))
        if problem:
            return problem
        actual = _sha256_file(fd)
    finally:
        os.close(fd)
    if actual != recorded:
        return f"{library} has sha256 {actual[:16]}..., but {recorded[:16]}... was recorded when it was built"
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


def _compile(cxx: str, flags: list[str], source: bytes, build_dir: Path) -> None:
    """Compiles ``source`` into build_dir/scan_cpu.so and records its sha256 next to it."""
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=build_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(source)  # exactly the bytes the folder name hashes
    fd, out = tempfile.mkstemp(suffix=".so", dir=build_dir)
    os.close(fd)
    try:
        result = subprocess.run([cxx, *flags, src, "-o", out], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build the selective-scan kernel:\n{result.stderr[-4000:]}")
        os.chmod(out, 0o700)  # the linker applies the umask, which may leave it group-writable
        fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
        try:
            digest = _sha256_file(fd)
        finally:
            os.close(fd)
        os.replace(out, build_dir / _LIBRARY)
        _write_private(build_dir, _DIGEST, f"{digest}\n".encode(), ".sha256")
    finally:
        for path in (src, out):
            if os.path.exists(path):
                os.unlink(path)


def build_recipe() -> tuple[str, list[str], bytes, str]:
    """(compiler, flags, source bytes, build folder name); raises RuntimeError if the kernel cannot be built here."""
    if not hasattr(os, "geteuid"):
        raise RuntimeError("the compiled kernel needs a POSIX system (its cache folder's owner is checked)")
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        raise RuntimeError(f"the kernel source {SOURCE} is missing from the installed package; reinstall") from exc
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", *_arch_flags()]
    key = b"\n".join([source, cxx.encode(), " ".join(flags).encode(), platform.machine().encode()])
    return cxx, flags, source, f"mobilevideogpt_scan_cpu_{hashlib.sha256(key).hexdigest()[:16]}"


def _build() -> Callable[..., int]:
    cxx, flags, source, name = build_recipe()
    root = cache_root()
    try:
        build_dir = private_build_dir(root, name)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the selective-scan kernel cache under {root} ({exc}); "
            "set TORCH_EXTENSIONS_DIR to a writable private folder"
        ) from exc
    with _build_lock(build_dir):
        problem = library_check(build_dir)
        if problem:
            if os.path.lexists(build_dir / _LIBRARY):
                logger.warning("rebuilding the selective-scan kernel: %s", problem)
            _compile(cxx, flags, source, build_dir)
            problem = library_check(build_dir)
            if problem:
                raise UnsafeCacheError(f"refusing to load the selective-scan kernel: {problem}")
        # The folder is private and the lock is held, so the file checked above is the file loaded here.
        lib = ctypes.CDLL(str(build_dir / _LIBRARY))
    fn = lib.mvg_selective_scan_fwd
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 5
    fn.argtypes += [ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32), ctypes.c_int]
    return fn


def load_kernel() -> Optional[Callable[..., int]]:
    """Build (first call only, ~2 s) and load the kernel; ``None`` if that is impossible or unsafe here."""
    global _kernel, _tried, _error
    with _lock:
        if not _tried:
            _tried = True
            try:
                _kernel = _build()
            except Exception as exc:  # any failure means "not available": the caller falls back to PyTorch
                _error = f"{type(exc).__name__}: {exc}"
                level = logging.WARNING if isinstance(exc, UnsafeCacheError) else logging.INFO
                logger.log(level, "compiled CPU selective scan unavailable, using PyTorch: %s", _error)
        return _kernel


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return _error


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _native(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t as the kernel reads it, in place: fp32 and bf16 as they are (any strides), other dtypes converted to fp32."""
    if t is None:
        return None
    t = t.detach()
    return t if t.dtype in _DTYPE_CODES else t.to(torch.float32)


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(torch.float32).contiguous()


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with the compiled kernel: same arguments and results as ``scan.selective_scan``.

    Expects inputs already validated by ``scan.selective_scan`` (CPU tensors; u, delta, z: (batch, D, L);
    A: (D, N); B, C: (batch, N, L) or (batch, G, N, L); D, delta_bias: (D,)); u, delta, z, B and C may have any
    strides (e.g. transposed Linear outputs) and are not copied when fp32 or bf16. No autograd: outputs are
    detached. Returns out (batch, D, L) in u's dtype (written directly for fp32 and bf16), plus the fp32 last
    state (batch, D, N) if ``return_last_state``.
    """
    fn = load_kernel()
    if fn is None:
        raise RuntimeError(f"the compiled CPU selective scan is unavailable: {build_error()}")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u_, delta_, z_ = _native(u), _native(delta), _native(z)
    B_ = _native(B if B.dim() == 4 else B.unsqueeze(1))
    C_ = _native(C if C.dim() == 4 else C.unsqueeze(1))
    A32, D32, bias32 = _f32(A), _f32(D), _f32(delta_bias)
    out = torch.empty(batch, dim, seqlen, dtype=u.dtype if u.dtype in _DTYPE_CODES else torch.float32)
    last = torch.empty(batch, dim, dstate, dtype=torch.float32) if return_last_state else None
    if out.numel() > 0:
        strides = [*u_.stride(), *delta_.stride(), *(z_.stride() if z_ is not None else (0, 0, 0))]
        strides += [*B_.stride(), *C_.stride()]
        dtypes = [_DTYPE_CODES[t.dtype] for t in (u_, delta_, z_ if z_ is not None else u_, B_, C_, out)]
        rc = fn(
            _ptr(u_), _ptr(delta_), _ptr(A32), _ptr(B_), _ptr(C_), _ptr(D32), _ptr(z_), _ptr(bias32),
            int(bool(delta_softplus)), _ptr(out), _ptr(last),
            batch, dim, dstate, B_.shape[1], seqlen, (ctypes.c_int64 * len(strides))(*strides),
            (ctypes.c_int32 * len(dtypes))(*dtypes), torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"compiled CPU selective scan failed with code {rc}")
    elif last is not None:
        last.zero_()
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
