// y = x W^T for float32 activations x [T, in] and a weight W [out, in] held either as float32 or
// in its stored ggml form (F16, BF16, Q8_0, Q4_K, ...: anything ggml::dequantize_row reads).
// W is never converted whole: a panel of 16 rows x kKc columns is dequantized into an L1-sized
// float32 buffer, laid out k-major, and used for a block of tokens before the next one is made.
//
// Numerics: y[t][o] = fma(W[o][in-1], x[t][in-1], ... fma(W[o][1], x[t][1], W[o][0] * x[t][0])),
// one float32 fused multiply-add per k in increasing k, for every element whatever the tile,
// thread count or SIMD level: the AVX-512 kernel (12 tokens x 16 rows, one zmm per panel row of k),
// the AVX2 kernel (6 x 16, two ymm) and the scalar twin (std::fma) give identical bytes, and so do
// 1 and N threads. The level is chosen at run time (cpu.h use_avx512 / use_avx2).
#pragma once
#include <cstddef>
#include <cstdint>

namespace deepcast {

struct GemmWeight {
  const uint8_t* data;  // row r starts at data + r * row_bytes
  size_t row_bytes;
  int type;             // ggml type id (0 = F32)
  size_t block;         // elements per block of that type (1 for F32/F16/BF16)
  size_t type_size;     // bytes per block
};

// y[t*ldy + o] for t < T, o < out. x is [T, in] row-major.
void gemm(const GemmWeight& w, const float* x, float* y, size_t T, size_t in, size_t out, size_t ldy, int threads);

}  // namespace deepcast
