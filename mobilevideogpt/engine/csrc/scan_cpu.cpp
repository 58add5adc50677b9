// The Mamba mixer's two CPU kernels, forward only: the selective scan and the depthwise causal conv1d (+ SiLU) in
// front of it, called from mobilevideogpt/engine/scan_cpu.py through ctypes. Both read their inputs in place at any
// strides and run either direction of time, so a bidirectional mixer needs no flipped or contiguous copies.
// Plain C++17 with no torch headers: it builds with one compiler call and does not depend on the torch ABI.
//
// The scan walks the sequence once per block of 32 channels: their state (32 x N) stays in L1 cache, exp / update /
// readout are fused, and channel blocks are spread over threads, so no (L, D, N)-sized array is ever built.
// u, delta, z, B, C and out may each be fp32 or bf16; they are widened to fp32 when a tile is loaded, all
// arithmetic and the state are fp32, and the output is rounded once when it is written.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>  // also for bf16.h's vector forms
#elif defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace {

constexpr int kLanes = 32;  // channels of one block, scanned together: the vectorised axis
constexpr int kMaxBlocks = 8;  // blocks per work item, which share every read of a tile's inputs
// Time steps per tile of transposed inputs. Under AVX512 32: the five tiles then fit a 48 KB L1 cache (a
// VideoMamba-M bf16 scan on 2 cores of a Xeon with AMX, medians of 3 alternating runs: 8.4 -> 7.1 ms); elsewhere
// 64 (built for AVX2 on that Xeon the two were within noise, 32 a few percent slower).
#if defined(__AVX512F__)
constexpr int kSteps = 32;
#else
constexpr int kSteps = 64;
#endif

enum : int32_t { kF32 = 0, kBF16 = 1 };  // element types, as passed in `dtypes`

// Constants passed at run time on purpose: with literal clamp bounds GCC turns the clamped ends of exp_f into
// branches (it constant-folds them), and a select between literal 0 and 1 in log1p_unit likewise, and then refuses
// to vectorise every loop that calls them.
struct Limits {
  float lo, hi, split, zero, one, lo2, hi2;
};

// kVec fp32 lanes in GCC's vector extension (clang has it too), one register of the widest ISA the library is built
// for (wider vectors would be split into scalar code for the selections). The scan's update loop written with them
// keeps its y accumulators in registers across the N states; auto-vectorised over the channel loop it reloaded and
// stored them for every state. Same results bit for bit; a VideoMamba-M bf16 scan on 2 cores of a Xeon with AMX,
// medians of alternating runs: 8.97 -> 8.38 ms built for AVX512, 12.7 -> 10.9 ms built for AVX2.
#if defined(__AVX512F__)
#define MVG_VEC_LANES 16
#elif defined(__AVX__)
#define MVG_VEC_LANES 8
#else
#define MVG_VEC_LANES 4
#endif
constexpr int kVec = MVG_VEC_LANES;
typedef float vf __attribute__((vector_size(MVG_VEC_LANES * 4)));
typedef int32_t vi __attribute__((vector_size(MVG_VEC_LANES * 4)));

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

inline float clamp_exp_arg(float x, const Limits& c) { return std::min(std::max(x, c.lo), c.hi); }
inline vf clamp_exp_arg(vf x, const Limits& c) {  // the same selections, lane by lane
  const vf lo = vf{} + c.lo, hi = vf{} + c.hi;
  x = x < lo ? lo : x;
  return hi < x ? hi : x;
}

// 2^k for integral k in [-127, 127] (0 at -127).
inline float exp2_int(float k) {
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return scale;
}
inline vf exp2_int(vf k) {
  const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return scale;
}

// Cephes-style expf, accurate to ~1 ulp; returns 0 below about -87.7 (exactly where 2^k leaves the normal range).
// V is float or vf: the same operations either way.
template <typename V>
inline V exp_f(V x, const Limits& c) {
  x = clamp_exp_arg(x, c);
  const V k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  const V r = x - k * 0.693359375f + k * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * r * r + r + 1.0f;
  return y * exp2_int(k);
}

