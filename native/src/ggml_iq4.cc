// IQ4_NL and IQ4_XS: 4-bit non-linear levels (kvalues_iq4nl) with one scale per 32 values.
// Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a): quantize_row_iq4_nl_impl as
// quantize_iq4_nl / quantize_iq4_xs call it (ntry = 7, with or without quant_weights), and
// dequantize_row_iq4_{nl,xs}; float rules of ggml_quants.h. The 16 trial scales of a block run in
// the lanes of two AVX2 vectors when active (cpu.h), each lane repeating the scalar trial's float
// operations in order, so both levels give the same bytes (tests compare them).
#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_iq34_tq.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

// The 16 levels of IQ4_NL/IQ4_XS (format constants, ggml's kvalues_iq4nl).
constexpr int8_t kValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
constexpr int kNtry = 7;

// mu(f) for f = floor(x) in -127..112: the first level above x (x < kValues[mu] <=> f < kValues[mu],
// the levels being integers), which is where ggml's binary search ends.
struct UpperLevel {
  uint8_t mu[240];
  constexpr UpperLevel() : mu() {
    for (int f = -127; f <= 112; f++) {
      int m = 1;
      while (!(f < kValues[m])) m++;
      mu[f + 127] = static_cast<uint8_t>(m);
    }
  }
};
constexpr UpperLevel kUpper;

// best_index_int8: the nearest level (an exact midpoint goes to the upper one). The search is a
// table look-up on floor(x); the final choice is ggml's own float comparison. NaN gives 15, as in
// ggml (every comparison false).
inline int best_index(float x) {
  if (x <= kValues[0]) return 0;
  if (!(x < kValues[15])) return 15;
  const int mu = kUpper.mu[static_cast<int>(std::floor(x)) + 127];
  return x - kValues[mu - 1] < kValues[mu] - x ? mu - 1 : mu;
}

// The trials of ggml's per-block search: trial 0 at id0 = 1/d0, trials 1..15 at (itry - 127)/max for
// itry = -7..7; sumqx/sumq2 of each over the 32 values, in value order.
void trial_sums_scalar(const float* xb, const float* weight, const float* ids, float* sumqx, float* sumq2) {
  for (int t = 0; t < 16; t++) {
    float sx = 0, s2 = 0;
    for (int j = 0; j < 32; j++) {
      const float q = kValues[best_index(ids[t] * xb[j])];
      const float w = weight[j];
      sx += w * q * xb[j];
      s2 += w * q * q;
    }
    sumqx[t] = sx;
    sumq2[t] = s2;
  }
}

#if defined(__x86_64__)
#define DC_IQ4_AVX2 __attribute__((target("avx2")))

// The 16 levels as floats, looked up by index (0..15) with two 8-lane permutes.
DC_IQ4_AVX2 inline __m256 level_x8(__m256i idx) {
  const __m256 lo = _mm256_setr_ps(-127, -104, -83, -65, -49, -35, -22, -10);
  const __m256 hi = _mm256_setr_ps(1, 13, 25, 38, 53, 69, 89, 113);
  const __m256 use_hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), use_hi);
}

// best_index for 8 lanes: mu = 1 + #{k in 1..14 : kValues[k] <= x}, then ggml's float comparison.
DC_IQ4_AVX2 inline __m256i best_index_x8(__m256 x) {
  __m256i mu = _mm256_set1_epi32(1);
  for (int k = 1; k <= 14; k++) {
    const __m256 ge = _mm256_cmp_ps(x, _mm256_set1_ps(kValues[k]), _CMP_GE_OQ);
    mu = _mm256_sub_epi32(mu, _mm256_castps_si256(ge));
  }
  const __m256i mu1 = _mm256_sub_epi32(mu, _mm256_set1_epi32(1));
  const __m256 lower = _mm256_cmp_ps(_mm256_sub_ps(x, level_x8(mu1)), _mm256_sub_ps(level_x8(mu), x), _CMP_LT_OQ);
  __m256i l = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(mu), _mm256_castsi256_ps(mu1), lower));
  const __m256 at_lo = _mm256_cmp_ps(x, _mm256_set1_ps(kValues[0]), _CMP_LE_OQ);
  const __m256 at_hi = _mm256_cmp_ps(x, _mm256_set1_ps(kValues[15]), _CMP_NLT_UQ);  // x >= 113 or NaN
  l = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(l), _mm256_castsi256_ps(_mm256_set1_epi32(15)), at_hi));
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(l), _mm256_setzero_ps(), at_lo));
}

