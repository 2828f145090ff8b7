// Splits [0, n) into contiguous ranges, one per thread. Small jobs stay on the calling thread.
#pragma once
#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

namespace deepcast {

template <typename Fn>
void parallel_for(size_t n, int threads, size_t min_per_thread, Fn&& fn) {
  size_t t = threads > 0 ? static_cast<size_t>(threads) : 1;
  if (min_per_thread > 0) t = std::min(t, std::max<size_t>(1, n / min_per_thread));
  t = std::min(t, std::max<size_t>(n, 1));
  if (t <= 1) {
    fn(size_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  const size_t chunk = (n + t - 1) / t;
  for (size_t i = 1; i < t; i++) {
    size_t b = i * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(size_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace deepcast
