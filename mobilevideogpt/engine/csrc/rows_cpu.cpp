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

#include "exp_avx2.h"

// silu(g) = g / (1 + e^-g), then times u: the order torch rounds in.

void silu_mul_row(const float* g, const float* u, int64_t k, float* out) {
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (; j + 8 <= k; j += 8) {
    const __m256 v = _mm256_loadu_ps(g + j);
    const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp_avx2(_mm256_xor_ps(v, sign))));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(s, _mm256_loadu_ps(u + j)));
  }
#endif
  for (; j < k; ++j) out[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
}

// quick_gelu(v) = v * sigmoid(1.702 v) with sigmoid(t) = 1 / (1 + e^-t): the order torch rounds in (CLIP's MLP).
void quick_gelu_row(float* v, int64_t k) {
  int64_t j = 0;
#if defined(MVG_ROWS_AVX2)
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 minus_slope = _mm256_set1_ps(-1.702f);
  for (; j + 8 <= k; j += 8) {
    const __m256 x = _mm256_loadu_ps(v + j);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp_avx2(_mm256_mul_ps(x, minus_slope))));
    _mm256_storeu_ps(v + j, _mm256_mul_ps(x, s));
  }
#endif
  for (; j < k; ++j) v[j] = v[j] * (1.0f / (1.0f + std::exp(-(1.702f * v[j]))));
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

}  // namespace

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
      silu_mul_row(gate + r * gate_stride, up + r * up_stride, k, row);
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
      quick_gelu_row(row, n);
      if (out_max != nullptr) {
        out_max[r] = row_max_abs(row, n);
        divide_row(row, out_max[r], n, row);
      }
    }
  });
  return 0;
}
