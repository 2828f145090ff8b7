// IQ2_XXS, IQ2_XS and IQ2_S: quantize_row_iq2_{xxs,xs,s}_impl and dequantize_row_iq2_{xxs,xs,s} of
// ggml/src/ggml-quants.c (llama.cpp v0.4.0), float operations in ggml's order (see ggml_quants.h).
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_iq2.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

constexpr int kMaxQ = 3;  // levels 0..2, lattice coordinates 1, 3, 5
constexpr float kEpsIq2S = 1e-8f;  // GROUP_MAX_EPS_IQ2_S

inline int clamp_level(int l) { return l < 0 ? 0 : (l > kMaxQ - 1 ? kMaxQ - 1 : l); }

// ggml's nearest_int(0.5f*(id*x - 1)): the level whose coordinate 2l+1 is nearest to id*x.
inline int project(float id, float x) { return clamp_level(nearest_int(0.5f * (id * x - 1))); }

// iq2_find_best_neighbour: the listed entry nearest to xval at `scale` under weights waux (first
// minimum wins); sets L to its levels and returns its index. ggml sums waux[i]*diff*diff over i for
// every entry; the term of coordinate i only depends on its lattice value 1, 3 or 5, so the three
// possible terms are computed once and each entry's sum adds the same floats in the same order.
int best_neighbour(const IqLattice& g, int u, const float* xval, const float* waux, float scale, int8_t* L) {
  float term[8][3];
  for (int i = 0; i < 8; i++) {
    for (int lv = 0; lv < 3; lv++) {
      const float diff = scale * static_cast<float>(2 * lv + 1) - xval[i];
      term[i][lv] = waux[i] * diff * diff;
    }
  }
  int best = nearest_listed(g, u, term);
  // Every distance NaN (non-finite input): ggml aborts here; take the first listed entry.
  if (best < 0) best = (g.neighbours - g.kmap[u] - 1)[1];
  const uint8_t* pg = reinterpret_cast<const uint8_t*>(g.point + best);
  for (int i = 0; i < 8; i++) L[i] = static_cast<int8_t>((pg[i] - 1) / 2);
  return best;
}

inline uint16_t levels_key(const int8_t* L) {
  uint16_t u = 0;
  for (int i = 0; i < 8; i++) u = static_cast<uint16_t>(u | (L[i] << (2 * i)));
  return u;
}

// Per group of 8: xval = |x|, sign bits in s. With parity, an odd count of negatives flips the
// element of least w*x*x (first minimum) so the 7 stored bits determine the 8th.
uint8_t group_signs(const float* xb, const float* weight, float* xval, bool parity) {
  int nflip = 0;
  uint8_t s = 0;
  for (int i = 0; i < 8; i++) {
    if (xb[i] >= 0) {
      xval[i] = xb[i];
    } else {
      xval[i] = -xb[i];
      nflip++;
      s = static_cast<uint8_t>(s | (1 << i));
    }
  }
  if (parity && nflip % 2) {
    int imin = 0;
    float min = weight[0] * xb[0] * xb[0];
    for (int i = 1; i < 8; i++) {
      const float ax = weight[i] * xb[i] * xb[i];
      if (ax < min) {
        min = ax;
        imin = i;
      }
    }
    xval[imin] = -xval[imin];
    s = static_cast<uint8_t>(s ^ (1 << imin));
  }
  return parity ? static_cast<uint8_t>(s & 127) : s;
}

void sums(int n, const float* weight, const float* xval, const int8_t* L, float& sumqx, float& sumq2) {
  sumqx = 0;
  sumq2 = 0;
  for (int i = 0; i < n; i++) {
    const float w = weight[i];
    const float q = static_cast<float>(2 * L[i] + 1);
    sumqx += w * xval[i] * q;
    sumq2 += w * q * q;
  }
}

float row_block_sumx2(const float* xbl) {
  float sumx2 = 0;
  for (int i = 0; i < QK_K; i++) sumx2 += xbl[i] * xbl[i];
  return sumx2;
}

