// Causal attention for a CPU prefill (fp32, forward only), called from mobilevideogpt/engine/attention_cpu.py through
// ctypes. Plain C++17 with no torch headers (see scan_cpu.cpp).
//
// Flash attention (Dao et al., 2022) with grouped-query heads packed: the query heads that share a key/value head
// (7 of Qwen2.5-0.5B's 14) form the rows of one block, so each key/value tile loaded serves all of them. A work item
// is one key/value head and a block of query positions; it walks the key tiles up to its last position, keeping a
// running row maximum and sum (online softmax), so the (T x T) score matrix never exists. Keys are packed once per
// head in tiles of 64, each transposed so that the score micro-kernel reads 16 consecutive keys per step; values
// are read in place. Micro-kernels: 6 rows x 16 columns of fp32 FMAs (12 accumulators) for scores and for the value
// products. Measured on 2 cores of an AVX2 EPYC at 2500 positions (14 query, 2 key/value heads of 64): 87 ms against
// torch's SDPA 97 ms; the two products alone run at the cores' FMA peak, the online softmax is the other ~20 ms.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#include <pthread.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MVG_ATTENTION_AVX2 1
#endif

namespace {

constexpr int64_t kPositions = 16;  // query positions per work item (x the group's heads = rows)
constexpr int64_t kKeys = 64;       // keys per tile
constexpr int kMr = 6;              // rows per micro-kernel

struct Problem {
  const float* q;  // (B, Hq, T, D) element strides q_s[0..2], unit along D
  const float* k;  // (B, Hkv, T, D) strides k_s
  const float* v;  // (B, Hkv, T, D) strides v_s
  float* out;      // (B, T, Hq, D) contiguous
  int64_t batch, heads, kv_heads, t, d;
  int64_t q_s[3], k_s[3], v_s[3];
  float scale;
};

#include "exp_vec.h"
#include "threads.h"

// e^x for x <= 0 (scores minus their running maximum); exactly 0 below about -87.3, including -inf.
#if defined(MVG_ATTENTION_AVX2)
inline __m256 exp_neg(__m256 x) {
  return _mm256_and_ps(exp_avx2(x), _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_GE_OQ));
}
#endif

inline float exp_neg(float x) { return x < -87.33654f ? 0.0f : std::exp(x); }

// Per work item: the block's query rows (scaled), their running output, maximum and sum, and one score tile.
struct Scratch {
  std::vector<float> q, o, s, m, l;
  std::vector<int64_t> pos;  // each row's query position
  explicit Scratch(int64_t rows, int64_t d)
      : q(rows * d), o(rows * d), s(rows * kKeys), m(rows), l(rows), pos(rows) {}
};

#if defined(MVG_ATTENTION_AVX2)
// s[r][j0..j0+16) = q[r] . kt[., j0..j0+16) for MR rows from r0; kt is one tile of keys packed as (d, kKeys).
template <int MR>
inline void score_kernel(const float* q, int64_t d, const float* kt, int64_t j0, int64_t r0, float* s) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* qr = q + r0 * d;
  for (int64_t e = 0; e < d; ++e) {
    const __m256 k0 = _mm256_loadu_ps(kt + e * kKeys + j0);
    const __m256 k1 = _mm256_loadu_ps(kt + e * kKeys + j0 + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(qr + r * d + e);
      acc[r][0] = _mm256_fmadd_ps(b, k0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, k1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(s + (r0 + r) * kKeys + j0, acc[r][0]);
    _mm256_storeu_ps(s + (r0 + r) * kKeys + j0 + 8, acc[r][1]);
  }
}

// o[r][c0..c0+16) += sum_j p[r][j] * v[j][c0..c0+16) over n keys, for MR rows from r0.
template <int MR>
inline void value_kernel(const float* p, const float* v, int64_t v_stride, int64_t n, int64_t c0, int64_t r0,
                         float* o, int64_t d) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm256_loadu_ps(o + (r0 + r) * d + c0);
    acc[r][1] = _mm256_loadu_ps(o + (r0 + r) * d + c0 + 8);
  }
  const float* pr = p + r0 * kKeys;
  for (int64_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * v_stride + c0);
    const __m256 v1 = _mm256_loadu_ps(v + j * v_stride + c0 + 8);
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(pr + r * kKeys + j);
      acc[r][0] = _mm256_fmadd_ps(b, v0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(b, v1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(o + (r0 + r) * d + c0, acc[r][0]);
    _mm256_storeu_ps(o + (r0 + r) * d + c0 + 8, acc[r][1]);
  }
}


