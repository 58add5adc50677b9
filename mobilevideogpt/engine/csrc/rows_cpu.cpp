// Row-wise passes around the int8 x int8 matrix products of a CPU prefill (mobilevideogpt/engine/int8_matmul.py),
// called from mobilevideogpt/engine/rows_cpu.py through ctypes. Plain C++17 with no torch headers (see scan_cpu.cpp).
//
// fbgemm quantizes a whole activation matrix with one range, so each row is first divided by its largest magnitude
// and the product's row multiplied back by it. With torch ops that is three passes over the activations (amax, amin,
// the division) and two over the output (multiply, add the bias); here it is one read for the row maximum and one
// read + write for the division (the row is still in cache), and one read + write of the output. The normalised rows
// are bit for bit torch's (the same IEEE divisions); the bias is added in the same rounding as the row scale.
//
// The gated MLP's silu(gate) * up is fused with that normalisation of its result (the input of down_proj), which
// torch computes in five passes over (rows x 4864) matrices: for a full-size Qwen2.5-0.5B layer's 2500-token
// prefill, 23.6 ms with torch and 7.6 ms here on 2 cores of an AVX2 EPYC.
//
// Two passes of bf16 / fp32 inference, where torch spends several passes (and tensors) on one row-wise formula:
// RMSNorm with the residual add before it (VideoMamba's blocks, as mamba's fused add + norm; Qwen2's norms), and
// CLIP's quick_gelu and the gated MLP's silu(gate) * up on bf16 activations, rounded to bf16 once instead of after
// each of torch's ops.

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <pthread.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MVG_ROWS_AVX2 1
#endif

namespace {

#include "threads.h"

constexpr int64_t kRowsPerItem = 8;  // rows per work item handed to a thread

// Runs work(first_row, last_row) over [0, rows) on up to num_threads threads, the caller's among them.
template <typename Work>
void run_rows(int64_t rows, int num_threads, Work work) {
  const int64_t items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t it = next++; it < items; it = next++)
      work(it * kRowsPerItem, std::min(rows, (it + 1) * kRowsPerItem));
  };
  on_threads(num_threads, items, worker);
}

// The largest |x| of a row, at least FLT_MIN (an all-zero row divides by that, not by zero), as torch's
// max(amax(x), -amin(x)).clamp_min(tiny).
float row_max_abs(const float* x, int64_t k) {
  float hi = -INFINITY, lo = INFINITY;
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  __m256 vhi = _mm256_set1_ps(-INFINITY), vlo = _mm256_set1_ps(INFINITY);
  for (; j + 8 <= k; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    vhi = _mm256_max_ps(vhi, v);
    vlo = _mm256_min_ps(vlo, v);
  }
  float his[8], los[8];
  _mm256_storeu_ps(his, vhi);
  _mm256_storeu_ps(los, vlo);
  for (int i = 0; i < 8; ++i) {
    hi = std::max(hi, his[i]);
    lo = std::min(lo, los[i]);
  }
#endif
  for (; j < k; ++j) {
    hi = std::max(hi, x[j]);
    lo = std::min(lo, x[j]);
  }
  return std::max(std::max(hi, -lo), FLT_MIN);
}

void divide_row(const float* x, float m, int64_t k, float* out) {
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  const __m256 vm = _mm256_set1_ps(m);
  for (; j + 8 <= k; j += 8) _mm256_storeu_ps(out + j, _mm256_div_ps(_mm256_loadu_ps(x + j), vm));
#endif
  for (; j < k; ++j) out[j] = x[j] / m;
}

#include "exp_vec.h"
#include "bf16.h"

// Rows of fp32 or bf16 (bf16: true), read and written 8 at a time.
template <bool bf16>
struct Row {
#if defined(MVG_ROWS_AVX2)
  static __m256 load(const void* p, int64_t j) {
    if constexpr (bf16) return load_bf16x8(static_cast<const uint16_t*>(p) + j);
    else return _mm256_loadu_ps(static_cast<const float*>(p) + j);
  }
  static void store(void* p, int64_t j, __m256 v) {
    if constexpr (bf16) store_bf16x8(static_cast<uint16_t*>(p) + j, v);
    else _mm256_storeu_ps(static_cast<float*>(p) + j, v);
  }
#endif
  static float get(const void* p, int64_t j) {
    if constexpr (bf16) return bf16_to_float(static_cast<const uint16_t*>(p)[j]);
    else return static_cast<const float*>(p)[j];
  }
  static void put(void* p, int64_t j, float v) {
    if constexpr (bf16) static_cast<uint16_t*>(p)[j] = float_to_bf16(v);
    else static_cast<float*>(p)[j] = v;
  }
};