// The 16-value search shared by IQ2_XS and IQ2_S (identical in ggml): 19 trial scales around
// max/5, then the groups that were off the lattice are re-projected at the chosen scale.
// max = max(xval) > 0. Returns the scale (negative only in the defensive case where the caller
// flips the signs); L holds lattice levels.
float search16(const IqLattice& g, const float* xval, const float* weight, const float* waux, float max, int8_t* L) {
  std::memset(L, 0, 16);
  int8_t Laux[16];
  bool on_grid[2] = {true, true}, on_grid_aux[2];
  float best = 0;
  float scale = max / (2 * kMaxQ - 1);
  for (int is = -9; is <= 9; is++) {
    const float id = (2 * kMaxQ - 1 + static_cast<float>(is) * 0.1f) / max;
    const float this_scale = 1 / id;
    for (int k = 0; k < 2; k++) {
      for (int i = 0; i < 8; i++) Laux[8 * k + i] = static_cast<int8_t>(project(id, xval[8 * k + i]));
      const uint16_t u = levels_key(Laux + 8 * k);
      on_grid_aux[k] = g.kmap[u] >= 0;
      if (!on_grid_aux[k]) best_neighbour(g, u, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k);
    }
    float sumqx, sumq2;
    sums(16, weight, xval, Laux, sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, 16);
      on_grid[0] = on_grid_aux[0];
      on_grid[1] = on_grid_aux[1];
    }
  }
  if ((!on_grid[0] || !on_grid[1]) && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < 2; k++) {
      if (on_grid[k]) continue;
      for (int i = 0; i < 8; i++) L[8 * k + i] = static_cast<int8_t>(project(id, xval[8 * k + i]));
      const uint16_t u = levels_key(L + 8 * k);
      if (g.kmap[u] < 0) best_neighbour(g, u, xval + 8 * k, waux + 8 * k, scale, L + 8 * k);
    }
    float sumqx, sumq2;
    sums(16, weight, xval, L, sumqx, sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  return scale;
}

// Lattice index of levels that must be on the lattice (ggml aborts otherwise: only reachable with
// non-finite input, where make_qp_quants' levels can be anything; entry 0 then).
inline int on_lattice(const IqLattice& g, const int8_t* L) {
  for (int i = 0; i < 8; i++)
    if (L[i] < 0 || L[i] > kMaxQ - 1) return 0;
  const int j = g.kmap[levels_key(L)];
  return j < 0 ? 0 : j;
}

inline int scale_nibble(float id, float s, int max) {
  const int l = nearest_int(0.5f * (id * s - 1));
  return l < 0 ? 0 : (l > max ? max : l);
}


// IQ2_XXS's 13 trial scales around eff_max (is = -6..6): each trial projects the 32 values, moves
// the off-lattice groups to their nearest listed entry, and is kept if it beats the best so far
// (ggml's test, in trial order). Returns the chosen scale and sets L to its levels; with no trial
// kept, returns `scale` and leaves L as it was.
constexpr int kXxsTrials = 13;

inline float xxs_trial_id(int t, float eff_max) { return (2 * kMaxQ - 1 + static_cast<float>(t - 6) * 0.1f) / eff_max; }

// Scalar: first every trial's projected levels (they do not depend on earlier trials), fetching
// the neighbour records they will need, then ggml's trials in order.
float xxs_trials_scalar(const IqLattice& g, const float* xval, const float* weight, const float* waux, float eff_max,
                        float scale, int8_t* L) {
  int8_t Lt[kXxsTrials][32];
  uint16_t ut[kXxsTrials][4];
  for (int t = 0; t < kXxsTrials; t++) {
    const float id = xxs_trial_id(t, eff_max);
    for (int k = 0; k < 4; k++) {
      for (int i = 0; i < 8; i++) Lt[t][8 * k + i] = static_cast<int8_t>(project(id, xval[8 * k + i]));
      ut[t][k] = levels_key(Lt[t] + 8 * k);
      const int32_t m = g.kmap[ut[t][k]];
      if (m < 0) {
        __builtin_prefetch(g.neighbours - m - 1);
        __builtin_prefetch(g.record_levels - m - 1);
      }
    }
  }
  float best = 0;
  for (int t = 0; t < kXxsTrials; t++) {
    const float this_scale = 1 / xxs_trial_id(t, eff_max);
    for (int k = 0; k < 4; k++) {
      const uint16_t u = ut[t][k];
      if (g.kmap[u] < 0) best_neighbour(g, u, xval + 8 * k, waux + 8 * k, this_scale, Lt[t] + 8 * k);
    }
    float sumqx, sumq2;
    sums(32, weight, xval, Lt[t], sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Lt[t], 32);
    }
  }
  return scale;
}

