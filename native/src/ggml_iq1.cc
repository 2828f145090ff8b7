// IQ1_S and IQ1_M: quantize_row_iq1_{s,m}_impl and dequantize_row_iq1_{s,m} of ggml/src/ggml-quants.c
// (llama.cpp v0.4.0), float operations in ggml's order (see ggml_quants.h). Both use the 2048-entry
// lattice with levels 0..2 standing for -1, 0, +1, shifted by +-delta.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <cstring>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_iq2.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

constexpr float kDelta = 0.125f;      // IQ1S_DELTA == IQ1M_DELTA
constexpr float kEpsIq1S = 1e-12f;    // GROUP_MAX_EPS_IQ1_S
constexpr float kEpsIq1M = 1e-7f;     // GROUP_MAX_EPS_IQ1_M
constexpr float kFltMax = 3.40282347e+38f;
const float kXp[3] = {-1 + kDelta, kDelta, 1 + kDelta};   // shift +1
const float kXm[3] = {-1 - kDelta, -kDelta, 1 - kDelta};  // shift -1

// The order ggml's qsort(iq1_sort_helper) leaves the indices in: by value, ties in index order
// (glibc's qsort is a stable merge sort for these sizes). Insertion sort is stable.
void sort_by_value_scalar(const float* xb, int n, int* idx) {
  for (int i = 0; i < n; i++) idx[i] = i;
  for (int i = 1; i < n; i++) {
    const int v = idx[i];
    int j = i;
    while (j > 0 && xb[v] < xb[idx[j - 1]]) {
      idx[j] = idx[j - 1];
      j--;
    }
    idx[j] = v;
  }
}

// iq1_find_best_neighbour2: the listed entry minimising sum w*(scale*xg[l] - x)^2 (first minimum).
// The term of coordinate i only depends on its level l, so the three possible terms are computed
// once and each entry's sum adds the same floats in ggml's order. ggml's fallback over the whole
// lattice only runs when every distance is NaN, and then aborts; here the entry 0 is returned.
inline void level_terms(const float* xval, const float* weight, float scale, const float* xg, float (*term)[3]) {
  for (int i = 0; i < 8; i++) {
    for (int lv = 0; lv < 3; lv++) {
      const float diff = scale * xg[lv] - xval[i];
      term[i][lv] = weight[i] * diff * diff;
    }
  }
}

int best_neighbour(const IqLattice& g, int u, const float* xval, const float* weight, float scale, const float* xg) {
  float term[8][3];
  level_terms(xval, weight, scale, xg, term);
  const int best = nearest_listed(g, u, term);
  return best < 0 ? 0 : best;
}

inline uint16_t levels_key(const int8_t* L) {
  uint16_t u = 0;
  for (int i = 0; i < 8; i++) u = static_cast<uint16_t>(u | (L[i] << (2 * i)));
  return u;
}

inline int scale_level(float id, float s) {
  const int l = nearest_int(0.5f * (id * s - 1));
  return l < 0 ? 0 : (l > 7 ? 7 : l);
}

float block_sigma2(const float* xbl) {
  float sumx2 = 0;
  for (int i = 0; i < QK_K; i++) sumx2 += xbl[i] * xbl[i];
  return 2 * sumx2 / QK_K;
}

float abs_max(const float* xb, int n) {
  float max = std::fabs(xb[0]);
  for (int i = 1; i < n; i++) {
    const float a = std::fabs(xb[i]);
    max = max > a ? max : a;
  }
  return max;
}


// ---- IQ1_S: the search over the two boundaries --------------------------------------------------
// ggml tries, for the 32 values sorted, every split i1 <= i2 into levels 0 (below i1), 1 and 2 (from
// i2 on), each with both shifts: candidate (i1, i2, s) in that order (i1 outer, s inner). Its sums are
// sumqx = (a(i1) + b(i1, i2)) + c(i2) and sumq2 alike, each term computed as ggml computes it; a and c
// are hoisted. A candidate wins when sumq2 > 0 and sumqx^2 > best_score * sumq2 (best_score of the
// running winner), so the result depends on the order of the trials.
constexpr int kS = 32;        // values per IQ1_S block
constexpr int kPad = kS + 8;  // prefix arrays padded for 8-lane loads past i2 = 32

