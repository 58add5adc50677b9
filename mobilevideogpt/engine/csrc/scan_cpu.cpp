// Forward selective scan on CPU, called from mobilevideogpt/engine/scan_cpu.py through ctypes.
// Plain C++17 with no torch headers: it builds with one compiler call and does not depend on the torch ABI.
//
// The sequence is walked once per block of 32 channels: their state (32 x N) stays in L1 cache, exp / update /
// readout are fused, and channel blocks are spread over threads, so no (L, D, N)-sized array is ever built.
// u, delta, z, B, C and out may each be fp32 or bf16; they are widened to fp32 when a tile is loaded, all
// arithmetic and the state are fp32, and the output is rounded once when it is written.

#include <algorithm>
#include <atomic>
#include <cmath>
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

enum : int32_t { kF32 = 0, kBF16 = 1 };  // element types, as passed in `dtypes`

// Constants passed at run time on purpose: with literal clamp bounds GCC turns the clamped ends of exp_f into
// branches (it constant-folds them), and a select between literal 0 and 1 in log1p_unit likewise, and then refuses
// to vectorise every loop that calls them.
struct Limits {
  float lo, hi, split, zero, one;
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

// bf16 is the upper half of an fp32: widening is exact.
inline float widen(float v) { return v; }
inline float widen(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even, NaN kept quiet: bit for bit what torch's float -> bfloat16 conversion does.
inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

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

struct Problem {
  View3 u, delta, z;  // z.p may be null
  View4 B, C;
  const float *A, *D, *delta_bias;  // contiguous (dim, dstate), (dim), (dim); D and delta_bias may be null
  void* out;                        // contiguous (batch, dim, seqlen) of out_dtype
  float* last_state;                // contiguous (batch, dim, dstate); may be null
  int32_t out_dtype;
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
template <typename T>
void load_tile_as(const View3& x, int64_t b, int64_t d0, int64_t t0, int tt, int nd, float (*tile)[kLanes]) {
  const T* base = static_cast<const T*>(x.p) + b * x.sb + d0 * x.sd + t0 * x.st;
  if (x.st == 1) {
    for (int j = 0; j < kLanes; ++j) {
      if (j < nd) {
        const T* row = base + j * x.sd;
        // 32 rows are 32 streams, too many for the hardware prefetcher: ask for the next tile now, it is needed
        // only after this tile's scan (~4 % faster, measured; a prefetch past the end never faults).
        for (int i = 0; i < kSteps; i += 64 / sizeof(T)) __builtin_prefetch(row + kSteps + i);
        for (int i = 0; i < tt; ++i) tile[i][j] = widen(row[i]);
      } else {
        for (int i = 0; i < tt; ++i) tile[i][j] = 0.0f;
      }
    }
  } else if (x.sd == 1) {
    for (int i = 0; i < tt; ++i) {
      const T* col = base + i * x.st;
      for (int j = 0; j < nd; ++j) tile[i][j] = widen(col[j]);
      for (int j = nd; j < kLanes; ++j) tile[i][j] = 0.0f;
    }
  } else {
    for (int i = 0; i < tt; ++i)
      for (int j = 0; j < kLanes; ++j) tile[i][j] = j < nd ? widen(base[i * x.st + j * x.sd]) : 0.0f;
  }
}

inline void load_tile(const View3& x, int64_t b, int64_t d0, int64_t t0, int tt, int nd, float (*tile)[kLanes]) {
  if (x.dtype == kBF16)
    load_tile_as<uint16_t>(x, b, d0, t0, tt, nd, tile);
  else
    load_tile_as<float>(x, b, d0, t0, tt, nd, tile);
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

// out[row0 + j, t0 + i] = tile[i][j] for the nd channels of the block.
void store_tile(const Problem& p, int64_t row0, int64_t t0, int tt, int nd, const float (*tile)[kLanes]) {
  const int64_t L = p.seqlen;
  for (int j = 0; j < nd; ++j) {
    const int64_t offset = (row0 + j) * L + t0;
    if (p.out_dtype == kBF16) {
      uint16_t* o = static_cast<uint16_t*>(p.out) + offset;
      for (int i = 0; i < tt; ++i) o[i] = to_bf16(tile[i][j]);
    } else {
      float* o = static_cast<float*>(p.out) + offset;
      for (int i = 0; i < tt; ++i) o[i] = tile[i][j];
    }
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
    load_states(p.B, b, g, t0, tt, N, s.bt.data());
    load_states(p.C, b, g, t0, tt, N, s.ct.data());
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
    store_tile(p, row0, t0, tt, nd, s.yt);
  }
  if (p.last_state)
    for (int j = 0; j < nd; ++j)
      for (int64_t n = 0; n < N; ++n) p.last_state[(row0 + j) * N + n] = h[n * kLanes + j];
}

}  // namespace

// Shapes: u, delta, z (batch, dim, seqlen) and B, C (batch, groups, dstate, seqlen) with any element strides,
// given in `strides` as u[3], delta[3], z[3], B[4], C[4] (batch, channel/group, [state,] time), and element types
// in `dtypes` as u, delta, z, B, C, out (0 = fp32, 1 = bf16); A (dim, dstate), D and delta_bias (dim) contiguous
// fp32; out (batch, dim, seqlen) and last_state (batch, dim, dstate, fp32) contiguous. z, D, delta_bias and
// last_state may be null.
// Returns 0 on success, 1 on bad sizes or element types, 2 when a worker ran out of memory.
extern "C" int mvg_selective_scan_fwd(const void* u, const void* delta, const float* A, const void* B, const void* C,
                                      const float* D, const void* z, const float* delta_bias, int delta_softplus,
                                      void* out, float* last_state, int64_t batch, int64_t dim, int64_t dstate,
                                      int64_t groups, int64_t seqlen, const int64_t* strides, const int32_t* dtypes,
                                      int num_threads) {
  if (batch < 0 || dim <= 0 || dstate <= 0 || groups <= 0 || dim % groups != 0 || seqlen < 0) return 1;
  for (int i = 0; i < 6; ++i)
    if (dtypes[i] != kF32 && dtypes[i] != kBF16) return 1;
  const int64_t* st = strides;
  const Problem p{View3{u, st[0], st[1], st[2], dtypes[0]},
                  View3{delta, st[3], st[4], st[5], dtypes[1]},
                  View3{z, st[6], st[7], st[8], dtypes[2]},
                  View4{B, st[9], st[10], st[11], st[12], dtypes[3]},
                  View4{C, st[13], st[14], st[15], st[16], dtypes[4]},
                  A, D, delta_bias, out, last_state, dtypes[5], batch, dim, dstate, groups, seqlen,
                  delta_softplus != 0, Limits{-88.0f, 88.0f, 0.41421356f, 0.0f, 1.0f}};
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
