// The tiled float32 GEMM kernel of the CUDA backend, y[T, N] = x[T, K] . W[N, K]^T (both operands
// row-major with K contiguous, as the forward pass stores activations and [out, in] weights).
//
// Included by deepcast_cuda.cu (compiled by nvcc) and by emulate.cc, which compiles it as plain
// C++ and runs every block on CPU threads (one std::thread per CUDA thread, a barrier for
// __syncthreads) so the tiling and bounds logic is tested on machines without a GPU.
//
// Tiling: a block of 256 threads computes a 64 x 64 tile of y; each thread a 4 x 4 sub-tile at
// rows ty + 16 i and columns tx + 16 j (strided, so shared-memory reads are conflict-free). K is
// walked in steps of 16: each step stages x[64 rows, 16] and W[64 rows, 16] in shared memory,
// transposed so the inner loop reads one k-row of each. Out-of-range rows and k are loaded as 0,
// so any T, N, K works. Each output is float32 throughout: per 16-k stage an fmaf chain from 0,
// added to the running total (the zero-padded tail of the last stage adds exact zeros).
#pragma once

namespace deepcast_cuda {

constexpr int kTileM = 64;   // rows of y (tokens) per block
constexpr int kTileN = 64;   // columns of y (weight rows) per block
constexpr int kTileK = 16;   // k per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16
constexpr int kSub = 4;        // each thread: kSub x kSub outputs
constexpr int kPad = 4;        // shared-memory row padding

__global__ void __launch_bounds__(256) gemm_xwt_f32(const float* __restrict__ x, const float* __restrict__ w,
                                                   float* __restrict__ y, int T, int K, int N) {
  __shared__ float xs[kTileK][kTileM + kPad];
  __shared__ float ws[kTileK][kTileN + kPad];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int m0 = static_cast<int>(blockIdx.y) * kTileM;
  const int n0 = static_cast<int>(blockIdx.x) * kTileN;

  float acc[kSub][kSub];
  for (int i = 0; i < kSub; i++)
    for (int j = 0; j < kSub; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    // 64 x 16 values of each operand, 4 per thread; consecutive threads read consecutive k.
    for (int e = tid; e < kTileM * kTileK; e += kThreads) {
      const int r = e / kTileK;
      const int c = e % kTileK;
      const int gk = k0 + c;
      const int gm = m0 + r;
      const int gn = n0 + r;
      xs[c][r] = (gm < T && gk < K) ? x[static_cast<size_t>(gm) * K + gk] : 0.0f;
      ws[c][r] = (gn < N && gk < K) ? w[static_cast<size_t>(gn) * K + gk] : 0.0f;
    }
    __syncthreads();
    // This stage's 16 products in a fresh partial sum, then added to the total: a blocked sum
    // whose rounding error grows with K/16 rather than K (about 4x closer to the CPU kernels'
    // 8-lane sums at K = 7168 than one running sum).
    float part[kSub][kSub];
#pragma unroll
    for (int i = 0; i < kSub; i++)
#pragma unroll
      for (int j = 0; j < kSub; j++) part[i][j] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kTileK; kk++) {
      float a[kSub];
      float b[kSub];
#pragma unroll
      for (int i = 0; i < kSub; i++) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kSub; j++) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kSub; i++)
#pragma unroll
        for (int j = 0; j < kSub; j++) part[i][j] = fmaf(a[i], b[j], part[i][j]);
    }
#pragma unroll
    for (int i = 0; i < kSub; i++)
#pragma unroll
      for (int j = 0; j < kSub; j++) acc[i][j] += part[i][j];
    __syncthreads();
  }

  for (int i = 0; i < kSub; i++) {
    const int m = m0 + ty + 16 * i;
    if (m >= T) continue;
    for (int j = 0; j < kSub; j++) {
      const int n = n0 + tx + 16 * j;
      if (n < N) y[static_cast<size_t>(m) * N + n] = acc[i][j];
    }
  }
}

}  // namespace deepcast_cuda