struct Iq1sSums {
  float sumx[kPad], sumw[kPad];    // prefix sums over the sorted values: [j] = sum of the first j
  float cx[2][kPad], cw[2][kPad];  // c(i2) of shift +1 (s = 0) and -1 (s = 1)
};

struct Iq1sChoice {
  float best_score = -kFltMax, scale;
  int i1 = -1, i2 = -1, shift = 0;

  // ggml's test and update for one candidate.
  void trial(float sumqx, float sumq2, int c1, int c2, int s) {
    if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
      scale = sumqx / sumq2;
      best_score = scale * sumqx;
      i1 = c1;
      i2 = c2;
      shift = s == 0 ? 1 : -1;
    }
  }
};

inline void a_terms(const Iq1sSums& t, int i1, float* ax, float* aw) {
  ax[0] = (t.sumx[i1] - t.sumx[0]) * kXp[0];
  ax[1] = (t.sumx[i1] - t.sumx[0]) * kXm[0];
  aw[0] = (t.sumw[i1] - t.sumw[0]) * kXp[0] * kXp[0];
  aw[1] = (t.sumw[i1] - t.sumw[0]) * kXm[0] * kXm[0];
}

void iq1s_search_scalar(const Iq1sSums& t, Iq1sChoice& c) {
  for (int i1 = 0; i1 <= kS; i1++) {
    float ax[2], aw[2];
    a_terms(t, i1, ax, aw);
    for (int i2 = i1; i2 <= kS; i2++) {
      const float dx = t.sumx[i2] - t.sumx[i1], dw = t.sumw[i2] - t.sumw[i1];
      for (int s = 0; s < 2; s++) {
        const float* xv = s == 0 ? kXp : kXm;
        c.trial(ax[s] + dx * xv[1] + t.cx[s][i2], aw[s] + dw * xv[1] * xv[1] + t.cw[s][i2], i1, i2, s);
      }
    }
  }
}

#if defined(__x86_64__)
#define DC_IQ1_AVX2 __attribute__((target("avx2")))

// Lanes i2 .. i2+7 of one i1, both shifts: the scalar operations per lane. When no lane of the 16
// passes the test against the current best_score, none would in the scalar order either (nothing
// changes best_score between them), so they are skipped; otherwise the 16 candidates are replayed
// through the scalar test in ggml's order. Both paths therefore pick the same winner.
DC_IQ1_AVX2 void iq1s_search_avx2(const Iq1sSums& t, Iq1sChoice& c) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 xv1[2] = {_mm256_set1_ps(kXp[1]), _mm256_set1_ps(kXm[1])};
  for (int i1 = 0; i1 <= kS; i1++) {
    float ax[2], aw[2];
    a_terms(t, i1, ax, aw);
    const __m256 sx1 = _mm256_set1_ps(t.sumx[i1]), sw1 = _mm256_set1_ps(t.sumw[i1]);
    for (int base = i1; base <= kS; base += 8) {
      const __m256 dx = _mm256_sub_ps(_mm256_loadu_ps(t.sumx + base), sx1);
      const __m256 dw = _mm256_sub_ps(_mm256_loadu_ps(t.sumw + base), sw1);
      const __m256 best = _mm256_set1_ps(c.best_score);
      __m256 qx[2], q2[2];
      int pass = 0;
      for (int s = 0; s < 2; s++) {
        qx[s] = _mm256_add_ps(_mm256_add_ps(_mm256_set1_ps(ax[s]), _mm256_mul_ps(dx, xv1[s])), _mm256_loadu_ps(t.cx[s] + base));
        q2[s] = _mm256_add_ps(_mm256_add_ps(_mm256_set1_ps(aw[s]), _mm256_mul_ps(_mm256_mul_ps(dw, xv1[s]), xv1[s])),
                              _mm256_loadu_ps(t.cw[s] + base));
        const __m256 win = _mm256_and_ps(_mm256_cmp_ps(q2[s], zero, _CMP_GT_OQ),
                                         _mm256_cmp_ps(_mm256_mul_ps(qx[s], qx[s]), _mm256_mul_ps(best, q2[s]), _CMP_GT_OQ));
        pass |= _mm256_movemask_ps(win);
      }
      const int lanes = kS + 1 - base < 8 ? kS + 1 - base : 8;
      if ((pass & ((1 << lanes) - 1)) == 0) continue;
      alignas(32) float fx[2][8], f2[2][8];
      for (int s = 0; s < 2; s++) {
        _mm256_store_ps(fx[s], qx[s]);
        _mm256_store_ps(f2[s], q2[s]);
      }
      for (int k = 0; k < lanes; k++)
        for (int s = 0; s < 2; s++) c.trial(fx[s][k], f2[s][k], i1, base + k, s);
    }
  }
}

