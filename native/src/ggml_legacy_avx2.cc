// AVX2 twins of ggml's quantize_row_q8_0_ref and quantize_row_q4_0_ref (what llama-quantize writes
// without an imatrix), eight blocks of 32 values per step. ggml_quants.cc chooses them at run time
// (use_avx2(), cpu.h); setSimd('scalar') keeps the scalar rows.
//
// Why the bytes are the scalar ones:
// - amax: a max of non-negative floats orders like their bit patterns, so an integer max of |x|'s
//   bits, in any order, is ggml's sequential MAX for a block without NaN. A block whose amax bits
//   show a NaN or Inf, or whose 1/d overflows, is handed to the scalar block function whole.
// - d, 1/d, x*id, x*id + 8.5 are the same single IEEE float32 operations (no FMA).
// - roundf (half away from zero) is trunc(|v|), plus 1 when |v| - trunc(|v|) >= 0.5 (that
//   difference is exact), with v's sign put back; never the vector unit's nearest-even rounding.
// - float -> int8 is C's cvttss2si narrowed: in the blocks kept here every value lies within
//   [-128, 128] (|x| <= amax and 1/d is finite), where saturating packs equal that narrowing.
// - the F16 of d comes from F16C with nearest-even rounding, which equals ggml's scalar
//   conversion for every finite d (NaN never reaches it here).
// - Q4_0 keeps the first value of largest magnitude (ggml's strict '<' scan), and +0 for an
//   all-zero block (max stays 0.0f there, so d = -0).
#if defined(__x86_64__)
#include <immintrin.h>

#include "floats_avx2.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

constexpr int kGroup = 8;  // blocks per step

DC_AVX2 inline __m256i abs_bits(const float* p) {
  return _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), _mm256_set1_epi32(0x7FFFFFFF));
}

// Per 128-bit half: [max(u0,u2), max(v0,v2), max(u1,u3), max(v1,v3)].
DC_AVX2 inline __m256i max_pairs(__m256i u, __m256i v) {
  return _mm256_max_epi32(_mm256_unpacklo_epi32(u, v), _mm256_unpackhi_epi32(u, v));
}

// Lane k: the largest |x| bit pattern of block k of the 8 blocks at x (256 floats).
DC_AVX2 inline __m256i block_abs_max8(const float* x) {
  __m256i m[kGroup];
  for (int k = 0; k < kGroup; k++) {
    const float* b = x + QK * k;
    m[k] = _mm256_max_epi32(_mm256_max_epi32(abs_bits(b), abs_bits(b + 8)), _mm256_max_epi32(abs_bits(b + 16), abs_bits(b + 24)));
  }
  const __m256i p01 = max_pairs(m[0], m[1]), p23 = max_pairs(m[2], m[3]);
  const __m256i p45 = max_pairs(m[4], m[5]), p67 = max_pairs(m[6], m[7]);
  // Per half: [m0, m1, m2, m3] (and [m4 .. m7]) reduced over that half's four lanes.
  const __m256i q0 = _mm256_max_epi32(_mm256_unpacklo_epi64(p01, p23), _mm256_unpackhi_epi64(p01, p23));
  const __m256i q1 = _mm256_max_epi32(_mm256_unpacklo_epi64(p45, p67), _mm256_unpackhi_epi64(p45, p67));
  return _mm256_max_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

// Lanes whose block the vector path must leave to the scalar one: amax NaN/Inf, or 1/d infinite.
DC_AVX2 inline int scalar_lanes(__m256i amax_bits, __m256 id) {
  const __m256i finite_max = _mm256_set1_epi32(0x7F7FFFFF);
  const __m256i id_bits = _mm256_and_si256(_mm256_castps_si256(id), _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(amax_bits, finite_max), _mm256_cmpgt_epi32(id_bits, finite_max));
  return _mm256_movemask_ps(_mm256_castsi256_ps(bad));
}

// d != 0 ? 1/d : 0, as ggml writes it (NaN != 0 is true).
DC_AVX2 inline __m256 inverse_or_zero(__m256 d) {
  const __m256 nonzero = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ);
  return _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), nonzero);
}

DC_AVX2 inline void store_f16x8(uint16_t* out, __m256 d) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// trunc_i32(roundf(v)) per lane: round half away from zero, then C's float -> int.
DC_AVX2 inline __m256i round_away_i32(__m256 v) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_andnot_ps(sign_mask, v);
  const __m256 t = _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ), _mm256_set1_ps(1.0f));
  return _mm256_cvttps_epi32(_mm256_or_ps(_mm256_add_ps(t, up), _mm256_and_ps(v, sign_mask)));
}

