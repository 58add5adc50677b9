"""Optional compiled CPU kernel for the Mamba selective scan (forward only).

A small C++ source (below) is compiled on first use with the system C++ compiler into a plain shared library and
called through ``ctypes``; it links nothing from torch, so it builds in about a second and does not depend on the
torch ABI. The build result is cached in ``$TORCH_EXTENSIONS_DIR`` (default: torch's extension cache,
``~/.cache/torch_extensions``) under a name that hashes the source, compiler and flags.

Nothing is compiled at import time. ``load_kernel()`` returns ``None`` when no compiler is found or the build fails
(the reason is kept in ``build_error()``), and ``mobilevideogpt.model.scan`` then uses its pure-PyTorch path.

The kernel walks the sequence once per block of channels: the state of 32 channels x N states stays in L1 cache,
exp / update / readout are fused, and channel blocks are spread over ``torch.get_num_threads()`` threads, so no
(L, D, N)-sized tensor is ever materialised. All arithmetic is fp32.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

_SOURCE = r"""
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace {

constexpr int kLanes = 32;  // channels scanned together: the vectorised axis
constexpr int kSteps = 64;  // time steps per tile of transposed inputs

// Constants passed at run time on purpose: with literal clamp bounds GCC turns the clamped ends of exp_f into
// branches (it constant-folds them) and then refuses to vectorise every loop that calls it.
struct Limits {
  float lo, hi, split;
};

// Cephes-style expf, accurate to ~1 ulp; returns 0 below about -87.7 (exactly where 2^k leaves the normal range).
inline float exp_f(float x, const Limits& c) {
  x = std::min(std::max(x, c.lo), c.hi);
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// log(1 + e) for e in [0, 1] (Cephes logf polynomial on [sqrt(1/2) - 1, sqrt(2) - 1]; e itself is never rounded
// through 1 + e, so tiny e keep full relative accuracy).
inline float log1p_unit(float e, const Limits& c) {
  const bool halve = e > c.split;  // 1 + e > sqrt(2): use (1 + e) / 2 and add ln 2
  const float k = halve ? 1.0f : 0.0f;
  const float x = halve ? (e - 1.0f) * 0.5f : e;
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  float y = p * x * z;
  y += k * -2.12194440e-4f;
  y -= 0.5f * z;
  return x + y + k * 0.693359375f;
}

// softplus(v) = log(1 + e^v) = max(v, 0) + log(1 + e^-|v|), the same function torch computes.
inline float softplus_f(float v, const Limits& c) {
  return std::max(v, 0.0f) + log1p_unit(exp_f(-std::abs(v), c), c);
}

inline float silu_f(float v, const Limits& c) { return v / (1.0f + exp_f(-v, c)); }

// A (batch, channel, time) view with element strides: inputs are read in place, whatever their layout.
struct View3 {
  const float* p;
  int64_t sb, sd, st;
};

// B or C: (batch, group, state, time).
struct View4 {
  const float* p;
  int64_t sb, sg, sn, st;
};

struct Problem {
  View3 u, delta, z;  // z.p may be null
  View4 B, C;
  const float *A, *D, *delta_bias;  // contiguous (dim, dstate), (dim), (dim); D and delta_bias may be null
  float *out, *last_state;          // contiguous (batch, dim, seqlen), (batch, dim, dstate); last_state may be null
  int64_t batch, dim, dstate, groups, seqlen;
  bool softplus;
  Limits lim;
};

struct Scratch {
  std::vector<float> h, a, bt, ct;
  alignas(64) float dt[kSteps][kLanes];
  alignas(64) float ut[kSteps][kLanes];
  alignas(64) float dtu[kSteps][kLanes];
  alignas(64) float yt[kSteps][kLanes];
  alignas(64) float zt[kSteps][kLanes];
  explicit Scratch(int64_t n) : h(n * kLanes), a(n * kLanes), bt(kSteps * n), ct(kSteps * n) {}
};

// tile[i][j] = x[b, d0 + j, t0 + i]; lanes past the last channel are zero. The two common layouts (time
// contiguous, or channel contiguous as in a transposed Linear output) get loops the compiler can stream.
inline void load_tile(const View3& x, int64_t b, int64_t d0, int64_t t0, int tt, int nd, float (*tile)[kLanes]) {
  const float* base = x.p + b * x.sb + d0 * x.sd + t0 * x.st;
  if (x.st == 1) {
    for (int j = 0; j < kLanes; ++j) {
      if (j < nd) {
        const float* row = base + j * x.sd;
        for (int i = 0; i < tt; ++i) tile[i][j] = row[i];
      } else {
        for (int i = 0; i < tt; ++i) tile[i][j] = 0.0f;
      }
    }
  } else if (x.sd == 1) {
    for (int i = 0; i < tt; ++i) {
      const float* col = base + i * x.st;
      for (int j = 0; j < nd; ++j) tile[i][j] = col[j];
      for (int j = nd; j < kLanes; ++j) tile[i][j] = 0.0f;
    }
  } else {
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < kLanes; ++j) tile[i][j] = j < nd ? base[i * x.st + j * x.sd] : 0.0f;
  }
}

// Scans channels [d0, d0 + nd) of batch b (all inside group g) over the whole sequence.
void scan_channels(const Problem& p, Scratch& s, int64_t b, int64_t g, int64_t d0, int nd) {
  const int64_t L = p.seqlen, N = p.dstate;
  const Limits lim = p.lim;
  float* h = s.h.data();
  float* a = s.a.data();
  alignas(64) float skip[kLanes] = {0.0f};
  alignas(64) float bias[kLanes] = {0.0f};
  std::fill(s.h.begin(), s.h.end(), 0.0f);
  std::fill(s.a.begin(), s.a.end(), 0.0f);
  for (int j = 0; j < nd; ++j) {
    for (int64_t n = 0; n < N; ++n) a[n * kLanes + j] = p.A[(d0 + j) * N + n];
    if (p.D) skip[j] = p.D[d0 + j];
    if (p.delta_bias) bias[j] = p.delta_bias[d0 + j];
  }
  const int64_t row0 = b * p.dim + d0;
  const float* Bg = p.B.p + b * p.B.sb + g * p.B.sg;
  const float* Cg = p.C.p + b * p.C.sb + g * p.C.sg;
  for (int64_t t0 = 0; t0 < L; t0 += kSteps) {
    const int tt = static_cast<int>(std::min<int64_t>(kSteps, L - t0));
    load_tile(p.delta, b, d0, t0, tt, nd, s.dt);
    load_tile(p.u, b, d0, t0, tt, nd, s.ut);
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < kLanes; ++j) s.dt[i][j] += bias[j];
    if (p.softplus)
      for (int i = 0; i < tt; ++i)
        for (int j = 0; j < kLanes; ++j) s.dt[i][j] = softplus_f(s.dt[i][j], lim);
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < kLanes; ++j) s.dtu[i][j] = s.dt[i][j] * s.ut[i][j];
    for (int i = 0; i < tt; ++i)
      for (int64_t n = 0; n < N; ++n) {
        s.bt[i * N + n] = Bg[n * p.B.sn + (t0 + i) * p.B.st];
        s.ct[i * N + n] = Cg[n * p.C.sn + (t0 + i) * p.C.st];
      }
    for (int i = 0; i < tt; ++i) {
      alignas(64) float y[kLanes] = {0.0f};
      const float* dti = s.dt[i];
      const float* dtui = s.dtu[i];
      for (int64_t n = 0; n < N; ++n) {
        const float bn = s.bt[i * N + n], cn = s.ct[i * N + n];
        float* __restrict hn = h + n * kLanes;
        const float* __restrict an = a + n * kLanes;
        for (int j = 0; j < kLanes; ++j) {
          const float hv = exp_f(dti[j] * an[j], lim) * hn[j] + dtui[j] * bn;
          hn[j] = hv;
          y[j] += cn * hv;
        }
      }
      for (int j = 0; j < kLanes; ++j) s.yt[i][j] = y[j] + skip[j] * s.ut[i][j];
    }
    if (p.z.p) {
      load_tile(p.z, b, d0, t0, tt, nd, s.zt);
      for (int i = 0; i < tt; ++i)
        for (int j = 0; j < kLanes; ++j) s.yt[i][j] *= silu_f(s.zt[i][j], lim);
    }
    for (int j = 0; j < nd; ++j) {
      float* o = p.out + (row0 + j) * L + t0;
      for (int i = 0; i < tt; ++i) o[i] = s.yt[i][j];
    }
  }
  if (p.last_state)
    for (int j = 0; j < nd; ++j)
      for (int64_t n = 0; n < N; ++n) p.last_state[(row0 + j) * N + n] = h[n * kLanes + j];
}

}  // namespace