// silu(g) = g / (1 + e^-g), then times u: the order torch rounds in. fp32 or bf16 rows (bf16: computed in fp32 and
// rounded once, where torch's silu_ then mul_ round after each; under AVX512 16 lanes with a reciprocal, far inside
// bf16's rounding).
template <bool bf16>
void silu_mul_row(const void* g, const void* u, int64_t k, void* out) {
  using R = Row<bf16>;
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (bf16) {
    const auto* gb = static_cast<const uint16_t*>(g);
    const auto* ub = static_cast<const uint16_t*>(u);
    const __m512 one16 = _mm512_set1_ps(1.0f), sign16 = _mm512_set1_ps(-0.0f);
    for (; j + 16 <= k; j += 16) {
      const __m512 x = load_bf16x16(gb + j);
      const __m512 d = _mm512_add_ps(one16, exp_avx512(_mm512_xor_ps(x, sign16)));
      store_bf16x16(static_cast<uint16_t*>(out) + j,
                    _mm512_mul_ps(_mm512_mul_ps(x, reciprocal_avx512(d)), load_bf16x16(ub + j)));
    }
  }
#endif
#if defined(MVG_ROWS_AVX2)
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (; j + 8 <= k; j += 8) {
    const __m256 v = R::load(g, j);
    const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp_avx2(_mm256_xor_ps(v, sign))));
    R::store(out, j, _mm256_mul_ps(s, R::load(u, j)));
  }
#endif
  for (; j < k; ++j) {
    const float x = R::get(g, j);
    R::put(out, j, x / (1.0f + std::exp(-x)) * R::get(u, j));
  }
}

// quick_gelu(v) = v * sigmoid(1.702 v) with sigmoid(t) = 1 / (1 + e^-t): the order torch rounds in (CLIP's MLP), in
// place on fp32 or bf16 rows (bf16 as silu_mul_row's). CLIP's 3152 x 3072 bf16 quick_gelu on 2 cores of a Xeon with
// AMX-bf16: 9.1 ms with the AVX2 loop (a division per 8 values), 6.7 ms with the AVX512 one, ~9 ms in torch's 3 ops.
template <bool bf16>
void quick_gelu_row(void* v, int64_t k) {
  using R = Row<bf16>;
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (bf16) {
    auto* vb = static_cast<uint16_t*>(v);
    const __m512 one16 = _mm512_set1_ps(1.0f);
    for (; j + 16 <= k; j += 16) {
      const __m512 x = load_bf16x16(vb + j);
      const __m512 d = _mm512_add_ps(one16, exp_avx512(_mm512_mul_ps(x, _mm512_set1_ps(-1.702f))));
      store_bf16x16(vb + j, _mm512_mul_ps(x, reciprocal_avx512(d)));
    }
  }
#endif
#if defined(MVG_ROWS_AVX2)
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 minus_slope = _mm256_set1_ps(-1.702f);
  for (; j + 8 <= k; j += 8) {
    const __m256 x = R::load(v, j);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_mul_ps(x, minus_slope))));
    R::store(v, j, _mm256_mul_ps(x, s));
  }
#endif
  for (; j < k; ++j) {
    const float x = R::get(v, j);
    R::put(v, j, x * (1.0f / (1.0f + std::exp(-(1.702f * x)))));
  }
}

// y = y * m (+ bias) in one rounding (a fused multiply-add, as torch.addcmul); no bias: y * m.
void scale_row(float* y, float m, const float* bias, int64_t n) {
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  const __m256 vm = _mm256_set1_ps(m);
  if (bias != nullptr) {
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(y + j, _mm256_fmadd_ps(_mm256_loadu_ps(y + j), vm, _mm256_loadu_ps(bias + j)));
  } else {
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), vm));
  }
#endif
  for (; j < n; ++j) y[j] = bias != nullptr ? std::fma(y[j], m, bias[j]) : y[j] * m;
}