// The stable order for 32 or 16 values none of which is NaN: the position of value i is the number
// of values below it plus the number of equal ones before it, which is exactly where a stable sort
// by < puts it (< is a strict weak order without NaN).
DC_IQ1_AVX2 bool sort_by_value_avx2(const float* xb, int n, int* idx) {
  __m256 v[4];
  const int nv = n / 8;
  int nan = 0;
  for (int k = 0; k < nv; k++) {
    v[k] = _mm256_loadu_ps(xb + 8 * k);
    nan |= _mm256_movemask_ps(_mm256_cmp_ps(v[k], v[k], _CMP_UNORD_Q));
  }
  if (nan) return false;
  for (int i = 0; i < n; i++) {
    const __m256 xi = _mm256_set1_ps(xb[i]);
    uint32_t lt = 0, eq = 0;
    for (int k = 0; k < nv; k++) {
      lt |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v[k], xi, _CMP_LT_OQ))) << (8 * k);
      eq |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v[k], xi, _CMP_EQ_OQ))) << (8 * k);
    }
    const uint32_t before = (1u << i) - 1;  // i < 32
    idx[__builtin_popcount(lt | (eq & before))] = i;
  }
  return true;
}

#endif

inline void iq1s_search(const Iq1sSums& t, Iq1sChoice& c) {
#if defined(__x86_64__)
  if (use_avx2()) return iq1s_search_avx2(t, c);
#endif
  iq1s_search_scalar(t, c);
}

inline void sort_by_value(const float* xb, int n, int* idx) {
#if defined(__x86_64__)
  if (use_avx2() && sort_by_value_avx2(xb, n, idx)) return;
#endif
  sort_by_value_scalar(xb, n, idx);
}


}  // namespace