// Lane t of the two vectors runs trial t (the scalar loop's operations, in the same order).
DC_IQ4_AVX2 void trial_sums_avx2(const float* xb, const float* weight, const float* ids, float* sumqx, float* sumq2) {
  const __m256 id0 = _mm256_loadu_ps(ids), id1 = _mm256_loadu_ps(ids + 8);
  __m256 sx0 = _mm256_setzero_ps(), s20 = sx0, sx1 = sx0, s21 = sx0;
  for (int j = 0; j < 32; j++) {
    const __m256 x = _mm256_set1_ps(xb[j]), w = _mm256_set1_ps(weight[j]);
    const __m256 q0 = level_x8(best_index_x8(_mm256_mul_ps(id0, x)));
    const __m256 q1 = level_x8(best_index_x8(_mm256_mul_ps(id1, x)));
    const __m256 wq0 = _mm256_mul_ps(w, q0), wq1 = _mm256_mul_ps(w, q1);
    sx0 = _mm256_add_ps(sx0, _mm256_mul_ps(wq0, x));
    s20 = _mm256_add_ps(s20, _mm256_mul_ps(wq0, q0));
    sx1 = _mm256_add_ps(sx1, _mm256_mul_ps(wq1, x));
    s21 = _mm256_add_ps(s21, _mm256_mul_ps(wq1, q1));
  }
  _mm256_storeu_ps(sumqx, sx0);
  _mm256_storeu_ps(sumqx + 8, sx1);
  _mm256_storeu_ps(sumq2, s20);
  _mm256_storeu_ps(sumq2 + 8, s21);
}

DC_IQ4_AVX2 void pack_levels_avx2(const float* xb, float id, uint8_t* q) {
  alignas(32) int32_t L[32];
  const __m256 vid = _mm256_set1_ps(id);
  for (int j = 0; j < 32; j += 8)
    _mm256_store_si256(reinterpret_cast<__m256i*>(L + j), best_index_x8(_mm256_mul_ps(vid, _mm256_loadu_ps(xb + j))));
  for (int j = 0; j < 16; j++) q[j] = static_cast<uint8_t>(L[j] | (L[j + 16] << 4));
}
#endif

inline void trial_sums(const float* xb, const float* weight, const float* ids, float* sumqx, float* sumq2) {
#if defined(__x86_64__)
  if (use_avx2()) return trial_sums_avx2(xb, weight, ids, sumqx, sumq2);
#endif
  trial_sums_scalar(xb, weight, ids, sumqx, sumq2);
}

// The scale of one block of 32 (ggml's per-block search): 0 for a block with max |x| < eps.
float block_scale(const float* xb, const float* qw, float sigma2) {
  float weight[32];
  if (qw) {
    for (int j = 0; j < 32; j++) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
  } else {
    for (int j = 0; j < 32; j++) weight[j] = xb[j] * xb[j];
  }
  float amax = 0, max = 0;
  for (int j = 0; j < 32; j++) {
    const float ax = std::fabs(xb[j]);
    if (ax > amax) {
      amax = ax;
      max = xb[j];
    }
  }
  if (amax < kGroupMaxEps) return 0;
  float ids[16], sumqx[16], sumq2[16];
  ids[0] = 1 / (-max / kValues[0]);
  for (int itry = -kNtry; itry <= kNtry; itry++) ids[itry + kNtry + 1] = static_cast<float>(itry + kValues[0]) / max;
  trial_sums(xb, weight, ids, sumqx, sumq2);
  float d = sumq2[0] > 0 ? sumqx[0] / sumq2[0] : 0.f;
  float best = d * sumqx[0];
  for (int t = 1; t < 16; t++) {
    if (sumq2[t] > 0 && sumqx[t] * sumqx[t] > best * sumq2[t]) {
      d = sumqx[t] / sumq2[t];
      best = d * sumqx[t];
    }
  }
  return d;
}