// v = x (+ residual) in fp32, into sum_out (may be null: then v is recomputed in the second pass); out = v *
// (1 / sqrt(mean(v²) + eps)) * w, in that order of roundings (VideoMamba's RMSNorm, Qwen2RMSNorm).
template <bool x_bf16, bool out_bf16>
void rms_norm_row(const void* x, const float* residual, float* sum_out, const float* w, float eps, int64_t d,
                  void* out) {
  using X = Row<x_bf16>;
  using O = Row<out_bf16>;
  auto value = [&](int64_t j) { return residual != nullptr ? residual[j] + X::get(x, j) : X::get(x, j); };
  float squares = 0.0f;
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= d; j += 8) {
    __m256 v = X::load(x, j);
    if (residual != nullptr) v = _mm256_add_ps(_mm256_loadu_ps(residual + j), v);
    if (sum_out != nullptr) _mm256_storeu_ps(sum_out + j, v);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (float lane : lanes) squares += lane;
#endif
  for (; j < d; ++j) {
    const float v = value(j);
    if (sum_out != nullptr) sum_out[j] = v;
    squares += v * v;
  }
  const float r = 1.0f / std::sqrt(squares / float(d) + eps);
  j = 0;
#if defined(MVG_ROWS_AVX2)
  const __m256 vr = _mm256_set1_ps(r);
  for (; j + 8 <= d; j += 8) {
    __m256 v;
    if (sum_out != nullptr) {
      v = _mm256_loadu_ps(sum_out + j);
    } else {
      v = X::load(x, j);
      if (residual != nullptr) v = _mm256_add_ps(_mm256_loadu_ps(residual + j), v);
    }
    O::store(out, j, _mm256_mul_ps(_mm256_mul_ps(v, vr), _mm256_loadu_ps(w + j)));
  }
#endif
  for (; j < d; ++j) O::put(out, j, (sum_out != nullptr ? sum_out[j] : value(j)) * r * w[j]);
}

template <bool x_bf16, bool out_bf16>
void rms_norm_rows(const void* x, int64_t x_stride, const float* residual, float* sum_out, const float* w, float eps,
                   int64_t rows, int64_t d, void* out, int num_threads) {
  const int64_t x_size = x_bf16 ? 2 : 4, out_size = out_bf16 ? 2 : 4;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      rms_norm_row<x_bf16, out_bf16>(static_cast<const char*>(x) + r * x_stride * x_size,
                                     residual != nullptr ? residual + r * d : nullptr,
                                     sum_out != nullptr ? sum_out + r * d : nullptr, w, eps, d,
                                     static_cast<char*>(out) + r * d * out_size);
  });
}


}  // namespace

// out (rows, k) bf16 = silu(gate) * up, computed in fp32 and rounded once (gate, up: bf16 with row strides
// gate_stride, up_stride; out contiguous rows of out_stride, and may be gate itself). Returns 0, or 1 on bad sizes.
extern "C" int mvg_silu_mul_bf16(const uint16_t* gate, int64_t gate_stride, const uint16_t* up, int64_t up_stride,
                                 int64_t rows, int64_t k, uint16_t* out, int64_t out_stride, int num_threads) {
  if (rows < 0 || k < 1 || gate_stride < k || up_stride < k || out_stride < k) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      silu_mul_row<true>(gate + r * gate_stride, up + r * up_stride, k, out + r * out_stride);
  });
  return 0;
}

// out (rows, d) = RMSNorm(x (+ residual)) · w: x (rows, d) fp32 or bf16 (x_bf16) with row stride x_stride,
// residual (rows, d) fp32 contiguous or null, w (d,) fp32, out contiguous fp32 or bf16 (out_bf16). With sum_out
// non-null (rows, d fp32 contiguous; may be residual itself) the sum x + residual (x widened, without a residual)
// is stored there too: the residual stream of the next block. Returns 0, or 1 on bad sizes.
extern "C" int mvg_rms_norm(const void* x, int x_bf16, int64_t x_stride, const float* residual, float* sum_out,
                            const float* w, float eps, int64_t rows, int64_t d, void* out, int out_bf16,
                            int num_threads) {
  if (rows < 0 || d < 1 || x_stride < d || !(eps >= 0.0f)) return 1;
  if (x_bf16) {
    if (out_bf16) rms_norm_rows<true, true>(x, x_stride, residual, sum_out, w, eps, rows, d, out, num_threads);
    else rms_norm_rows<true, false>(x, x_stride, residual, sum_out, w, eps, rows, d, out, num_threads);
  } else {
    if (out_bf16) rms_norm_rows<false, true>(x, x_stride, residual, sum_out, w, eps, rows, d, out, num_threads);
    else rms_norm_rows<false, false>(x, x_stride, residual, sum_out, w, eps, rows, d, out, num_threads);
  }
  return 0;
}

