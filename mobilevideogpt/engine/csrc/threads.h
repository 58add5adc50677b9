// How the kernels run on several threads. Kernels include this file textually (see exp_vec.h); it needs
// <algorithm>, <atomic>, <pthread.h>, <thread>, <vector> and, built with OpenMP, <omp.h>, included before it at file
// scope.
//
// Built with OpenMP (native.py links the OpenMP runtime torch has loaded), the workers are the threads of torch's
// own pool: no thread is started per call, and between torch's operations and these kernels the same threads wait
// under the same OMP_WAIT_POLICY, so a kernel never competes with torch threads spinning on the same cores.
#if defined(_OPENMP)
// libgomp's pool is unusable in a child forked from a process that used it (its threads were not forked, so a
// parallel region would wait for them forever): after a fork the kernels start threads of their own.
inline std::atomic<bool> g_forked{false};
struct ForkWatch {
  ForkWatch() { pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); }); }
};
inline ForkWatch g_fork_watch;  // registered when the library is loaded
#endif

// Runs worker() on `threads` threads of torch's OpenMP pool, the caller's among them, and returns true once all have
// returned; false, running nothing, where that is not possible (no OpenMP in this build, a forked child, already
// inside a parallel region, or a single thread asked for).
template <typename Worker>
bool on_openmp_threads(int threads, Worker worker) {
#if defined(_OPENMP)
  if (threads > 1 && !g_forked.load() && !omp_in_parallel()) {
#pragma omp parallel num_threads(threads)
    worker();
    return true;
  }
#endif
  (void)threads;
  (void)worker;
  return false;
}

// Runs worker() on up to min(num_threads, items) threads, at least one, the caller's among them, and waits for all.
// Workers take their items from a counter they share, so where a thread cannot be started the running ones still
// take every item.
template <typename Worker>
void on_threads(int num_threads, int64_t items, Worker worker) {
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(num_threads, items));
  if (on_openmp_threads(static_cast<int>(wanted), worker)) return;
  std::vector<std::thread> pool;
  try {
    for (int64_t i = 1; i < wanted; ++i) pool.emplace_back(worker);
  } catch (...) {
    // Fewer threads than asked for.
  }
  worker();
  for (auto& t : pool) t.join();
}