void quantize_row_iq1_s(const float* x, uint8_t* y, size_t n, const float* quant_weights) {
  constexpr int kBlock = kS;
  constexpr int kNb = QK_K / kBlock;
  const IqLattice& g = iq2_lattice(kIQ1_S);
  float scales[kNb], weight[QK_K];
  int idx[kBlock];
  int8_t L[kBlock], shifts[kNb];
  bool searched[kNb];
  uint16_t keys[kNb][kBlock / 8];
  Iq1sSums t;
  // The padding lanes (i2 > 32) are computed but never tried; keep them defined.
  std::fill(std::begin(t.sumx), std::end(t.sumx), 0.f);
  std::fill(std::begin(t.sumw), std::end(t.sumw), 0.f);
  for (int s = 0; s < 2; s++) {
    std::fill(std::begin(t.cx[s]), std::end(t.cx[s]), 0.f);
    std::fill(std::begin(t.cw[s]), std::end(t.cw[s]), 0.f);
  }
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ1_SBytes) {
    std::memset(y, 0, kIQ1_SBytes);
    uint8_t* qs = y + 2;
    uint8_t* qh = y + 2 + QK_K / 8;
    float max_scale = 0;
    const float* xbl = x + QK_K * ibl;
    const float sigma2 = block_sigma2(xbl);
    // Pass 1, per block: the boundary search and the levels it gives. The lattice look-ups of all
    // blocks follow in pass 2, their neighbour records fetched from memory meanwhile (each block's
    // result depends on its own values only, so the split changes no operation).
    for (int ib = 0; ib < kNb; ib++) {
      searched[ib] = false;
      const float* xb = xbl + kBlock * ib;
      const float* qw = quant_weights + QK_K * ibl + kBlock * ib;
      float* wb = weight + kBlock * ib;
      for (int i = 0; i < kBlock; i++) wb[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      const float max = abs_max(xb, kBlock);
      if (max < kEpsIq1S) {
        scales[ib] = 0;
        shifts[ib] = 1;
        continue;
      }
      // Exhaustive search over the two boundaries splitting the sorted values into levels 0/1/2.
      sort_by_value(xb, kBlock, idx);
      t.sumx[0] = t.sumw[0] = 0;
      for (int j = 0; j < kBlock; j++) {
        const int i = idx[j];
        t.sumx[j + 1] = t.sumx[j] + wb[i] * xb[i];
        t.sumw[j + 1] = t.sumw[j] + wb[i];
      }
      for (int s = 0; s < 2; s++) {
        const float* xv = s == 0 ? kXp : kXm;
        for (int i2 = 0; i2 <= kBlock; i2++) {
          t.cx[s][i2] = (t.sumx[kBlock] - t.sumx[i2]) * xv[2];
          t.cw[s][i2] = (t.sumw[kBlock] - t.sumw[i2]) * xv[2] * xv[2];
        }
      }
      Iq1sChoice c;
      c.scale = max;
      iq1s_search(t, c);
      float scale = c.scale;
      int best_shift = c.shift;
      if (c.i1 < 0 || c.i2 < 0 || best_shift == 0) {
        scales[ib] = 0;
        shifts[ib] = 1;
        continue;
      }
      for (int j = 0; j < c.i1; j++) L[idx[j]] = 0;
      for (int j = c.i1; j < c.i2; j++) L[idx[j]] = 1;
      for (int j = c.i2; j < kBlock; j++) L[idx[j]] = 2;
      if (scale < 0) {
        for (int j = 0; j < kBlock; j++) L[j] = static_cast<int8_t>(2 - L[j]);
        scale = -scale;
        best_shift = -best_shift;
      }
      for (int k = 0; k < kBlock / 8; k++) {
        keys[ib][k] = levels_key(L + 8 * k);
        const int32_t m = g.kmap[keys[ib][k]];
        if (m < 0) {
          const uint16_t* nb = g.neighbours - m - 1;
          const uint16_t* lv = g.record_levels - m - 1;
          __builtin_prefetch(nb);
          __builtin_prefetch(lv);
          __builtin_prefetch(lv + 32);
        }
      }
      searched[ib] = true;
      scales[ib] = scale;
      shifts[ib] = static_cast<int8_t>(best_shift);
    }
    // Pass 2: lattice entries (nearest listed neighbour for an off-lattice group), the refitted
    // scale, the packed block.
    for (int ib = 0; ib < kNb; ib++) {
      if (!searched[ib]) continue;
      const float* xb = xbl + kBlock * ib;
      const float* wb = weight + kBlock * ib;
      float scale = scales[ib];
      uint16_t index[kBlock / 8];
      bool all_on_grid = true;
      const float* xx = shifts[ib] == 1 ? kXp : kXm;
      for (int k = 0; k < kBlock / 8; k++) {
        const uint16_t u = keys[ib][k];
        int j = g.kmap[u];
        if (j < 0) {
          all_on_grid = false;
          j = best_neighbour(g, u, xb + 8 * k, wb + 8 * k, scale, xx);
        }
        index[k] = static_cast<uint16_t>(j);
      }
      if (!all_on_grid) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < kBlock / 8; k++) {
          const uint8_t* pg = reinterpret_cast<const uint8_t*>(g.point + index[k]);
          for (int j = 0; j < 8; j++) {
            const float w = wb[8 * k + j];
            const float q = xx[(pg[j] - 1) / 2];
            sumqx += w * q * xb[8 * k + j];
            sumq2 += w * q * q;
          }
        }
        if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
      }
      uint16_t h = 0;
      for (int k = 0; k < kBlock / 8; k++) {
        qs[(kBlock / 8) * ib + k] = static_cast<uint8_t>(index[k] & 255);
        h = static_cast<uint16_t>(h | ((index[k] >> 8) << (3 * k)));
      }
      store_u16(qh + 2 * ib, h);
      scales[ib] = scale;
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) continue;
    const float d = max_scale / 15;
    store_u16(y, f32_to_f16(d * 1.125f));
    const float id = 1 / d;
    for (int ib = 0; ib < kNb; ib++) {
      int l = scale_level(id, scales[ib]);
      if (shifts[ib] == -1) l |= 8;
      store_u16(qh + 2 * ib, static_cast<uint16_t>(load_u16(qh + 2 * ib) | (l << 12)));
    }
  }
}