// Shapes: u, delta, z (batch, dim, seqlen) and B, C (batch, groups, dstate, seqlen), fp32 with any element
// strides, given in `strides` as u[3], delta[3], z[3], B[4], C[4] (batch, channel/group, [state,] time);
// A (dim, dstate), D and delta_bias (dim) contiguous fp32; out (batch, dim, seqlen) and last_state (batch, dim,
// dstate) contiguous fp32. z, D, delta_bias, last_state may be null.
// Returns 0 on success, 1 on bad sizes, 2 when a worker ran out of memory.
extern "C" int mvg_selective_scan_fwd(const float* u, const float* delta, const float* A, const float* B,
                                      const float* C, const float* D, const float* z, const float* delta_bias,
                                      int delta_softplus, float* out, float* last_state, int64_t batch,
                                      int64_t dim, int64_t dstate, int64_t groups, int64_t seqlen,
                                      const int64_t* strides, int num_threads) {
  if (batch < 0 || dim <= 0 || dstate <= 0 || groups <= 0 || dim % groups != 0 || seqlen < 0) return 1;
  const int64_t* st = strides;
  const Problem p{View3{u, st[0], st[1], st[2]},
                  View3{delta, st[3], st[4], st[5]},
                  View3{z, st[6], st[7], st[8]},
                  View4{B, st[9], st[10], st[11], st[12]},
                  View4{C, st[13], st[14], st[15], st[16]},
                  A, D, delta_bias, out, last_state, batch, dim, dstate, groups, seqlen, delta_softplus != 0,
                  Limits{-88.0f, 88.0f, 0.41421356f}};
  const int64_t per_group = dim / groups;
  const int64_t blocks = (per_group + kLanes - 1) / kLanes;
  const int64_t items = batch * groups * blocks;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&]() {
#if defined(__SSE2__)
    // Flush denormals: a decaying state would otherwise crawl through slow denormal arithmetic.
    const unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040);