// 2^t, for the scan's decay factors e^(delta A) = 2^(delta A log2 e): 2^k 2^f with k = round(t) and f = t - k in
// [-1/2, 1/2], 2^f by a degree-6 minimax polynomial (relative error 8e-8 with fp32 Horner steps, about the old exp_f's
// 1 ulp). Fewer operations than exp_f: no range reduction by a split ln 2, and under AVX512 f comes from one vreduceps
// and 2^k p from one vscalefps, which also covers the clamped ends (t >= -127: 2^k p is then denormal and flushed to
// zero, as exp_f's is 0 there).
inline vf exp2_decay(vf t, const Limits& c) {
  constexpr float c6 = 1.5345812426e-04f, c5 = 1.3399930904e-03f, c4 = 9.6184890717e-03f, c3 = 5.5503286421e-02f,
                  c2 = 2.4022646248e-01f, c1 = 6.9314718246e-01f;
#if defined(__AVX512F__) && MVG_VEC_LANES == 16
  t = _mm512_max_ps(t, _mm512_set1_ps(c.lo2));
  const vf f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEAREST_INT);
  const vf k = t - f;
#else
  const vf lo = vf{} + c.lo2, hi = vf{} + c.hi2;
  t = t < lo ? lo : t;
  t = hi < t ? hi : t;
  const vf k = (t + 12582912.0f) - 12582912.0f;  // round(t)
  const vf f = t - k;
#endif
  vf p = vf{} + c6;
  p = p * f + c5;
  p = p * f + c4;
  p = p * f + c3;
  p = p * f + c2;
  p = p * f + c1;
  p = p * f + 1.0f;
#if defined(__AVX512F__) && MVG_VEC_LANES == 16
  return _mm512_scalef_ps(p, k);
#else
  return p * exp2_int(k);
#endif
}

// log(1 + e) for e in [0, 1] (Cephes logf polynomial on [sqrt(1/2) - 1, sqrt(2) - 1]; e itself is never rounded
// through 1 + e, so tiny e keep full relative accuracy).
inline float log1p_unit(float e, const Limits& c) {
  // k = 1 where 1 + e > sqrt(2): there use (1 + e) / 2 and add ln 2. x is picked by weighting with k and 1 - k
  // (exact: one of the two terms is zero), not by a branch, so that the softplus loop vectorises.
  const float k = e > c.split ? c.one : c.zero;
  const float x = (c.one - k) * e + k * ((e - 1.0f) * 0.5f);
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

#include "bf16.h"

// An element of either input type as fp32 (the templates pick the overload).
inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return bf16_to_float(v); }

// A (batch, channel, time) view with element strides: inputs are read in place, whatever their layout.
struct View3 {
  const void* p;
  int64_t sb, sd, st;
  int32_t dtype;
};

// B or C: (batch, group, state, time).
struct View4 {
  const void* p;
  int64_t sb, sg, sn, st;
  int32_t dtype;
};

// The output: (batch, channel, time) with element strides.
struct OutView {
  void* p;
  int64_t sb, sd, st;
  int32_t dtype;
};

struct Problem {
  View3 u, delta, z;  // z.p may be null
  View4 B, C;
  const float *A, *D, *delta_bias;  // contiguous (dim, dstate), (dim), (dim); D and delta_bias may be null
  OutView out;
  float* last_state;                // contiguous (batch, dim, dstate); may be null
  int64_t batch, dim, dstate, groups, seqlen;
  bool softplus;
  Limits lim;
};

// One work item's buffers: `width` channels (whole blocks). h and a hold each block's (N x kLanes) state and decay
// rates one block after the other; the tiles are (kSteps x width), row i holding step t0 + i.
struct Scratch {
  int width;
  std::vector<float> h, a, bt, ct, dt, ut, dtu, yt, zt, skip, bias;
  Scratch(int64_t n, int width)
      : width(width), h(n * width), a(n * width), bt(kSteps * n), ct(kSteps * n), dt(kSteps * width),
        ut(kSteps * width), dtu(kSteps * width), yt(kSteps * width), zt(kSteps * width), skip(width), bias(width) {}
};

