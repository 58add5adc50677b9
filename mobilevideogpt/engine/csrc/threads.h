// Runs worker() on up to min(num_threads, items) threads, at least one, the caller's among them, and waits for all.
// Workers take their items from a counter they share, so where a thread cannot be started the running ones still
// take every item. Kernels include this file textually (see exp_avx2.h); it needs <algorithm>, <thread>, <vector>.
template <typename Worker>
void on_threads(int num_threads, int64_t items, Worker worker) {
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(num_threads, items));
  std::vector<std::thread> pool;
  try {
    for (int64_t i = 1; i < wanted; ++i) pool.emplace_back(worker);
  } catch (...) {
    // Fewer threads than asked for.
  }
  worker();
  for (auto& t : pool) t.join();
}