// Calls kernel(std::integral_constant<int, mr>) for mr in [1, kMr]: a micro-kernel's row count is a template
// argument, so its accumulators stay in registers.
template <int MR = kMr, typename Kernel>
inline void by_rows(int mr, Kernel kernel) {
  if constexpr (MR > 1) {
    if (mr < MR) return by_rows<MR - 1>(mr, kernel);
  }
  kernel(std::integral_constant<int, MR>{});
}
#endif

// Scores of rows [r0, r0 + mr) against keys [j0, j0 + cols) of the packed tile kt (d, kKeys).
inline void score_tile(const float* q, int64_t d, const float* kt, int64_t j0, int64_t r0, int mr, float* s,
                       int64_t cols) {
#if defined(MVG_ATTENTION_AVX2)
  if (cols == 16) {
    return by_rows(mr, [&](auto rows) { score_kernel<decltype(rows)::value>(q, d, kt, j0, r0, s); });
  }
#endif
  for (int r = 0; r < mr; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float acc = 0.0f;
      for (int64_t e = 0; e < d; ++e) acc += q[(r0 + r) * d + e] * kt[e * kKeys + j0 + c];
      s[(r0 + r) * kKeys + j0 + c] = acc;
    }
}

// o[r][c0..c0+16) += sum_j p[r][j] * v[j][c0..c0+16) over the tile's n keys, rows [r0, r0 + mr).
inline void value_tile(const float* p, const float* v, int64_t v_stride, int64_t n, int64_t c0, int64_t r0, int mr,
                       float* o, int64_t d) {
#if defined(MVG_ATTENTION_AVX2)
  if (c0 + 16 <= d) {
    return by_rows(mr, [&](auto rows) { value_kernel<decltype(rows)::value>(p, v, v_stride, n, c0, r0, o, d); });
  }
#endif
  const int64_t c1 = std::min<int64_t>(c0 + 16, d);
  for (int r = 0; r < mr; ++r)
    for (int64_t j = 0; j < n; ++j) {
      const float w = p[(r0 + r) * kKeys + j];
      for (int64_t c = c0; c < c1; ++c) o[(r0 + r) * d + c] += w * v[j * v_stride + c];
    }
}

// Online softmax over one tile's n scores of a row: masks keys past the row's position, updates its maximum and
// sum, rescales its output, and leaves e^(score - max) in s (0 for masked keys); a row with no key here is unchanged.
inline void softmax_row(float* s, int64_t n, int64_t first_key, int64_t pos, float& m, float& l, float* o,
                        int64_t d) {
  const int64_t valid = std::min<int64_t>(n, pos - first_key + 1);
  if (valid <= 0) {
    std::fill(s, s + n, 0.0f);
    return;
  }
  for (int64_t j = valid; j < n; ++j) s[j] = -INFINITY;
  int64_t j = 0;
  float tile_max = -INFINITY;
#if defined(MVG_ATTENTION_AVX2)
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (; j + 8 <= n; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  for (float x : lanes) tile_max = std::max(tile_max, x);
#endif
  for (; j < n; ++j) tile_max = std::max(tile_max, s[j]);
  const float new_m = std::max(m, tile_max);
  const float correction = exp_neg(m - new_m);  // 0 for the first tile (m = -inf)
  float sum = 0.0f;
  j = 0;
#if defined(MVG_ATTENTION_AVX2)
  const __m256 vm = _mm256_set1_ps(new_m);
  __m256 vsum = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  _mm256_storeu_ps(lanes, vsum);
  for (float x : lanes) sum += x;
#endif
  for (; j < n; ++j) {
    s[j] = exp_neg(s[j] - new_m);
    sum += s[j];
  }
  if (correction != 1.0f) {
    int64_t c = 0;
#if defined(MVG_ATTENTION_AVX2)
    const __m256 vc = _mm256_set1_ps(correction);
    for (; c + 8 <= d; c += 8) _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), vc));
#endif
    for (; c < d; ++c) o[c] *= correction;
  }
  l = l * correction + sum;
  m = new_m;
}

