// float32 exp for the forward pass's softmax and SiLU, in three twins that give identical bytes:
// scalar (std::fma), AVX2 (8 lanes) and AVX-512 (16 lanes). The same operations in the same order:
//   x < -87 (or NaN) -> 0; x > 88 -> +inf;
//   n = round-to-nearest-even(x * log2 e) (by adding and subtracting 1.5 * 2^23),
//   r = x - n ln2_hi - n ln2_lo, p = Taylor polynomial of degree 6 (Horner, fma), exp = p * 2^n.
// Within ~2 ulp of the exact value over the range (test/forward-rows.test.ts checks it against Math.exp).
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace deepcast {
namespace vexp {

constexpr float kLo = -87.0f, kHi = 88.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kC[7] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};

inline float exp_scalar(float x) {
  if (!(x >= kLo)) return 0.0f;
  if (x > kHi) return INFINITY;
  const float t = std::fma(x, kLog2e, kMagic);
  const float n = t - kMagic;
  float r = std::fma(n, -kLn2Hi, x);
  r = std::fma(n, -kLn2Lo, r);
  float p = kC[0];
  for (int i = 1; i < 7; i++) p = std::fma(p, r, kC[i]);
  const int32_t e = static_cast<int32_t>(n) + 127;
  uint32_t bits = static_cast<uint32_t>(e) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

#if defined(__x86_64__)
#define DC_VEXP_AVX2 __attribute__((target("avx2,fma")))
#define DC_VEXP_AVX512 __attribute__((target("avx512f,avx2,fma")))

DC_VEXP_AVX2 inline __m256 exp_avx2(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kLo), _CMP_GE_OQ);
  const __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(kHi), _CMP_GT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(kHi));
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), _mm256_set1_ps(kMagic));
  const __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(kMagic));
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kC[0]);
  for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kC[i]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
  return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
}

DC_VEXP_AVX512 inline __m512 exp_avx512(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLo), _CMP_GE_OQ);
  const __mmask16 over = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kHi), _CMP_GT_OQ);
  x = _mm512_min_ps(x, _mm512_set1_ps(kHi));
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(kLog2e), _mm512_set1_ps(kMagic));
  const __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(kMagic));
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kC[0]);
  for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kC[i]));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  const __m512 y = _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
  return _mm512_mask_mov_ps(y, over, _mm512_set1_ps(INFINITY));
}
#endif

}  // namespace vexp
}  // namespace deepcast
