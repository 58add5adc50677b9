// Few-row linear layers with bf16 or int8 weights on CPU: y = x · Wᵀ (· scale) + bias, called from
// mobilevideogpt/engine/linear_cpu.py through ctypes. Plain C++17 with no torch headers (see scan_cpu.cpp).
//
// Why: a decode step multiplies one activation row by every weight of the language model, so its speed is set by
// how many bytes of weights stream through memory. torch's bf16 matrix-vector path was measured slower than fp32 on
// an AVX2 CPU (its conversions do not keep up with memory), so the kernel below reads bf16 (2 bytes) or int8 (1 byte
// + one fp32 scale per output row) weights and does all arithmetic in fp32 with fp32 activations.
// Weight rows are walked one after the other (a single forward stream the hardware prefetcher follows; measured
// ~2x faster than interleaving 4 rows), and all x rows (up to kMaxRows) are multiplied with each weight row while
// it is in cache.
//
// Threads: built with OpenMP (native.py links the runtime torch has loaded), torch's own pool, as in threads.h; the
// threads claim output-row chunks from a shared counter. Otherwise a small persistent pool whose helpers sleep on a
// condition variable, with the same dynamic scheduling in which the calling thread takes part: a helper that is not
// scheduled (another process holds its core) delays nothing there, the caller simply takes its chunks.

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define MVG_LINEAR_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MVG_LINEAR_AVX2 1
#endif

namespace {

#include "threads.h"

enum : int32_t { kBF16 = 1, kInt8 = 2 };  // weight element types, as passed in `wtype`
constexpr int kMaxRows = 8;  // activation rows per call: decode steps pass one, a draft's verification up to 8
// Weight bytes per work item: about 8 items per thread, within these bounds. A claim costs a shared-counter update,
// and each item's stream starts cold (the prefetchers ramp up again); too few items leave one thread the last one.
constexpr int64_t kMinChunkBytes = 32 << 10, kMaxChunkBytes = 256 << 10;
// Software prefetch distance of the bf16 loops: with the hardware prefetcher alone one core read ~6 GB/s. One decode
// step's Qwen2.5-0.5B bf16 weights on 2 cores of a Xeon with AMX, 32 KB items and no prefetch -> these bounds and 2 KB
// ahead: 112 -> 59 ms (1 thread 173 -> 137; 1 and 3 KB ahead were slower); the full-size model's decode steps at a
// 25 % budget, the two kernels alternated in one process: 121 -> 98 ms. The int8 loops fetch 1 KB ahead (2 KB measured
// no faster there).
constexpr int kPrefetchBytes = 2048;

struct Problem {
  const float* x;  // (rows, k), row stride x_stride; for bf16 weights: the even/odd-permuted copy (see permute_x)
  int64_t rows, k, x_stride;
  const void* w;  // (n, k) row-major
  int32_t wtype;
  const float* scale;  // (n,) for int8, else null
  const float* bias;   // (n,) or null
  float* y;            // (rows, n), row stride y_stride
  int64_t n, y_stride;
  int64_t chunk;  // output rows per work item
};

#include "bf16.h"

// bf16 weights are widened one register of kBlock at a time with one shift (even elements) and one mask (odd
// elements) of a 32-bit view, so x is permuted to match once per call: within each block of kBlock, the even
// elements then the odd ones. The tail (k % kBlock elements) stays in order.
#if defined(MVG_LINEAR_AVX512)
constexpr int kBlock = 32;
#else
constexpr int kBlock = 16;
#endif

void permute_x(const float* x, int64_t rows, int64_t k, int64_t x_stride, float* out) {
  const int64_t full = k / kBlock * kBlock;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * x_stride;
    float* dst = out + r * k;
    for (int64_t j = 0; j < full; j += kBlock)
      for (int i = 0; i < kBlock / 2; ++i) {
        dst[j + i] = src[j + 2 * i];
        dst[j + kBlock / 2 + i] = src[j + 2 * i + 1];
      }
    for (int64_t j = full; j < k; ++j) dst[j] = src[j];
  }
}

#if defined(MVG_LINEAR_AVX512)
// The AVX2 kernels below at twice the width: decode is not memory-bound at 8 lanes on a Xeon with AMX, where one
// thread took the 151936 x 896 bf16 LM head in 29 instead of 36 ms this way (2 threads: 21 instead of 23 ms).
template <int R>
void dot_bf16(const float* x, int64_t xs, const uint16_t* w, int64_t k, float* out) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w + j) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i v = _mm512_loadu_si512(w + j);
    const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm512_fmadd_ps(even, _mm512_loadu_ps(x + r * xs + j), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(x + r * xs + j + 16), acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
  for (; j < k; ++j) {
    const float wj = bf16_to_float(w[j]);
    for (int r = 0; r < R; ++r) out[r] += wj * x[r * xs + j];
  }
}

