// Runs gemm_kernel.cuh's CUDA kernel on the CPU, one std::thread per CUDA thread and one block at a
// time (its __shared__ arrays become statics shared by that block's threads, __syncthreads a
// barrier), and compares it with a double-precision reference on ragged shapes. It checks the
// kernel's tiling, staging and bounds logic on machines without a GPU (test/cuda.test.ts builds
// and runs it with the host C++ compiler):
//
//   g++ -std=c++20 -O1 -pthread native/cuda/emulate.cc -o /tmp/emulate && /tmp/emulate
//
// Prints one line per shape and "ok" at the end; exits 1 on a mismatch.
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
std::barrier<>* g_barrier = nullptr;

#define __global__
#define __launch_bounds__(n)
#define __shared__ static
#define __syncthreads() g_barrier->arrive_and_wait()

#include "gemm_kernel.cuh"

using deepcast_cuda::gemm_xwt_f32;

static void launch(dim3 grid, int threads, const float* x, const float* w, float* y, int T, int K, int N) {
  std::barrier<> barrier(threads);
  g_barrier = &barrier;
  for (unsigned by = 0; by < grid.y; by++) {
    for (unsigned bx = 0; bx < grid.x; bx++) {
      std::vector<std::thread> pool;
      pool.reserve(threads);
      for (int t = 0; t < threads; t++) {
        pool.emplace_back([=] {
          threadIdx.x = static_cast<unsigned>(t);
          blockIdx.x = bx;
          blockIdx.y = by;
          gemm_xwt_f32(x, w, y, T, K, N);
        });
      }
      for (auto& th : pool) th.join();
    }
  }
  g_barrier = nullptr;
}

int main() {
  using namespace deepcast_cuda;
  struct Shape {
    int T, K, N;
  };
  // Partial tiles in every dimension, K not a multiple of 16, single rows/columns, exact tiles.
  const Shape shapes[] = {{1, 1, 1}, {3, 17, 5}, {64, 16, 64}, {70, 37, 130}, {129, 256, 65}, {5, 300, 200}, {3, 2100, 70}};
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  bool ok = true;
  for (const Shape& s : shapes) {
    std::vector<float> x(static_cast<size_t>(s.T) * s.K), w(static_cast<size_t>(s.N) * s.K);
    for (float& v : x) v = dist(rng);
    for (float& v : w) v = dist(rng);
    // Sentinel one past the end catches out-of-bounds writes.
    std::vector<float> y(static_cast<size_t>(s.T) * s.N + 1, -12345.0f);
    const dim3 grid{static_cast<unsigned>((s.N + kTileN - 1) / kTileN), static_cast<unsigned>((s.T + kTileM - 1) / kTileM), 1};
    launch(grid, kThreads, x.data(), w.data(), y.data(), s.T, s.K, s.N);
    double maxAbs = 0, refMax = 0;
    for (int t = 0; t < s.T; t++) {
      for (int n = 0; n < s.N; n++) {
        double ref = 0;
        for (int k = 0; k < s.K; k++) ref += static_cast<double>(x[static_cast<size_t>(t) * s.K + k]) * w[static_cast<size_t>(n) * s.K + k];
        const double got = y[static_cast<size_t>(t) * s.N + n];
        maxAbs = std::fmax(maxAbs, std::fabs(got - ref));
        if (!(std::fabs(got - ref) <= 1e-4 * (1 + std::fabs(ref)))) ok = false;
        refMax = std::fmax(refMax, std::fabs(ref));
      }
    }
    const bool sentinel = y.back() == -12345.0f;
    ok = ok && sentinel;
    std::printf("T=%d K=%d N=%d grid=%ux%u: max |y - ref| %.3e, max |ref| %.3f, rel %.3e%s\n", s.T, s.K, s.N, grid.x,
                grid.y, maxAbs, refMax, refMax > 0 ? maxAbs / refMax : 0.0, sentinel ? "" : ", WROTE PAST THE END");
  }
  std::printf("%s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