// In place, y (rows, n) bf16 with row stride y_stride: y = quick_gelu(y), computed in fp32 and rounded once.
// Returns 0, or 1 on bad sizes.
extern "C" int mvg_quick_gelu_bf16(uint16_t* y, int64_t rows, int64_t n, int64_t y_stride, int num_threads) {
  if (rows < 0 || n < 1 || y_stride < n) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) quick_gelu_row<true>(y + r * y_stride, n);
  });
  return 0;
}

// x (rows, k) fp32 with row stride x_stride → out (rows, k), row stride out_stride: each row divided by its largest
// magnitude, which goes to row_max (rows,) (at least FLT_MIN). out may be x itself. Returns 0, or 1 on bad sizes.
extern "C" int mvg_rows_normalize(const float* x, int64_t rows, int64_t k, int64_t x_stride, float* out,
                                  int64_t out_stride, float* row_max, int num_threads) {
  if (rows < 0 || k < 1 || x_stride < k || out_stride < k) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * x_stride;
      row_max[r] = row_max_abs(row, k);
      divide_row(row, row_max[r], k, out + r * out_stride);
    }
  });
  return 0;
}

// out (rows, k) = silu(gate) * up, element by element (gate, up: (rows, k) fp32 with row strides gate_stride,
// up_stride; they may be the two halves of one matrix). With row_max non-null each row of out is then divided by
// its largest magnitude, stored in row_max, as mvg_rows_normalize does. Returns 0, or 1 on bad sizes.
extern "C" int mvg_silu_mul(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride, int64_t rows,
                            int64_t k, float* out, int64_t out_stride, float* row_max, int num_threads) {
  if (rows < 0 || k < 1 || gate_stride < k || up_stride < k || out_stride < k) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = out + r * out_stride;
      silu_mul_row<false>(gate + r * gate_stride, up + r * up_stride, k, row);
      if (row_max != nullptr) {
        row_max[r] = row_max_abs(row, k);
        divide_row(row, row_max[r], k, row);
      }
    }
  });
  return 0;
}

// In place, y (rows, n) with row stride y_stride: y[r] = y[r] * row_max[r] (+ bias), with a bias in one rounding
// (a fused multiply-add, as torch.addcmul). bias (n,) may be null. Returns 0, or 1 on bad sizes.
extern "C" int mvg_rows_scale_add(float* y, int64_t rows, int64_t n, int64_t y_stride, const float* row_max,
                                  const float* bias, int num_threads) {
  if (rows < 0 || n < 1 || y_stride < n) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) scale_row(y + r * y_stride, row_max[r], bias, n);
  });
  return 0;
}

// In place, y (rows, n) with row stride y_stride: y[r] = quick_gelu(y[r] * row_max[r] (+ bias)), the scale and bias
// as mvg_rows_scale_add (row_max null: no scale and no bias). With out_max non-null each row is then divided by its
// largest magnitude, stored in out_max, as mvg_rows_normalize does (the input of the next int8 product). Returns 0,
// or 1 on bad sizes.
extern "C" int mvg_quick_gelu(float* y, int64_t rows, int64_t n, int64_t y_stride, const float* row_max,
                              const float* bias, float* out_max, int num_threads) {
  if (rows < 0 || n < 1 || y_stride < n || (row_max == nullptr && bias != nullptr)) return 1;
  run_rows(rows, num_threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = y + r * y_stride;
      if (row_max != nullptr) scale_row(row, row_max[r], bias, n);
      quick_gelu_row<false>(row, n);
      if (out_max != nullptr) {
        out_max[r] = row_max_abs(row, n);
        divide_row(row, out_max[r], n, row);
      }
    }
  });
  return 0;
}