#endif
    try {
      Scratch s(dstate);
      for (int64_t it = next++; it < items; it = next++) {
        const int64_t blk = it % blocks, g = (it / blocks) % groups, b = it / (blocks * groups);
        const int64_t d0 = g * per_group + blk * kLanes;
        scan_channels(p, s, b, g, d0, static_cast<int>(std::min<int64_t>(kLanes, (g + 1) * per_group - d0)));
      }
    } catch (...) {
      failed = true;
    }
#if defined(__SSE2__)
    _mm_setcsr(saved_csr);
#endif
  };
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(num_threads, items));
  std::vector<std::thread> pool;
  try {
    for (int64_t i = 1; i < wanted; ++i) pool.emplace_back(worker);
  } catch (...) {
    // Fewer threads than asked for: the running workers still take every item.
  }
  worker();
  for (auto& t : pool) t.join();
  return failed ? 2 : 0;
}
"""

_lock = threading.Lock()
_kernel: Optional[Callable[..., int]] = None
_tried = False
_error: Optional[str] = None


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


def _cache_roots() -> list[Path]:
    """Where a build may live: torch's extension cache, then the temp dir (for a read-only home)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return [Path(root), Path(tempfile.gettempdir())]


def _compile(cxx: str, flags: list[str], build_dir: Path, library: Path) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    # Private file names, then renames: concurrent processes never read a half-written source or library.
    fd, src = tempfile.mkstemp(suffix=".cpp", dir=build_dir)
    with os.fdopen(fd, "w") as f:
        f.write(_SOURCE)
    fd, out = tempfile.mkstemp(suffix=".so", dir=build_dir)
    os.close(fd)
    try:
        result = subprocess.run([cxx, *flags, src, "-o", out], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed to build the selective-scan kernel:\n{result.stderr[-4000:]}")
        os.chmod(out, 0o755)  # mkstemp made it private; a shared cache must stay loadable by others
        os.replace(out, library)
        os.replace(src, build_dir / "scan_cpu.cpp")  # kept next to the library for reference
    finally:
        for path in (src, out):
            if os.path.exists(path):
                os.unlink(path)


def _build() -> Callable[..., int]:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", *_arch_flags()]
    key = "\n".join([_SOURCE, cxx, " ".join(flags), platform.machine()])
    name = f"mobilevideogpt_scan_cpu_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    errors = []
    for root in _cache_roots():
        library = root / name / "scan_cpu.so"
        try:
            if not library.exists():
                _compile(cxx, flags, root / name, library)
            break
        except OSError as exc:  # unwritable cache: try the next place
            errors.append(f"{root}: {exc}")
    else:
        raise RuntimeError("cannot write the kernel build anywhere: " + "; ".join(errors))
    lib = ctypes.CDLL(str(library))
    fn = lib.mvg_selective_scan_fwd
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 5
    fn.argtypes += [ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    return fn


def load_kernel() -> Optional[Callable[..., int]]:
    """Build (first call only, ~1 s) and load the kernel; ``None`` if that is impossible here."""
    global _kernel, _tried, _error
    with _lock:
        if not _tried:
            _tried = True
            try:
                _kernel = _build()
            except Exception as exc:  # any failure means "not available": the caller falls back to PyTorch
                _error = f"{type(exc).__name__}: {exc}"
                logger.info("compiled CPU selective scan unavailable, using PyTorch: %s", _error)
        return _kernel


def build_error() -> Optional[str]:
    """Why the last ``load_kernel()`` returned ``None`` (``None`` if it did not fail or was not tried)."""
    return _error


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _f32(t: Optional[torch.Tensor], contiguous: bool = False) -> Optional[torch.Tensor]:
    """fp32 version of t (no copy when it already is); strided inputs are read in place by the kernel."""
    if t is None:
        return None
    t = t.detach().to(torch.float32)
    return t.contiguous() if contiguous else t


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
    strides (e.g. transposed Linear outputs) and are not copied when already fp32. No autograd: outputs are
    detached. Returns out (batch, D, L) in u's dtype, plus the fp32 last state (batch, D, N) if
    ``return_last_state``.
    """
    fn = load_kernel()
    if fn is None:
        raise RuntimeError(f"the compiled CPU selective scan is unavailable: {build_error()}")
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u32, delta32, z32 = _f32(u), _f32(delta), _f32(z)
    B32 = _f32(B if B.dim() == 4 else B.unsqueeze(1))
    C32 = _f32(C if C.dim() == 4 else C.unsqueeze(1))
    A32, D32, bias32 = _f32(A, True), _f32(D, True), _f32(delta_bias, True)
    out = torch.empty(batch, dim, seqlen, dtype=torch.float32)
    last = torch.empty(batch, dim, dstate, dtype=torch.float32) if return_last_state else None
    if out.numel() > 0:
        strides = [*u32.stride(), *delta32.stride(), *(z32.stride() if z32 is not None else (0, 0, 0))]
        strides += [*B32.stride(), *C32.stride()]
        rc = fn(
            _ptr(u32), _ptr(delta32), _ptr(A32), _ptr(B32), _ptr(C32), _ptr(D32), _ptr(z32), _ptr(bias32),
            int(bool(delta_softplus)), _ptr(out), _ptr(last),
            batch, dim, dstate, B32.shape[1], seqlen, (ctypes.c_int64 * len(strides))(*strides),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise RuntimeError(f"compiled CPU selective scan failed with code {rc}")
    elif last is not None:
        last.zero_()
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
