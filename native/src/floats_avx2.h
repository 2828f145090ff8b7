// AVX2 twins of floats.h's bf16 rounding, shared by the cast kernels (cast.cc, fp4.cc): identical
// bytes to the scalar f32_to_bf16 for every input.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

namespace deepcast {

#define DC_AVX2 __attribute__((target("avx2,f16c,fma")))

// 8 f32 -> 8 bf16 in the low 16 bits of each 32-bit lane, exactly as f32_to_bf16.
DC_AVX2 inline __m256i f32x8_to_bf16_lanes(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i absu = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i is_nan = _mm256_cmpgt_epi32(absu, _mm256_set1_epi32(0x7F800000));
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

// Two vectors of 8 bf16-in-lanes -> 16 packed uint16 in order.
DC_AVX2 inline void store_bf16x16(uint16_t* dst, __m256i a, __m256i b) {
  __m256i packed = _mm256_packus_epi32(a, b);
  packed = _mm256_permute4x64_epi64(packed, 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), packed);
}

}  // namespace deepcast
#endif