// Element size of a dtype code.
inline int64_t element_bytes(int32_t dtype) { return dtype == kBF16 ? 2 : 4; }

// Asks for the cache lines of step i of the tile at t0 (channels [d0, d0 + nd)): channel contiguous, that step's
// row of the block (one or two lines); time contiguous, channel i's run of the tile. The scan issues these for the
// next tile one step at a time while it computes the current one: in the mixer's channel-contiguous layout a block's
// steps are lines 2304 bytes apart, beyond the hardware prefetchers' strides. Asking for a whole tile at once had
// filled the line-fill buffers and stalled there (perf: ~40 % of the tile loads' time); spread over the steps it is
// worth ~3 % of a VideoMamba-M scan (minima of alternating runs, Xeon with AMX). A prefetch past either end of the
// tensor never faults.
template <bool kWrite, typename V>
inline void prefetch_step(const V& x, int64_t b, int64_t d0, int64_t t0, int i, int nd) {
  if (!x.p) return;
  const int64_t es = element_bytes(x.dtype);
  const char* base = static_cast<const char*>(x.p) + (b * x.sb + d0 * x.sd + t0 * x.st) * es;
  if (x.sd == 1) {
    const char* row = base + i * x.st * es;
    for (int64_t o = 0; o < nd * es; o += 64) __builtin_prefetch(row + o, kWrite);
  } else if ((x.st == 1 || x.st == -1) && i < nd) {
    const char* run = base + i * x.sd * es;
    for (int64_t o = 0; o < kSteps * es; o += 64) __builtin_prefetch(run + x.st * o, kWrite);
  }
}

// tile[i * w + j] = x[b, d0 + j, t0 + i] for j < w; channels past the last (nd) are zero. The two common layouts
// (time contiguous, or channel contiguous as in a transposed Linear output) get loops the compiler can stream.
template <typename T>
void load_tile_as(const View3& x, int64_t b, int64_t d0, int64_t t0, int tt, int nd, int w, float* tile) {
  const T* base = static_cast<const T*>(x.p) + b * x.sb + d0 * x.sd + t0 * x.st;
  if (x.st == 1) {
    for (int j = 0; j < w; ++j) {
      if (j < nd) {
        const T* row = base + j * x.sd;
        for (int i = 0; i < tt; ++i) tile[i * w + j] = widen(row[i]);
      } else {
        for (int i = 0; i < tt; ++i) tile[i * w + j] = 0.0f;
      }
    }
  } else if (x.sd == 1) {
    for (int i = 0; i < tt; ++i) {
      const T* col = base + i * x.st;
      for (int j = 0; j < nd; ++j) tile[i * w + j] = widen(col[j]);
      for (int j = nd; j < w; ++j) tile[i * w + j] = 0.0f;
    }
  } else {
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < w; ++j) tile[i * w + j] = j < nd ? widen(base[i * x.st + j * x.sd]) : 0.0f;
  }
}

inline void load_tile(const View3& x, int64_t b, int64_t d0, int64_t t0, int tt, int nd, int w, float* tile) {
  if (x.dtype == kBF16)
    load_tile_as<uint16_t>(x, b, d0, t0, tt, nd, w, tile);
  else
    load_tile_as<float>(x, b, d0, t0, tt, nd, w, tile);
}

// dst[i * N + n] = x[b, g, n, t0 + i] for the tt steps of a tile.
template <typename T>
void load_states_as(const View4& x, int64_t b, int64_t g, int64_t t0, int tt, int64_t N, float* dst) {
  const T* base = static_cast<const T*>(x.p) + b * x.sb + g * x.sg + t0 * x.st;
  for (int i = 0; i < tt; ++i)
    for (int64_t n = 0; n < N; ++n) dst[i * N + n] = widen(base[n * x.sn + i * x.st]);
}