template <int R>
void dot_int8(const float* x, int64_t xs, const int8_t* w, int64_t k, float* out) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w + j) + 1024, _MM_HINT_T0);
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j + 16));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v0));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v1));
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + r * xs + j), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + r * xs + j + 16), acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
  for (; j < k; ++j)
    for (int r = 0; r < R; ++r) out[r] += static_cast<float>(w[j]) * x[r * xs + j];
}
#elif defined(MVG_LINEAR_AVX2)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[r] = Σ_j x[r][j] · w[j] for one weight row; R x rows, x permuted as in permute_x.
template <int R>
void dot_bf16(const float* x, int64_t xs, const uint16_t* w, int64_t k, float* out) {
  const __m256i hi = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(w + j) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j));
    const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, hi));
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(even, _mm256_loadu_ps(x + r * xs + j), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(x + r * xs + j + 8), acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
  for (; j < k; ++j) {
    const float wj = bf16_to_float(w[j]);
    for (int r = 0; r < R; ++r) out[r] += wj * x[r * xs + j];
  }
}

template <int R>
void dot_int8(const float* x, int64_t xs, const int8_t* w, int64_t k, float* out) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    // int8 rows are short and the widening costs more than the load: fetch ahead explicitly (measured ~1.5x).
    _mm_prefetch(reinterpret_cast<const char*>(w + j) + 1024, _MM_HINT_T0);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j));
    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + r * xs + j), acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + r * xs + j + 8), acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
  for (; j < k; ++j)
    for (int r = 0; r < R; ++r) out[r] += static_cast<float>(w[j]) * x[r * xs + j];
}
#else
// Portable versions: eight partial sums per row, a shape compilers vectorise for the target's SIMD width.
template <int R>
void dot_bf16(const float* x, int64_t xs, const uint16_t* w, int64_t k, float* out) {
  float acc[R][16] = {};
  int64_t j = 0;
  for (; j + 16 <= k; j += 16)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 8; ++i) {
        acc[r][i] += bf16_to_float(w[j + 2 * i]) * x[r * xs + j + i];
        acc[r][8 + i] += bf16_to_float(w[j + 2 * i + 1]) * x[r * xs + j + 8 + i];
      }
  for (int r = 0; r < R; ++r) {
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += acc[r][i];
    for (int64_t t = j; t < k; ++t) s += bf16_to_float(w[t]) * x[r * xs + t];
    out[r] = s;
  }
}

template <int R>
void dot_int8(const float* x, int64_t xs, const int8_t* w, int64_t k, float* out) {
  float acc[R][8] = {};
  int64_t j = 0;
  for (; j + 8 <= k; j += 8)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 8; ++i) acc[r][i] += static_cast<float>(w[j + i]) * x[r * xs + j + i];
  for (int r = 0; r < R; ++r) {
    float s = 0.0f;
    for (int i = 0; i < 8; ++i) s += acc[r][i];
    for (int64_t t = j; t < k; ++t) s += static_cast<float>(w[t]) * x[r * xs + t];
    out[r] = s;
  }
}
#endif

template <int R>
void rows_range(const Problem& p, int64_t n0, int64_t n1) {
  float out[R];
  for (int64_t o = n0; o < n1; ++o) {
    if (p.wtype == kBF16) {
      dot_bf16<R>(p.x, p.x_stride, static_cast<const uint16_t*>(p.w) + o * p.k, p.k, out);
    } else {
      dot_int8<R>(p.x, p.x_stride, static_cast<const int8_t*>(p.w) + o * p.k, p.k, out);
      for (int r = 0; r < R; ++r) out[r] *= p.scale[o];
    }
    const float b = p.bias != nullptr ? p.bias[o] : 0.0f;
    for (int r = 0; r < R; ++r) p.y[r * p.y_stride + o] = out[r] + b;
  }
}

void run_item(const Problem& p, int64_t item) {
  const int64_t n0 = item * p.chunk, n1 = std::min(p.n, n0 + p.chunk);
  switch (p.rows) {
    case 1: rows_range<1>(p, n0, n1); break;
    case 2: rows_range<2>(p, n0, n1); break;
    case 3: rows_range<3>(p, n0, n1); break;
    case 4: rows_range<4>(p, n0, n1); break;
    case 5: rows_range<5>(p, n0, n1); break;
    case 6: rows_range<6>(p, n0, n1); break;
    case 7: rows_range<7>(p, n0, n1); break;
    default: rows_range<8>(p, n0, n1); break;
  }
}