void quantize_row_iq1_m(const float* x, uint8_t* y, size_t n, const float* quant_weights) {
  constexpr int kBlock = 16;
  const IqLattice& g = iq2_lattice(kIQ1_M);
  static const uint8_t kMasks[4] = {0x00, 0x80, 0x08, 0x88};
  float scales[QK_K / kBlock], weight[kBlock];
  int idx[kBlock];
  int8_t L[kBlock], shifts[QK_K / kBlock];
  uint16_t index[kBlock / 8];
  // Level sets of the two groups of 8 for each combination k: 0 (+,+), 1 (+,-), 2 (-,+), 3 (-,-).
  auto level_set = [](int k, int group) -> const float* {
    return group == 0 ? (k < 2 ? kXp : kXm) : (k % 2 == 0 ? kXp : kXm);
  };
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ1_MBytes) {
    std::memset(y, 0, kIQ1_MBytes);
    uint8_t* qs = y;
    uint8_t* qh = y + QK_K / 8;
    uint8_t* sc = y + QK_K / 8 + QK_K / 16;
    float max_scale = 0;
    const float* xbl = x + QK_K * ibl;
    const float sigma2 = block_sigma2(xbl);
    auto block_weights = [&](int ib, const float* xb) {
      if (quant_weights) {
        const float* qw = quant_weights + QK_K * ibl + kBlock * ib;
        for (int i = 0; i < kBlock; i++) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      } else {
        for (int i = 0; i < kBlock; i++) weight[i] = xb[i] * xb[i];
      }
    };
    for (int ib = 0; ib < QK_K / kBlock; ib++) {
      const float* xb = xbl + kBlock * ib;
      block_weights(ib, xb);
      const float max = abs_max(xb, kBlock);
      if (max < kEpsIq1M) {
        scales[ib] = 0;
        shifts[ib] = 0;
        continue;
      }
      sort_by_value(xb, kBlock, idx);
      float best_score = -kFltMax, scale = max;
      int besti1 = -1, besti2 = -1, best_k = -1;
      // ggml accumulates, for every (i1, i2) and combination k, the terms of sorted positions
      // j = 0..15 in order from 0: level 0 below i1, 1 below i2, 2 after. The same sums are built
      // here by reusing the common prefix: the level-0 prefix up to i1, then the level-1 run grown
      // one position per i2, then the level-2 tail; every addition is one ggml performs, in its order.
      float tx[3][kBlock][4], tq[3][kBlock][4];  // term of position j at level lev for combination k
      for (int j = 0; j < kBlock; j++) {
        const int i = idx[j];
        const int group = i < kBlock / 2 ? 0 : 1;
        for (int lev = 0; lev < 3; lev++) {
          for (int k = 0; k < 4; k++) {
            const float xv = level_set(k, group)[lev];
            tx[lev][j][k] = weight[i] * xv * xb[i];
            tq[lev][j][k] = weight[i] * xv * xv;
          }
        }
      }
      float p0x[4] = {0, 0, 0, 0}, p0q[4] = {0, 0, 0, 0};  // level-0 prefix over j < i1
      for (int i1 = 0; i1 <= kBlock; i1++) {
        float rx[4], rq[4];  // prefix plus the level-1 run over i1 <= j < i2
        for (int k = 0; k < 4; k++) {
          rx[k] = p0x[k];
          rq[k] = p0q[k];
        }
        for (int i2 = i1; i2 <= kBlock; i2++) {
          float sumqx[4], sumq2[4];
          for (int k = 0; k < 4; k++) {
            sumqx[k] = rx[k];
            sumq2[k] = rq[k];
          }
          for (int j = i2; j < kBlock; j++) {
            for (int k = 0; k < 4; k++) {
              sumqx[k] += tx[2][j][k];
              sumq2[k] += tq[2][j][k];
            }
          }
          for (int k = 0; k < 4; k++) {
            if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
              scale = sumqx[k] / sumq2[k];
              best_score = scale * sumqx[k];
              besti1 = i1;
              besti2 = i2;
              best_k = k;
            }
          }
          if (i2 < kBlock) {
            for (int k = 0; k < 4; k++) {
              rx[k] += tx[1][i2][k];
              rq[k] += tq[1][i2][k];
            }
          }
        }
        if (i1 < kBlock) {
          for (int k = 0; k < 4; k++) {
            p0x[k] += tx[0][i1][k];
            p0q[k] += tq[0][i1][k];
          }
        }
      }
      if (besti1 < 0 || besti2 < 0 || best_k < 0) {
        scales[ib] = 0;
        shifts[ib] = 0;
        continue;
      }
      for (int j = 0; j < besti1; j++) L[idx[j]] = 0;
      for (int j = besti1; j < besti2; j++) L[idx[j]] = 1;
      for (int j = besti2; j < kBlock; j++) L[idx[j]] = 2;
      if (scale < 0) {
        for (int j = 0; j < kBlock; j++) L[j] = static_cast<int8_t>(2 - L[j]);
        scale = -scale;
        best_k = 3 - best_k;
      }
      bool all_on_grid = true;
      for (int k = 0; k < kBlock / 8; k++) {
        const uint16_t u = levels_key(L + 8 * k);
        int j = g.kmap[u];
        if (j < 0) {
          all_on_grid = false;
          j = best_neighbour(g, u, xb + 8 * k, weight + 8 * k, scale, level_set(best_k, k));
        }
        index[k] = static_cast<uint16_t>(j);
      }
      if (!all_on_grid) {
        float sumqx_f = 0, sumq2_f = 0;
        for (int k = 0; k < kBlock / 8; k++) {
          const float* xx = level_set(best_k, k);
          const uint8_t* pg = reinterpret_cast<const uint8_t*>(g.point + index[k]);
          for (int j = 0; j < 8; j++) {
            const float w = weight[8 * k + j];
            const float q = xx[(pg[j] - 1) / 2];
            sumqx_f += w * q * xb[8 * k + j];
            sumq2_f += w * q * q;
          }
        }
        if (sumqx_f > 0 && sumq2_f > 0) scale = sumqx_f / sumq2_f;
      }
      qs[2 * ib + 0] = static_cast<uint8_t>(index[0] & 255);
      qs[2 * ib + 1] = static_cast<uint8_t>(index[1] & 255);
      qh[ib] = static_cast<uint8_t>((index[0] >> 8) | ((index[1] >> 8) << 4));
      scales[ib] = scale;
      shifts[ib] = static_cast<int8_t>(best_k);
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) continue;

    // Block scales from d = max_scale/15, then d refitted by least squares over the super-block.
    uint16_t scw[4] = {0, 0, 0, 0};
    float d = max_scale / 15;
    const float id = 1 / d;
    float sumqx_f = 0, sumq2_f = 0;
    for (int ib = 0; ib < QK_K / kBlock; ib++) {
      const int l = scale_level(id, scales[ib]);
      scw[ib / 4] = static_cast<uint16_t>(scw[ib / 4] | (l << (3 * (ib % 4))));
      qh[ib] = static_cast<uint8_t>(qh[ib] | kMasks[shifts[ib]]);
      const float* xb = xbl + kBlock * ib;
      block_weights(ib, xb);
      for (int k = 0; k < kBlock / 8; k++) {
        const float* xx = level_set(shifts[ib], k);
        const int j = qs[2 * ib + k] + ((qh[ib] << (8 - 4 * k)) & 0x700);
        const uint8_t* pg = reinterpret_cast<const uint8_t*>(g.point + j);
        for (int t = 0; t < 8; t++) {
          const float w = weight[8 * k + t];
          const float q = xx[(pg[t] - 1) / 2] * static_cast<float>(2 * l + 1);
          sumqx_f += w * q * xb[8 * k + t];
          sumq2_f += w * q * q;
        }
      }
    }
    if (sumq2_f > 0) d = sumqx_f / sumq2_f;
    const uint16_t h = f32_to_f16(d * 1.1125f);
    scw[0] = static_cast<uint16_t>(scw[0] | ((h & 0x000f) << 12));
    scw[1] = static_cast<uint16_t>(scw[1] | ((h & 0x00f0) << 8));
    scw[2] = static_cast<uint16_t>(scw[2] | ((h & 0x0f00) << 4));
    scw[3] = static_cast<uint16_t>(scw[3] | (h & 0xf000));
    for (int i = 0; i < 4; i++) store_u16(sc + 2 * i, scw[i]);
  }
}