// 32 int32 in [-128, 127] (four vectors, in order) -> 32 int8 in order.
DC_AVX2 inline __m256i pack_i8x32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

}  // namespace

DC_AVX2 void quantize_row_q8_0_avx2(const float* x, uint8_t* y, size_t n) {
  const size_t nb = n / QK;
  size_t ib = 0;
  for (; ib + kGroup <= nb; ib += kGroup, x += QK * kGroup, y += kQ8_0Bytes * kGroup) {
    const __m256i amax_bits = block_abs_max8(x);
    const __m256 d = _mm256_div_ps(_mm256_castsi256_ps(amax_bits), _mm256_set1_ps(127.0f));
    const __m256 id = inverse_or_zero(d);
    const int scalar = scalar_lanes(amax_bits, id);
    alignas(32) float ids[kGroup];
    uint16_t dh[kGroup];
    _mm256_store_ps(ids, id);
    store_f16x8(dh, d);
    for (int k = 0; k < kGroup; k++) {
      const float* xb = x + QK * k;
      uint8_t* b = y + kQ8_0Bytes * k;
      if (scalar >> k & 1) {
        quantize_block_q8_0_ref(xb, b);
        continue;
      }
      store_u16(b, dh[k]);
      const __m256 s = _mm256_set1_ps(ids[k]);
      const __m256i q = pack_i8x32(round_away_i32(_mm256_mul_ps(_mm256_loadu_ps(xb), s)),
                                   round_away_i32(_mm256_mul_ps(_mm256_loadu_ps(xb + 8), s)),
                                   round_away_i32(_mm256_mul_ps(_mm256_loadu_ps(xb + 16), s)),
                                   round_away_i32(_mm256_mul_ps(_mm256_loadu_ps(xb + 24), s)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + 2), q);
    }
  }
  for (; ib < nb; ib++, x += QK, y += kQ8_0Bytes) quantize_block_q8_0_ref(x, y);
}

DC_AVX2 void quantize_row_q4_0_avx2(const float* x, uint8_t* y, size_t n) {
  const size_t nb = n / QK;
  size_t ib = 0;
  for (; ib + kGroup <= nb; ib += kGroup, x += QK * kGroup, y += kQ4_0Bytes * kGroup) {
    const __m256i amax_bits = block_abs_max8(x);
    alignas(32) uint32_t am[kGroup];
    _mm256_store_si256(reinterpret_cast<__m256i*>(am), amax_bits);
    // max: the first value whose magnitude is amax (ggml's strict '<' keeps the first), +0 when amax is 0.
    alignas(32) float maxv[kGroup];
    for (int k = 0; k < kGroup; k++) {
      maxv[k] = 0.0f;
      if (am[k] == 0 || am[k] > 0x7F7FFFFFu) continue;
      const float* xb = x + QK * k;
      const __m256i target = _mm256_set1_epi32(static_cast<int>(am[k]));
      uint32_t at = 0;
      for (int v = 0; v < QK / 8; v++)
        at |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(abs_bits(xb + 8 * v), target)))) << (8 * v);
      maxv[k] = xb[__builtin_ctz(at)];
    }
    const __m256 d = _mm256_div_ps(_mm256_load_ps(maxv), _mm256_set1_ps(-8.0f));
    const __m256 id = inverse_or_zero(d);
    const int scalar = scalar_lanes(amax_bits, id);
    alignas(32) float ids[kGroup];
    uint16_t dh[kGroup];
    _mm256_store_ps(ids, id);
    store_f16x8(dh, d);
    const __m256 half = _mm256_set1_ps(8.5f);
    for (int k = 0; k < kGroup; k++) {
      const float* xb = x + QK * k;
      uint8_t* b = y + kQ4_0Bytes * k;
      if (scalar >> k & 1) {
        quantize_block_q4_0_ref(xb, b);
        continue;
      }
      store_u16(b, dh[k]);
      const __m256 s = _mm256_set1_ps(ids[k]);
      __m256i q = pack_i8x32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xb), s), half)),
                             _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 8), s), half)),
                             _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 16), s), half)),
                             _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 24), s), half)));
      q = _mm256_min_epi8(q, _mm256_set1_epi8(15));
      const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
      const __m128i packed = _mm_or_si128(lo, _mm_and_si128(_mm_slli_epi16(hi, 4), _mm_set1_epi8(static_cast<char>(0xF0))));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(b + 2), packed);
    }
  }
  for (; ib < nb; ib++, x += QK, y += kQ4_0Bytes) quantize_block_q4_0_ref(x, y);
}

}  // namespace ggml
}  // namespace deepcast
#endif