inline void load_states(const View4& x, int64_t b, int64_t g, int64_t t0, int tt, int64_t N, float* dst) {
  if (x.dtype == kBF16)
    load_states_as<uint16_t>(x, b, g, t0, tt, N, dst);
  else
    load_states_as<float>(x, b, g, t0, tt, N, dst);
}

// out[b, d0 + j, t0 + i] = tile[i * w + j] for the nd channels of the item, at the output's strides: time
// contiguous (the usual layout) and channel contiguous (time-major, what a following Linear reads) get streaming loops.
template <typename T>
void store_tile_as(const OutView& o, int64_t b, int64_t d0, int64_t t0, int tt, int nd, int w, const float* tile) {
  T* base = static_cast<T*>(o.p) + b * o.sb + d0 * o.sd + t0 * o.st;
  auto put = [](float v, T* dst) {
    if constexpr (std::is_same_v<T, uint16_t>)
      *dst = float_to_bf16(v);
    else
      *dst = v;
  };
  if (o.st == 1) {
    for (int j = 0; j < nd; ++j)
      for (int i = 0; i < tt; ++i) put(tile[i * w + j], base + j * o.sd + i);
  } else if (o.sd == 1) {
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < nd; ++j) put(tile[i * w + j], base + i * o.st + j);
  } else {
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < nd; ++j) put(tile[i * w + j], base + i * o.st + j * o.sd);
  }
}

inline void store_tile(const OutView& o, int64_t b, int64_t d0, int64_t t0, int tt, int nd, int w,
                       const float* tile) {
  if (o.dtype == kBF16)
    store_tile_as<uint16_t>(o, b, d0, t0, tt, nd, w, tile);
  else
    store_tile_as<float>(o, b, d0, t0, tt, nd, w, tile);
}