#if defined(__x86_64__)
// best_neighbour with AVX2 (IQ2 lattices): the terms of coordinate i for lattice values 1, 3, 5 are
// computed in lanes 0..2 with the same float operations; 8 listed entries per step sum their terms
// in i order; the step's first lane holding its minimum (NaN lanes and lanes past the list left
// out) replaces the best when strictly below it -- what ggml's scan in list order keeps. Returns the
// entry's levels as a key (levels_key).
__attribute__((target("avx2"))) int best_neighbour_key_avx2(const IqLattice& g, int u, const float* xval,
                                                           const float* waux, float scale) {
  const __m256 lvq = _mm256_setr_ps(1.f, 3.f, 5.f, 0.f, 0.f, 0.f, 0.f, 0.f);
  const __m256 sv = _mm256_mul_ps(_mm256_set1_ps(scale), lvq);
  __m256 tv[8];
  for (int i = 0; i < 8; i++) {
    const __m256 diff = _mm256_sub_ps(sv, _mm256_set1_ps(xval[i]));
    tv[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(waux[i]), diff), diff);
  }
  const size_t off = static_cast<size_t>(-g.kmap[u] - 1);
  const uint16_t* nb = g.neighbours + off;
  const uint16_t* lvs = g.record_levels + off;
  const int count = nb[0];
  const __m256i three = _mm256_set1_epi32(3), lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 fmax = _mm256_set1_ps(3.40282347e+38f);
  float best_d2 = 3.40282347e+38f;
  int best = -1;  // position in the record
  for (int j = 1; j <= count; j += 8) {
    const __m256i lv0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lvs + j)));
    __m256i lv = lv0;
    __m256 d2 = _mm256_setzero_ps();
    for (int i = 0; i < 8; i++) {
      d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(tv[i], _mm256_and_si256(lv, three)));
      lv = _mm256_srli_epi32(lv, 2);
    }
    const __m256 inside = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(count + 1 - j), lane));
    const __m256 valid = _mm256_and_ps(inside, _mm256_cmp_ps(d2, d2, _CMP_ORD_Q));
    const __m256 d = _mm256_blendv_ps(fmax, d2, valid);
    __m256 m = _mm256_min_ps(d, _mm256_permute2f128_ps(d, d, 1));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0x4e));
    m = _mm256_min_ps(m, _mm256_permute_ps(m, 0xb1));
    const float mf = _mm256_cvtss_f32(m);
    if (!(mf < best_d2)) continue;
    const int eq = _mm256_movemask_ps(_mm256_and_ps(valid, _mm256_cmp_ps(d, m, _CMP_EQ_OQ)));
    best_d2 = mf;
    best = j + __builtin_ctz(static_cast<unsigned>(eq));
  }
  // Every distance NaN (non-finite input): ggml aborts here; take the first listed entry.
  return lvs[best < 0 ? 1 : best];
}