// 32 levels best_index(id*x) packed two per byte: q[j] = L[j] | L[j+16] << 4.
inline void pack_levels(const float* xb, float id, uint8_t* q) {
#if defined(__x86_64__)
  if (use_avx2()) return pack_levels_avx2(xb, id, q);
#endif
  for (int j = 0; j < 16; j++)
    q[j] = static_cast<uint8_t>(best_index(id * xb[j]) | (best_index(id * xb[j + 16]) << 4));
}

inline float sigma2_of(const float* x, int n) {
  float sigma2 = 0;
  for (int j = 0; j < n; j++) sigma2 += x[j] * x[j];
  return sigma2 * (2.f / static_cast<float>(n));
}

}  // namespace

// ---- IQ4_NL: { f16 d; u8 qs[16] } per 32 ------------------------------------------------------

void quantize_row_iq4_nl(const float* x, uint8_t* y, size_t n, const float* qw) {
  for (size_t ib = 0; ib < n / QK; ib++, x += QK, y += kIQ4_NLBytes) {
    const float d = block_scale(x, qw ? qw + QK * ib : nullptr, sigma2_of(x, QK));
    store_u16(y, f32_to_f16(d));
    pack_levels(x, d ? 1 / d : 0, y + 2);  // the float d, not the stored f16
  }
}

void dequantize_row_iq4_nl(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kIQ4_NLBytes, y += QK) {
    const float d = load_f16(x);
    for (int j = 0; j < 16; j++) {
      y[j] = d * kValues[x[2 + j] & 0xf];
      y[j + 16] = d * kValues[x[2 + j] >> 4];
    }
  }
}

// ---- IQ4_XS: { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] } per 256 --------------------
// Block scale ls (6 bits, stored +32): low nibble in scales_l, high 2 bits in scales_h.

void quantize_row_iq4_xs(const float* x, uint8_t* y, size_t n, const float* qw) {
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, x += QK_K, y += kIQ4_XSBytes) {
    const float sigma2 = sigma2_of(x, QK_K);
    float scales[8];
    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < 8; ib++) {
      scales[ib] = block_scale(x + 32 * ib, qw ? qw + QK_K * ibl + 32 * ib : nullptr, sigma2);
      const float abs_d = std::fabs(scales[ib]);
      if (abs_d > amax_scale) {
        amax_scale = abs_d;
        max_scale = scales[ib];
      }
    }
    const float d = -max_scale / 32;  // -0.0 for an all-zero super-block, as ggml stores it
    store_u16(y, f32_to_f16(d));
    const float id = d ? 1 / d : 0.f;
    uint16_t scales_h = 0;
    uint8_t* scales_l = y + 4;
    for (int ib = 0; ib < 8; ib++) {
      int l = nearest_int(id * scales[ib]);
      l = l < -32 ? -32 : (l > 31 ? 31 : l);
      const float dl = d * static_cast<float>(l);
      pack_levels(x + 32 * ib, dl ? 1 / dl : 0.f, y + 8 + 16 * ib);
      l += 32;
      if (ib % 2 == 0) scales_l[ib / 2] = static_cast<uint8_t>(l & 0xf);
      else scales_l[ib / 2] |= static_cast<uint8_t>((l & 0xf) << 4);
      scales_h |= static_cast<uint16_t>((l >> 4) << (2 * ib));
    }
    store_u16(y + 2, scales_h);
  }
}

void dequantize_row_iq4_xs(const uint8_t* x, float* y, size_t n) {
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, x += kIQ4_XSBytes) {
    const float d = load_f16(x);
    const uint16_t scales_h = load_u16(x + 2);
    for (int ib = 0; ib < 8; ib++, y += 32) {
      const int ls = ((x[4 + ib / 2] >> (4 * (ib % 2))) & 0xf) | (((scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      const uint8_t* qs = x + 8 + 16 * ib;
      for (int j = 0; j < 16; j++) {
        y[j] = dl * kValues[qs[j] & 0xf];
        y[j + 16] = dl * kValues[qs[j] >> 4];
      }
    }
  }
}

}  // namespace ggml
}  // namespace deepcast