void run_item(const Problem& p, int64_t b, int64_t g, int64_t block, const float* kt, Scratch& sc) {
  const int64_t group = p.heads / p.kv_heads, d = p.d;
  const int64_t p0 = block * kPositions, p1 = std::min(p.t, p0 + kPositions);
  const int64_t rows = (p1 - p0) * group;
  for (int64_t r = 0; r < rows; ++r) {  // position-major rows: a micro-kernel's rows share few positions
    const int64_t pos = p0 + r / group, head = g * group + r % group;
    const float* src = p.q + b * p.q_s[0] + head * p.q_s[1] + pos * p.q_s[2];
    for (int64_t e = 0; e < d; ++e) sc.q[r * d + e] = src[e] * p.scale;
    sc.pos[r] = pos;
    sc.m[r] = -INFINITY;
    sc.l[r] = 0.0f;
  }
  std::fill(sc.o.begin(), sc.o.begin() + rows * d, 0.0f);
  const float* v = p.v + b * p.v_s[0] + g * p.v_s[1];
  for (int64_t j0 = 0; j0 < p1; j0 += kKeys) {  // keys [0, last position]
    const int64_t n = std::min(kKeys, p1 - j0);
    for (int64_t r0 = 0; r0 < rows; r0 += kMr) {
      const int mr = static_cast<int>(std::min<int64_t>(kMr, rows - r0));
      for (int64_t c = 0; c < n; c += 16)
        score_tile(sc.q.data(), d, kt + j0 * d, c, r0, mr, sc.s.data(), std::min<int64_t>(16, n - c));
    }
    for (int64_t r = 0; r < rows; ++r)
      softmax_row(sc.s.data() + r * kKeys, n, j0, sc.pos[r], sc.m[r], sc.l[r], sc.o.data() + r * d, d);
    for (int64_t r0 = 0; r0 < rows; r0 += kMr) {
      const int mr = static_cast<int>(std::min<int64_t>(kMr, rows - r0));
      for (int64_t c0 = 0; c0 < d; c0 += 16)
        value_tile(sc.s.data(), v + j0 * p.v_s[2], p.v_s[2], n, c0, r0, mr, sc.o.data(), d);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = sc.pos[r], head = g * group + r % group;
    float* dst = p.out + ((b * p.t + pos) * p.heads + head) * d;
    const float inv = 1.0f / sc.l[r];
    for (int64_t e = 0; e < d; ++e) dst[e] = sc.o[r * d + e] * inv;
  }
}

}  // namespace

// Causal self-attention, queries and keys at the same T positions: out[b, t, h] = softmax over keys 0..t of
// (q[b, h, t] . k[b, h / (Hq / Hkv), j]) * scale, applied to v. q (B, Hq, T, D), k and v (B, Hkv, T, D) fp32 with
// element strides (batch, head, position) in q_strides / k_strides / v_strides and unit stride along D; out
// (B, T, Hq, D) contiguous fp32. Returns 0, 1 on bad sizes, 2 when a worker ran out of memory.
extern "C" int mvg_causal_attention_fwd(const float* q, const float* k, const float* v, float* out, int64_t batch,
                                        int64_t heads, int64_t kv_heads, int64_t t, int64_t d,
                                        const int64_t* q_strides, const int64_t* k_strides,
                                        const int64_t* v_strides, float scale, int num_threads) {
  if (batch < 1 || kv_heads < 1 || heads % kv_heads != 0 || t < 1 || d < 1) return 1;
  Problem p{q, k, v, out, batch, heads, kv_heads, t, d, {}, {}, {}, scale};
  for (int i = 0; i < 3; ++i) {
    p.q_s[i] = q_strides[i];
    p.k_s[i] = k_strides[i];
    p.v_s[i] = v_strides[i];
  }
  // Keys packed per head in tiles of kKeys, each transposed to (d, kKeys) (zero past the last key).
  const int64_t tiles = (t + kKeys - 1) / kKeys, head_size = tiles * kKeys * d;
  std::vector<float> kt;
  try {
    kt.assign(batch * kv_heads * head_size, 0.0f);
  } catch (...) {
    return 2;
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t g = 0; g < kv_heads; ++g) {
      float* dst = kt.data() + (b * kv_heads + g) * head_size;
      const float* src = k + b * p.k_s[0] + g * p.k_s[1];
      for (int64_t j = 0; j < t; ++j)
        for (int64_t e = 0; e < d; ++e) dst[(j / kKeys) * kKeys * d + e * kKeys + j % kKeys] = src[j * p.k_s[2] + e];
    }
  const int64_t blocks = (t + kPositions - 1) / kPositions;
  const int64_t items = batch * kv_heads * blocks;
  const int64_t rows = kPositions * (heads / kv_heads);
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  auto worker = [&]() {
    try {
      Scratch sc(rows, d);
      for (int64_t it = next++; it < items; it = next++) {
        // The last blocks see the most keys: hand them out first so that the threads finish together.
        const int64_t block = blocks - 1 - it / (batch * kv_heads), bg = it % (batch * kv_heads);
        run_item(p, bg / kv_heads, bg % kv_heads, block, kt.data() + bg * head_size, sc);
      }
    } catch (...) {
      failed = true;
    }
  };
  on_threads(num_threads, items, worker);
  return failed ? 2 : 0;
}