// Scans channels [d0, d0 + nd) of batch b (all inside group g, nd <= s.width) over the whole sequence, tile by
// tile: each tile's inputs are read for all of the item's channels at once (in the mixer's channel-contiguous layout
// a run of nd channels per step rather than one 64-byte line), then its blocks of kLanes channels are scanned one
// after the other. B and C are read once per tile for all blocks.
void scan_channels(const Problem& p, Scratch& s, int64_t b, int64_t g, int64_t d0, int nd) {
  const int64_t L = p.seqlen, N = p.dstate;
  const int w = s.width, blocks = (nd + kLanes - 1) / kLanes;
  const Limits lim = p.lim;
  std::fill(s.h.begin(), s.h.end(), 0.0f);
  std::fill(s.a.begin(), s.a.end(), 0.0f);
  std::fill(s.skip.begin(), s.skip.end(), 0.0f);
  std::fill(s.bias.begin(), s.bias.end(), 0.0f);
  for (int j = 0; j < nd; ++j) {
    float* aj = s.a.data() + (j / kLanes) * N * kLanes + j % kLanes;
    for (int64_t n = 0; n < N; ++n) aj[n * kLanes] = p.A[(d0 + j) * N + n] * 1.44269504088896341f;
    if (p.D) s.skip[j] = p.D[d0 + j];
    if (p.delta_bias) s.bias[j] = p.delta_bias[d0 + j];
  }
  float *dtt = s.dt.data(), *ut = s.ut.data(), *dtu = s.dtu.data(), *yt = s.yt.data(), *zt = s.zt.data();
  const float* bias = s.bias.data();
  for (int64_t t0 = 0; t0 < L; t0 += kSteps) {
    const int tt = static_cast<int>(std::min<int64_t>(kSteps, L - t0));
    load_tile(p.delta, b, d0, t0, tt, nd, w, dtt);
    load_tile(p.u, b, d0, t0, tt, nd, w, ut);
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < w; ++j) dtt[i * w + j] += bias[j];
    if (p.softplus)
      for (int i = 0; i < tt * w; ++i) dtt[i] = softplus_f(dtt[i], lim);
    for (int i = 0; i < tt * w; ++i) dtu[i] = dtt[i] * ut[i];
    load_states(p.B, b, g, t0, tt, N, s.bt.data());
    load_states(p.C, b, g, t0, tt, N, s.ct.data());
    constexpr int kParts = kLanes / kVec;  // vectors per time step of a block
    static_assert(kLanes % kVec == 0, "a block's channels fill whole vectors");
    const bool more = t0 + kSteps < L;
    for (int k = 0; k < blocks; ++k) {
      const int j0 = k * kLanes, nk = std::min(kLanes, nd - j0);
      float* h = s.h.data() + k * N * kLanes;
      const float* a = s.a.data() + k * N * kLanes;
      for (int i = 0; i < tt; ++i) {
        if (more) {
          prefetch_step<false>(p.delta, b, d0 + j0, t0 + kSteps, i, nk);
          prefetch_step<false>(p.u, b, d0 + j0, t0 + kSteps, i, nk);
          prefetch_step<false>(p.z, b, d0 + j0, t0 + kSteps, i, nk);
          prefetch_step<true>(p.out, b, d0 + j0, t0 + kSteps, i, nk);
        }
        const int row = i * w + j0;
        vf dt[kParts], du[kParts], y[kParts];
        for (int q = 0; q < kParts; ++q) {
          dt[q] = loadv(dtt + row + q * kVec);
          du[q] = loadv(dtu + row + q * kVec);
          y[q] = vf{};
        }
        for (int64_t n = 0; n < N; ++n) {
          const float bn = s.bt[i * N + n], cn = s.ct[i * N + n];
          float* hn = h + n * kLanes;
          const float* an = a + n * kLanes;
          for (int q = 0; q < kParts; ++q) {
            const vf hv = exp2_decay(dt[q] * loadv(an + q * kVec), lim) * loadv(hn + q * kVec) + du[q] * bn;
            storev(hn + q * kVec, hv);
            y[q] += cn * hv;
          }
        }
        for (int q = 0; q < kParts; ++q)
          storev(yt + row + q * kVec, y[q] + loadv(s.skip.data() + j0 + q * kVec) * loadv(ut + row + q * kVec));
      }
    }
    if (p.z.p) {
      load_tile(p.z, b, d0, t0, tt, nd, w, zt);
      for (int i = 0; i < tt * w; ++i) yt[i] *= silu_f(zt[i], lim);
    }
    store_tile(p.out, b, d0, t0, tt, nd, w, yt);
  }
  if (p.last_state)
    for (int j = 0; j < nd; ++j)
      for (int64_t n = 0; n < N; ++n)
        p.last_state[(b * p.dim + d0 + j) * N + n] = s.h[(j / kLanes) * N * kLanes + n * kLanes + j % kLanes];
}

// The same view walked from its last time step to its first: starts at step L - 1, time stride negated.
template <typename V>
V reversed(V v, int64_t seqlen) {
  if (v.p && seqlen > 0) {
    const int64_t bytes = (seqlen - 1) * v.st * element_bytes(v.dtype);
    v.p = reinterpret_cast<decltype(v.p)>(reinterpret_cast<uintptr_t>(v.p) + bytes);
    v.st = -v.st;
  }
  return v;
}

// ---------------------------------------------------------------- depthwise causal conv1d (+ SiLU)

struct ConvProblem {
  View3 x;
  OutView out;
  const float* weight_t;  // (width, dim): tap k of every channel contiguous
  const float* bias;      // (dim) or null
  int64_t batch, dim, seqlen, width;
  bool silu, reverse;
  Limits lim;
};

// The input step tap k reads for output step t: t - (W - 1) + k (causal), or t + (W - 1) - k (anti-causal, the
// causal conv of the time-reversed sequence, reversed back).
inline int64_t tap_step(const ConvProblem& p, int64_t t, int64_t k) {
  return p.reverse ? t + (p.width - 1) - k : t - (p.width - 1) + k;
}