// AVX2, same operations: each group's 8 projections in lanes (ggml's nearest_int bit trick on the
// same floats), every trial's groups held as level keys; the off-lattice ones replaced by their
// nearest listed entry's key; then the 13 trials' sums in lanes, one lane per trial, each adding
// its 32 terms in ggml's order; ggml's comparisons then run over the 13 sums in trial order.
__attribute__((target("avx2"))) float xxs_trials_avx2(const IqLattice& g, const float* xval, const float* weight,
                                                     const float* waux, float eff_max, float scale, int8_t* L) {
  alignas(32) int32_t key[4][16] = {};  // [group][trial]; trials 13..15 stay 0 and are never compared
  float ids[kXxsTrials];
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), magic = _mm256_set1_ps(12582912.f);
  const __m256i mant = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000);
  const __m256i zero = _mm256_setzero_si256(), two = _mm256_set1_epi32(kMaxQ - 1);
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  __m256 xv[4];
  for (int k = 0; k < 4; k++) xv[k] = _mm256_loadu_ps(xval + 8 * k);
  for (int t = 0; t < kXxsTrials; t++) {
    ids[t] = xxs_trial_id(t, eff_max);
    const __m256 idv = _mm256_set1_ps(ids[t]);
    for (int k = 0; k < 4; k++) {
      const __m256 v = _mm256_add_ps(_mm256_mul_ps(half, _mm256_sub_ps(_mm256_mul_ps(idv, xv[k]), one)), magic);
      __m256i l = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), bias);
      l = _mm256_sllv_epi32(_mm256_min_epi32(_mm256_max_epi32(l, zero), two), shifts);
      __m128i s = _mm_or_si128(_mm256_castsi256_si128(l), _mm256_extracti128_si256(l, 1));
      s = _mm_or_si128(s, _mm_shuffle_epi32(s, 0x4e));
      s = _mm_or_si128(s, _mm_shuffle_epi32(s, 0xb1));
      const int u = _mm_cvtsi128_si32(s);
      key[k][t] = u;
      const int32_t m = g.kmap[u];
      if (m < 0) {
        __builtin_prefetch(g.neighbours - m - 1);
        __builtin_prefetch(g.record_levels - m - 1);
      }
    }
  }
  for (int t = 0; t < kXxsTrials; t++) {
    const float this_scale = 1 / ids[t];
    for (int k = 0; k < 4; k++) {
      const int u = key[k][t];
      if (g.kmap[u] >= 0) continue;
      key[k][t] = best_neighbour_key_avx2(g, u, xval + 8 * k, waux + 8 * k, this_scale);
    }
  }
  __m256 sqx[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, sq2[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  const __m256i three = _mm256_set1_epi32(3), onei = _mm256_set1_epi32(1);
  for (int k = 0; k < 4; k++) {
    __m256i kv[2] = {_mm256_load_si256(reinterpret_cast<const __m256i*>(key[k])),
                     _mm256_load_si256(reinterpret_cast<const __m256i*>(key[k] + 8))};
    for (int j = 0; j < 8; j++) {
      const int i = 8 * k + j;
      const __m256 w = _mm256_set1_ps(weight[i]), wx = _mm256_set1_ps(weight[i] * xval[i]);
      for (int h = 0; h < 2; h++) {
        const __m256i l = _mm256_and_si256(kv[h], three);
        const __m256 q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(l, l), onei));
        sqx[h] = _mm256_add_ps(sqx[h], _mm256_mul_ps(wx, q));
        sq2[h] = _mm256_add_ps(sq2[h], _mm256_mul_ps(_mm256_mul_ps(w, q), q));
        kv[h] = _mm256_srli_epi32(kv[h], 2);
      }
    }
  }
  alignas(32) float sumqx[16], sumq2[16];
  for (int h = 0; h < 2; h++) {
    _mm256_store_ps(sumqx + 8 * h, sqx[h]);
    _mm256_store_ps(sumq2 + 8 * h, sq2[h]);
  }
  float best = 0;
  int chosen = -1;
  for (int t = 0; t < kXxsTrials; t++) {
    if (sumq2[t] > 0 && sumqx[t] * sumqx[t] > best * sumq2[t]) {
      scale = sumqx[t] / sumq2[t];
      best = scale * sumqx[t];
      chosen = t;
    }
  }
  if (chosen >= 0)
    for (int k = 0; k < 4; k++)
      for (int i = 0; i < 8; i++) L[8 * k + i] = static_cast<int8_t>((key[k][chosen] >> (2 * i)) & 3);
  return scale;
}
#endif

inline float xxs_trials(const IqLattice& g, const float* xval, const float* weight, const float* waux, float eff_max,
                        float scale, int8_t* L) {
#if defined(__x86_64__)
  if (use_avx2()) return xxs_trials_avx2(g, xval, weight, waux, eff_max, scale, L);
#endif
  return xxs_trials_scalar(g, xval, weight, waux, eff_max, scale, L);
}

}  // namespace