// Work items are claimed from `next_`, which holds (job generation << 32 | next item): a helper that wakes late
// for an old job sees another generation and can never claim an item of the current one.
class Pool {
 public:
  // Runs every item of `p`; returns false (nothing done) when another thread is using the pool right now.
  bool run(const Problem& p, int64_t items, int threads) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const int helpers = std::min(spawn(static_cast<int>(std::min<int64_t>(threads, items)) - 1), threads - 1);
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gen = (gen_ + 1) & 0xFFFFFFFFu;
      gen_ = gen;
      job_ = p;
      items_ = items;
      joinable_ = helpers;
      done_.store(0, std::memory_order_relaxed);
      next_.store(gen << 32, std::memory_order_release);
    }
    if (helpers > 0) cv_.notify_all();
    work(p, gen, items);
    for (int spins = 0; done_.load(std::memory_order_acquire) < items; ++spins) {
      if (spins < 64) {
#if defined(MVG_LINEAR_AVX2) || defined(MVG_LINEAR_AVX512)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();  // the helper holding the last item is off its core: give it ours
      }
    }
    return true;
  }

 private:
  void work(const Problem& p, uint64_t gen, int64_t items) {
    for (;;) {
      uint64_t v = next_.load(std::memory_order_acquire);
      int64_t item;
      do {
        item = static_cast<int64_t>(v & 0xFFFFFFFFu);
        if ((v >> 32) != gen || item >= items) return;
      } while (!next_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel));
      run_item(p, item);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // Starts helpers until there are `wanted`; returns how many exist (fewer if the system refuses more threads).
  int spawn(int wanted) {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      while (threads_ < wanted) {
        std::thread(&Pool::helper, this).detach();  // the pool lives as long as the process
        ++threads_;
      }
    } catch (const std::system_error&) {
    }
    return threads_;
  }

  void helper() {
    uint64_t seen = 0;
    for (;;) {
      Problem p;
      int64_t items;
      uint64_t gen;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return gen_ != seen && joinable_ > 0; });
        seen = gen = gen_;
        --joinable_;
        p = job_;
        items = items_;
      }
      work(p, gen, items);
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t gen_ = 0;  // generation of the posted job (guarded by mu_, as are the next four)
  Problem job_{};
  int64_t items_ = 0;
  int joinable_ = 0;  // helpers that may still join the posted job
  int threads_ = 0;
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
};

std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork;

Pool* pool() {
  std::call_once(g_atfork, [] {
    // A forked child has none of the parent's helper threads: it starts a pool of its own on first use.
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* p = g_pool.load();
  if (p == nullptr) {
    Pool* fresh = new Pool();  // never deleted: detached helpers use it until the process ends
    if (g_pool.compare_exchange_strong(p, fresh)) {
      p = fresh;
    } else {
      delete fresh;
    }
  }
  return p;
}

}  // namespace

// y (rows, n) = x (rows, k) · W(n, k)ᵀ, times scale[o] for int8 weights, plus bias[o] when given.
// x: fp32, row stride x_stride (elements); w: bf16 (wtype 1) or int8 (wtype 2) row-major; scale, bias: fp32 (n,);
// y: fp32, row stride y_stride. 1 <= rows <= 8. Returns 0 on success, 1 on bad arguments, 2 when out of memory.
extern "C" int mvg_linear_lowp(const float* x, int64_t rows, int64_t k, int64_t x_stride, const void* w,
                               int32_t wtype, const float* scale, const float* bias, float* y, int64_t n,
                               int64_t y_stride, int32_t num_threads) {
  if (rows < 1 || rows > kMaxRows || k < 1 || n < 1 || x_stride < k || y_stride < n) return 1;
  if (wtype != kBF16 && wtype != kInt8) return 1;
  if (wtype == kInt8 && scale == nullptr) return 1;
  try {
    std::vector<float> permuted;
    Problem p{x, rows, k, x_stride, w, wtype, scale, bias, y, n, y_stride, 1};
    if (wtype == kBF16) {
      permuted.resize(static_cast<size_t>(rows * k));
      permute_x(x, rows, k, x_stride, permuted.data());
      p.x = permuted.data();
      p.x_stride = k;
    }
    const int64_t row_bytes = k * (wtype == kBF16 ? 2 : 1);
    const int64_t wanted = n * row_bytes / (8 * std::max(1, num_threads));
    p.chunk = std::max<int64_t>(1, std::clamp(wanted, kMinChunkBytes, kMaxChunkBytes) / row_bytes);
    const int64_t items = (n + p.chunk - 1) / p.chunk;
    const int threads = std::max(1, static_cast<int>(std::min<int64_t>(num_threads, items)));
    std::atomic<int64_t> next{0};
    if (on_openmp_threads(threads, [&] {
          for (int64_t it = next++; it < items; it = next++) run_item(p, it);
        }))
      return 0;
    // One thread, or another caller has the pool (two Python threads at once): this thread does all the work.
    if (threads == 1 || !pool()->run(p, items, threads))
      for (int64_t i = 0; i < items; ++i) run_item(p, i);
  } catch (const std::bad_alloc&) {
    return 2;
  }
  return 0;
}