// Steps [t0, t1) of batch b where input and output are channel contiguous (a transposed Linear output, as the
// Mamba mixer's x is): every tap is one streaming multiply-add over the channels.
template <typename TI, typename TO>
void conv_steps_channel_major(const ConvProblem& p, int64_t b, int64_t t0, int64_t t1, float* acc) {
  const int64_t D = p.dim;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t d = 0; d < D; ++d) acc[d] = p.bias ? p.bias[d] : 0.0f;
    for (int64_t k = 0; k < p.width; ++k) {
      const int64_t src = tap_step(p, t, k);
      if (src < 0 || src >= p.seqlen) continue;
      const TI* __restrict xr = static_cast<const TI*>(p.x.p) + b * p.x.sb + src * p.x.st;
      const float* __restrict wk = p.weight_t + k * D;
      for (int64_t d = 0; d < D; ++d) acc[d] += wk[d] * widen(xr[d]);
    }
    if (p.silu)
      for (int64_t d = 0; d < D; ++d) acc[d] = silu_f(acc[d], p.lim);
    TO* o = static_cast<TO*>(p.out.p) + b * p.out.sb + t * p.out.st;
    for (int64_t d = 0; d < D; ++d) {
      if constexpr (std::is_same_v<TO, uint16_t>)
        o[d] = float_to_bf16(acc[d]);
      else
        o[d] = acc[d];
    }
  }
}

constexpr int64_t kConvSteps = 64;  // time steps per work item of the conv

// Steps [t0, t1) of batch b, channel after channel, at any strides. Per channel the steps whose taps all fall inside
// the sequence are one multiply-add per tap over the run of steps (streaming when time is contiguous: kUnitTime),
// the few at the ends one at a time.
template <typename TI, typename TO, bool kUnitTime>
void conv_steps_channel_by_channel(const ConvProblem& p, int64_t b, int64_t t0, int64_t t1) {
  const int64_t W = p.width, L = p.seqlen;
  const int64_t xs = kUnitTime ? 1 : p.x.st, os = kUnitTime ? 1 : p.out.st;
  const int64_t lo = std::min(t1, std::max(t0, p.reverse ? int64_t{0} : W - 1));
  const int64_t hi = std::max(lo, std::min(t1, p.reverse ? L - (W - 1) : L));
  alignas(64) float acc[kConvSteps];
  for (int64_t d = 0; d < p.dim; ++d) {
    const TI* xr = static_cast<const TI*>(p.x.p) + b * p.x.sb + d * p.x.sd;
    TO* o = static_cast<TO*>(p.out.p) + b * p.out.sb + d * p.out.sd;
    const float bias = p.bias ? p.bias[d] : 0.0f;
    for (int64_t t = t0; t < t1; ++t) {
      if (t >= lo && t < hi) {
        t = hi - 1;
        continue;
      }
      float sum = bias;
      for (int64_t k = 0; k < W; ++k) {
        const int64_t src = tap_step(p, t, k);
        if (src >= 0 && src < L) sum += p.weight_t[k * p.dim + d] * widen(xr[src * xs]);
      }
      acc[t - t0] = sum;
    }
    for (int64_t t = lo; t < hi; ++t) acc[t - t0] = bias;
    for (int64_t k = 0; k < W; ++k) {
      const float wk = p.weight_t[k * p.dim + d];
      const int64_t shift = tap_step(p, 0, k);
      for (int64_t t = lo; t < hi; ++t) acc[t - t0] += wk * widen(xr[(t + shift) * xs]);
    }
    if (p.silu)
      for (int64_t t = t0; t < t1; ++t) acc[t - t0] = silu_f(acc[t - t0], p.lim);
    for (int64_t t = t0; t < t1; ++t) {
      if constexpr (std::is_same_v<TO, uint16_t>)
        o[t * os] = float_to_bf16(acc[t - t0]);
      else
        o[t * os] = acc[t - t0];
    }
  }
}