void quantize_row_iq2_xxs(const float* x, uint8_t* y, size_t n, const float* quant_weights) {
  const IqLattice& g = iq2_lattice(kIQ2_XXS);
  float scales[QK_K / 32], weight[32], xval[32], waux[32];
  int8_t L[32];
  uint8_t block_signs[4];
  uint32_t q2[2 * (QK_K / 32)];
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ2_XXSBytes) {
    store_u16(y, f32_to_f16(0.f));
    std::memset(q2, 0, sizeof q2);
    float max_scale = 0;
    const float* xbl = x + QK_K * ibl;
    const float sigma2 = row_block_sumx2(xbl) / QK_K;
    for (int ib = 0; ib < QK_K / 32; ib++) {
      const float* xb = xbl + 32 * ib;
      const float* qw = quant_weights + QK_K * ibl + 32 * ib;
      for (int i = 0; i < 32; i++) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      for (int i = 0; i < 32; i++) waux[i] = std::sqrt(weight[i]);
      for (int k = 0; k < 4; k++) block_signs[k] = group_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, true);
      float max = xval[0];
      for (int i = 1; i < 32; i++) max = max > xval[i] ? max : xval[i];
      if (max < kGroupMaxEps) {
        scales[ib] = 0;
        continue;
      }
      float scale = make_qp_quants(32, kMaxQ + 1, xval, reinterpret_cast<uint8_t*>(L), weight);
      const float eff_max = scale * kMaxQ;
      if (eff_max <= 0) {
        scales[ib] = 0;
        continue;
      }
      scale = xxs_trials(g, xval, weight, waux, eff_max, scale, L);
      if (scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < 4; k++) {
          int8_t P[8];
          for (int i = 0; i < 8; i++) P[i] = static_cast<int8_t>(project(id, xval[8 * k + i]));
          const uint16_t u = levels_key(P);
          if (g.kmap[u] < 0) {
            best_neighbour(g, u, xval + 8 * k, waux + 8 * k, scale, L + 8 * k);
          } else {
            std::memcpy(L + 8 * k, P, 8);
          }
        }
        float sumqx, sumq2;
        sums(32, weight, xval, L, sumqx, sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
      }
      if (scale < 0) {
        scale = -scale;
        for (int k = 0; k < 4; k++) block_signs[k] = static_cast<uint8_t>(~block_signs[k] & 127);
      }
      for (int k = 0; k < 4; k++) {
        q2[2 * ib + 0] |= static_cast<uint32_t>(on_lattice(g, L + 8 * k)) << (8 * k);
        q2[2 * ib + 1] |= static_cast<uint32_t>(block_signs[k]) << (7 * k);
      }
      scales[ib] = scale;
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
      std::memset(y + 2, 0, QK_K / 4);
      continue;
    }
    const float d = max_scale / 31;
    store_u16(y, f32_to_f16(d));
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 32; ib++) q2[2 * ib + 1] |= static_cast<uint32_t>(scale_nibble(id, scales[ib], 15)) << 28;
    std::memcpy(y + 2, q2, QK_K / 4);
  }
}

// IQ2_XS (parity signs, 9-bit indices in u16 qs, imatrix required) and IQ2_S (full sign bytes,
// 10-bit indices split over qs/qh, imatrix optional, d fudged by 0.9875).
template <bool kIsS>
void quantize_row_iq2_16(const float* x, uint8_t* y, size_t n, const float* quant_weights) {
  const IqLattice& g = iq2_lattice(kIsS ? kIQ2_S : kIQ2_XS);
  constexpr size_t kBytes = kIsS ? kIQ2_SBytes : kIQ2_XSBytes;
  float scales[QK_K / 16], weight[16], xval[16], waux[16];
  int8_t L[16];
  uint8_t block_signs[2];
  uint16_t q2[2 * (QK_K / 16)];
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kBytes) {
    std::memset(y, 0, kBytes);
    std::memset(q2, 0, sizeof q2);
    uint8_t* qs = y + 2;
    uint8_t* qh = y + 2 + QK_K / 4;
    uint8_t* sc = kIsS ? y + 2 + QK_K / 4 + QK_K / 32 : y + 2 + QK_K / 4;
    float max_scale = 0;
    const float* xbl = x + QK_K * ibl;
    const float sumx2 = row_block_sumx2(xbl);
    const float sigma2 = kIsS ? 2 * sumx2 / QK_K : sumx2 / QK_K;
    for (int ib = 0; ib < QK_K / 16; ib++) {
      const float* xb = xbl + 16 * ib;
      if (quant_weights) {
        const float* qw = quant_weights + QK_K * ibl + 16 * ib;
        for (int i = 0; i < 16; i++) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      } else {
        for (int i = 0; i < 16; i++) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
      }
      for (int i = 0; i < 16; i++) waux[i] = std::sqrt(weight[i]);
      for (int k = 0; k < 2; k++) block_signs[k] = group_signs(xb + 8 * k, weight + 8 * k, xval + 8 * k, !kIsS);
      float max = xval[0];
      for (int i = 1; i < 16; i++) max = max > xval[i] ? max : xval[i];
      if (max < (kIsS ? kEpsIq2S : kGroupMaxEps)) {
        scales[ib] = 0;
        continue;
      }
      float scale = search16(g, xval, weight, waux, max, L);
      if (scale < 0) {
        scale = -scale;
        for (int k = 0; k < 2; k++) block_signs[k] = static_cast<uint8_t>(kIsS ? ~block_signs[k] : ~block_signs[k] & 127);
      }
      for (int k = 0; k < 2; k++) {
        const int j = on_lattice(g, L + 8 * k);
        if (kIsS) {
          const int i8 = 2 * ib + k;
          qs[i8] = static_cast<uint8_t>(j & 255);
          qh[i8 / 4] = static_cast<uint8_t>(qh[i8 / 4] | ((j >> 8) << (2 * (i8 % 4))));
          qs[QK_K / 8 + i8] = block_signs[k];
        } else {
          q2[2 * ib + k] = static_cast<uint16_t>(j | (block_signs[k] << 9));
        }
      }
      scales[ib] = scale;
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) {
      if (!kIsS) std::memset(qs, 0, QK_K / 4);
      continue;
    }
    const float d = max_scale / 31;
    store_u16(y, f32_to_f16(kIsS ? d * 0.9875f : d));
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 16; ib++) {
      const int l = scale_nibble(id, scales[ib], 15);
      if (ib % 2 == 0) sc[ib / 2] = static_cast<uint8_t>(l);
      else sc[ib / 2] = static_cast<uint8_t>(sc[ib / 2] | (l << 4));
    }
    if (!kIsS) std::memcpy(qs, q2, QK_K / 4);
  }
}