// ---- dequantization ---------------------------------------------------------------------------

namespace {
// y[j] = dl * (grid[j] + delta), grid[j] in {-1, 0, 1}.
inline void put8(float dl, uint64_t entry, float delta, float* y) {
  for (int j = 0; j < 8; j++) {
    const int8_t v = static_cast<int8_t>((entry >> (8 * j)) & 255);
    y[j] = dl * (static_cast<float>(v) + delta);
  }
}
}  // namespace

void dequantize_row_iq1_s(const uint8_t* x, float* y, size_t n) {
  const uint64_t* cb = iq2_lattice(kIQ1_S).codebook;
  for (size_t i = 0; i < n / QK_K; i++, x += kIQ1_SBytes) {
    const float d = load_f16(x);
    const uint8_t* qs = x + 2;
    for (int ib = 0; ib < QK_K / 32; ib++, qs += 4) {
      const uint16_t qh = load_u16(x + 2 + QK_K / 8 + 2 * ib);
      const float dl = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
      const float delta = qh & 0x8000 ? -kDelta : kDelta;
      for (int l = 0; l < 4; l++, y += 8) put8(dl, cb[qs[l] | (((qh >> (3 * l)) & 7) << 8)], delta, y);
    }
  }
}

void dequantize_row_iq1_m(const uint8_t* x, float* y, size_t n) {
  const uint64_t* cb = iq2_lattice(kIQ1_M).codebook;
  for (size_t i = 0; i < n / QK_K; i++, x += kIQ1_MBytes) {
    const uint8_t* qs = x;
    const uint8_t* qh = x + QK_K / 8;
    uint16_t sc[4];
    std::memcpy(sc, x + QK_K / 8 + QK_K / 16, 8);
    const uint16_t h = static_cast<uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
    const float d = f16_to_f32(h);
    for (int ib = 0; ib < QK_K / 32; ib++, qs += 4, qh += 2) {
      const float dl1 = d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 0)) & 0x7) + 1);
      const float dl2 = d * static_cast<float>(2 * ((sc[ib / 2] >> (6 * (ib % 2) + 3)) & 0x7) + 1);
      const int idx[4] = {qs[0] | ((qh[0] << 8) & 0x700), qs[1] | ((qh[0] << 4) & 0x700),
                          qs[2] | ((qh[1] << 8) & 0x700), qs[3] | ((qh[1] << 4) & 0x700)};
      const float delta[4] = {qh[0] & 0x08 ? -kDelta : kDelta, qh[0] & 0x80 ? -kDelta : kDelta,
                              qh[1] & 0x08 ? -kDelta : kDelta, qh[1] & 0x80 ? -kDelta : kDelta};
      for (int l = 0; l < 4; l++, y += 8) put8(l < 2 ? dl1 : dl2, cb[idx[l]], delta[l], y);
    }
  }
}

}  // namespace ggml
}  // namespace deepcast