template <typename TI, typename TO>
void conv_steps(const ConvProblem& p, int64_t b, int64_t t0, int64_t t1, float* acc) {
  if (p.x.sd == 1 && p.out.sd == 1)
    conv_steps_channel_major<TI, TO>(p, b, t0, t1, acc);
  else if (p.x.st == 1 && p.out.st == 1)
    conv_steps_channel_by_channel<TI, TO, true>(p, b, t0, t1);
  else
    conv_steps_channel_by_channel<TI, TO, false>(p, b, t0, t1);
}

void conv_block(const ConvProblem& p, int64_t b, int64_t t0, int64_t t1, float* acc) {
  const bool in16 = p.x.dtype == kBF16, out16 = p.out.dtype == kBF16;
  if (in16 && out16)
    conv_steps<uint16_t, uint16_t>(p, b, t0, t1, acc);
  else if (in16)
    conv_steps<uint16_t, float>(p, b, t0, t1, acc);
  else if (out16)
    conv_steps<float, uint16_t>(p, b, t0, t1, acc);
  else
    conv_steps<float, float>(p, b, t0, t1, acc);
}

#include "threads.h"

// Runs work(item, scratch) for items [0, items) on up to num_threads threads (the caller's among them), each with its
// own scratch; false when a worker ran out of memory.
template <typename MakeScratch, typename Work>
bool run_parallel(int64_t items, int num_threads, MakeScratch make_scratch, Work work) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&]() {
#if defined(__SSE2__)
    // Flush denormals: a decaying state would otherwise crawl through slow denormal arithmetic.
    const unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040);
#endif
    try {
      auto scratch = make_scratch();
      for (int64_t it = next++; it < items; it = next++) work(it, scratch);
    } catch (...) {
      failed = true;
    }
#if defined(__SSE2__)
    _mm_setcsr(saved_csr);
#endif
  };
  on_threads(num_threads, items, worker);
  return !failed;
}

}  // namespace

// Shapes: u, delta, z, out (batch, dim, seqlen) and B, C (batch, groups, dstate, seqlen) with any element strides,
// given in `strides` as u[3], delta[3], z[3], B[4], C[4], out[3] (batch, channel/group, [state,] time), and element
// types in `dtypes` as u, delta, z, B, C, out (0 = fp32, 1 = bf16); A (dim, dstate), D and delta_bias (dim)
// contiguous fp32; last_state (batch, dim, dstate, fp32) contiguous. z, D, delta_bias and last_state may be null.
// With `reverse` the scan runs from the last time step to the first: the same as flipping every input along time,
// scanning, and flipping the output back (the backward direction of a bidirectional Mamba), with no copies.
// Returns 0 on success, 1 on bad sizes or element types, 2 when a worker ran out of memory.
extern "C" int mvg_selective_scan_fwd(const void* u, const void* delta, const float* A, const void* B, const void* C,
                                      const float* D, const void* z, const float* delta_bias, int delta_softplus,
                                      void* out, float* last_state, int64_t batch, int64_t dim, int64_t dstate,
                                      int64_t groups, int64_t seqlen, const int64_t* strides, const int32_t* dtypes,
                                      int reverse, int num_threads) {
  if (batch < 0 || dim <= 0 || dstate <= 0 || groups <= 0 || dim % groups != 0 || seqlen < 0) return 1;
  for (int i = 0; i < 6; ++i)
    if (dtypes[i] != kF32 && dtypes[i] != kBF16) return 1;
  const int64_t* st = strides;
  Problem p{View3{u, st[0], st[1], st[2], dtypes[0]},
            View3{delta, st[3], st[4], st[5], dtypes[1]},
            View3{z, st[6], st[7], st[8], dtypes[2]},
            View4{B, st[9], st[10], st[11], st[12], dtypes[3]},
            View4{C, st[13], st[14], st[15], st[16], dtypes[4]},
            A, D, delta_bias, OutView{out, st[17], st[18], st[19], dtypes[5]}, last_state, batch, dim, dstate,
            groups, seqlen, delta_softplus != 0, Limits{-88.0f, 88.0f, 0.41421356f, 0.0f, 1.0f, -127.0f, 127.0f}};
  if (reverse) {
    p.u = reversed(p.u, seqlen);
    p.delta = reversed(p.delta, seqlen);
    p.z = reversed(p.z, seqlen);
    p.B = reversed(p.B, seqlen);
    p.C = reversed(p.C, seqlen);
    p.out = reversed(p.out, seqlen);
  }
  // Work items of whole blocks, at most kMaxBlocks each, as many per group as a multiple of the threads (36 blocks
  // on 2 threads: 6 items of 6).
  const int64_t per_group = dim / groups;
  const int64_t blocks = (per_group + kLanes - 1) / kLanes;
  const int64_t threads = std::max(1, num_threads);
  const int64_t parts = ((blocks + kMaxBlocks - 1) / kMaxBlocks + threads - 1) / threads * threads;
  const int64_t item_blocks = (blocks + parts - 1) / parts;
  const int64_t items = (blocks + item_blocks - 1) / item_blocks;
  const int width = static_cast<int>(item_blocks * kLanes);
  const bool ok = run_parallel(
      batch * groups * items, num_threads, [&] { return Scratch(dstate, width); },
      [&](int64_t it, Scratch& s) {
        const int64_t part = it % items, g = (it / items) % groups, b = it / (items * groups);
        const int64_t d0 = g * per_group + part * width;
        scan_channels(p, s, b, g, d0, static_cast<int>(std::min<int64_t>(width, (g + 1) * per_group - d0)));
      });
  return ok ? 0 : 2;
}