void quantize_row_iq2_xs(const float* x, uint8_t* y, size_t n, const float* qw) { quantize_row_iq2_16<false>(x, y, n, qw); }
void quantize_row_iq2_s(const float* x, uint8_t* y, size_t n, const float* qw) { quantize_row_iq2_16<true>(x, y, n, qw); }

// ---- dequantization ---------------------------------------------------------------------------

namespace {
// y[j] = db * codebook byte * (+-1), as ggml writes it: (db * grid[j]) * sign.
inline void put8(float db, uint64_t entry, uint8_t signs, float* y) {
  for (int j = 0; j < 8; j++) {
    const float v = db * static_cast<float>((entry >> (8 * j)) & 255);
    y[j] = v * ((signs >> j) & 1 ? -1.f : 1.f);
  }
}
}  // namespace

void dequantize_row_iq2_xxs(const uint8_t* x, float* y, size_t n) {
  const uint64_t* cb = iq2_lattice(kIQ2_XXS).codebook;
  for (size_t i = 0; i < n / QK_K; i++, x += kIQ2_XXSBytes) {
    const float d = load_f16(x);
    for (int ib = 0; ib < QK_K / 32; ib++) {
      uint32_t aux[2];
      std::memcpy(aux, x + 2 + 8 * ib, 8);
      const float db = d * (0.5f + static_cast<float>(aux[1] >> 28)) * 0.25f;
      for (int l = 0; l < 4; l++, y += 8) put8(db, cb[(aux[0] >> (8 * l)) & 255], iq2_signs8((aux[1] >> (7 * l)) & 127), y);
    }
  }
}

void dequantize_row_iq2_xs(const uint8_t* x, float* y, size_t n) {
  const uint64_t* cb = iq2_lattice(kIQ2_XS).codebook;
  for (size_t i = 0; i < n / QK_K; i++, x += kIQ2_XSBytes) {
    const float d = load_f16(x);
    const uint8_t* sc = x + 2 + QK_K / 4;
    for (int ib = 0; ib < QK_K / 32; ib++) {
      const float db[2] = {d * (0.5f + static_cast<float>(sc[ib] & 0xf)) * 0.25f,
                           d * (0.5f + static_cast<float>(sc[ib] >> 4)) * 0.25f};
      for (int l = 0; l < 4; l++, y += 8) {
        const uint16_t q = load_u16(x + 2 + 2 * (4 * ib + l));
        put8(db[l / 2], cb[q & 511], iq2_signs8(q >> 9), y);
      }
    }
  }
}

void dequantize_row_iq2_s(const uint8_t* x, float* y, size_t n) {
  const uint64_t* cb = iq2_lattice(kIQ2_S).codebook;
  for (size_t i = 0; i < n / QK_K; i++, x += kIQ2_SBytes) {
    const float d = load_f16(x);
    const uint8_t* qs = x + 2;
    const uint8_t* signs = qs + QK_K / 8;
    const uint8_t* qh = x + 2 + QK_K / 4;
    const uint8_t* sc = qh + QK_K / 32;
    for (int ib = 0; ib < QK_K / 32; ib++, qs += 4, signs += 4) {
      const float db[2] = {d * (0.5f + static_cast<float>(sc[ib] & 0xf)) * 0.25f,
                           d * (0.5f + static_cast<float>(sc[ib] >> 4)) * 0.25f};
      for (int l = 0; l < 4; l++, y += 8) put8(db[l / 2], cb[qs[l] | ((qh[ib] << (8 - 2 * l)) & 0x300)], signs[l], y);
    }
  }
}

}  // namespace ggml
}  // namespace deepcast