// Depthwise conv1d of x (batch, dim, seqlen) with weight (dim, width) and bias (dim), both contiguous fp32, over
// the zero-padded sequence, optionally followed by SiLU: causal (out[t] reads x[t - width + 1 .. t]), or with
// `reverse` anti-causal (x[t .. t + width - 1]). x and out may have any element strides (`strides`: x[3], out[3])
// and be fp32 or bf16 (`dtypes`: x, out); sums and SiLU are fp32. Returns 0 on success, 1 on bad sizes or element
// types, 2 when a worker ran out of memory.
extern "C" int mvg_causal_conv1d_fwd(const void* x, const float* weight, const float* bias, int silu, int reverse,
                                     void* out, int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                     const int64_t* strides, const int32_t* dtypes, int num_threads) {
  if (batch < 0 || dim <= 0 || seqlen < 0 || width <= 0) return 1;
  for (int i = 0; i < 2; ++i)
    if (dtypes[i] != kF32 && dtypes[i] != kBF16) return 1;
  std::vector<float> weight_t;
  try {
    weight_t.resize(width * dim);
  } catch (...) {
    return 2;
  }
  for (int64_t d = 0; d < dim; ++d)
    for (int64_t k = 0; k < width; ++k) weight_t[k * dim + d] = weight[d * width + k];
  const int64_t* st = strides;
  const ConvProblem p{View3{x, st[0], st[1], st[2], dtypes[0]}, OutView{out, st[3], st[4], st[5], dtypes[1]},
                      weight_t.data(), bias, batch, dim, seqlen, width, silu != 0, reverse != 0,
                      Limits{-88.0f, 88.0f, 0.41421356f, 0.0f, 1.0f, -127.0f, 127.0f}};
  const int64_t blocks = (seqlen + kConvSteps - 1) / kConvSteps;
  const bool ok = run_parallel(
      batch * blocks, num_threads, [&] { return std::vector<float>(dim); },
      [&](int64_t it, std::vector<float>& acc) {
        const int64_t b = it / blocks, t0 = (it % blocks) * kConvSteps;
        conv_block(p, b, t0, std::min(seqlen, t0 + kConvSteps), acc.data());
      });
  return ok ? 0 : 2;
}
