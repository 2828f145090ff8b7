// IQ1_S and IQ1_M: quantize_row_iq1_{s,m}_impl and dequantize_row_iq1_{s,m} of ggml/src/ggml-quants.c
// (llama.cpp v0.4.0), float operations in ggml's order (see ggml_quants.h). Both use the 2048-entry
// lattice with levels 0..2 standing for -1, 0, +1, shifted by +-delta.
#include <cmath>
#include <cstring>

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
void sort_by_value(const float* xb, int n, int* idx) {
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
int best_neighbour(const IqLattice& g, int u, const float* xval, const float* weight, float scale, const float* xg) {
  const uint16_t* nb = g.neighbours - g.kmap[u] - 1;
  const int count = nb[0];
  float term[8][3];
  for (int i = 0; i < 8; i++) {
    for (int lv = 0; lv < 3; lv++) {
      const float diff = scale * xg[lv] - xval[i];
      term[i][lv] = weight[i] * diff * diff;
    }
  }
  float best_score = kFltMax;
  int best = -1;
  for (int j = 1; j <= count; j++) {
    const uint64_t p = g.point[nb[j]];
    float d2 = 0;
    for (int i = 0; i < 8; i++) d2 += term[i][(p >> (8 * i + 1)) & 3];
    if (d2 < best_score) {
      best_score = d2;
      best = nb[j];
    }
  }
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

}  // namespace

void quantize_row_iq1_s(const float* x, uint8_t* y, size_t n, const float* quant_weights) {
  constexpr int kBlock = 32;
  const IqLattice& g = iq2_lattice(kIQ1_S);
  float scales[QK_K / kBlock], weight[kBlock], sumx[kBlock + 1], sumw[kBlock + 1];
  int idx[kBlock];
  int8_t L[kBlock], shifts[QK_K / kBlock];
  uint16_t index[kBlock / 8];
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ1_SBytes) {
    std::memset(y, 0, kIQ1_SBytes);
    uint8_t* qs = y + 2;
    uint8_t* qh = y + 2 + QK_K / 8;
    float max_scale = 0;
    const float* xbl = x + QK_K * ibl;
    const float sigma2 = block_sigma2(xbl);
    for (int ib = 0; ib < QK_K / kBlock; ib++) {
      const float* xb = xbl + kBlock * ib;
      const float* qw = quant_weights + QK_K * ibl + kBlock * ib;
      for (int i = 0; i < kBlock; i++) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
      const float max = abs_max(xb, kBlock);
      if (max < kEpsIq1S) {
        scales[ib] = 0;
        shifts[ib] = 1;
        continue;
      }
      // Exhaustive search over the two boundaries splitting the sorted values into levels 0/1/2.
      sort_by_value(xb, kBlock, idx);
      sumx[0] = sumw[0] = 0;
      for (int j = 0; j < kBlock; j++) {
        const int i = idx[j];
        sumx[j + 1] = sumx[j] + weight[i] * xb[i];
        sumw[j + 1] = sumw[j] + weight[i];
      }
      float best_score = -kFltMax, scale = max;
      int besti1 = -1, besti2 = -1, best_shift = 0;
      // ggml's candidate (i1, i2, shift) is sumqx = (a(i1) + b(i1,i2)) + c(i2) (and sumq2 alike),
      // each term computed by itself; a and c are hoisted out of the double loop, unchanged.
      float cx[2][kBlock + 1], cw[2][kBlock + 1];
      for (int s = 0; s < 2; s++) {
        const float* xv = s == 0 ? kXp : kXm;
        for (int i2 = 0; i2 <= kBlock; i2++) {
          cx[s][i2] = (sumx[kBlock] - sumx[i2]) * xv[2];
          cw[s][i2] = (sumw[kBlock] - sumw[i2]) * xv[2] * xv[2];
        }
      }
      for (int i1 = 0; i1 <= kBlock; i1++) {
        const float ax[2] = {(sumx[i1] - sumx[0]) * kXp[0], (sumx[i1] - sumx[0]) * kXm[0]};
        const float aw[2] = {(sumw[i1] - sumw[0]) * kXp[0] * kXp[0], (sumw[i1] - sumw[0]) * kXm[0] * kXm[0]};
        for (int i2 = i1; i2 <= kBlock; i2++) {
          const float dx = sumx[i2] - sumx[i1], dw = sumw[i2] - sumw[i1];
          for (int s = 0; s < 2; s++) {
            const float* xv = s == 0 ? kXp : kXm;
            const float sumqx = ax[s] + dx * xv[1] + cx[s][i2];
            const float sumq2 = aw[s] + dw * xv[1] * xv[1] + cw[s][i2];
            if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
              scale = sumqx / sumq2;
              best_score = scale * sumqx;
              besti1 = i1;
              besti2 = i2;
              best_shift = s == 0 ? 1 : -1;
            }
          }
        }
      }
      if (besti1 < 0 || besti2 < 0 || best_shift == 0) {
        scales[ib] = 0;
        shifts[ib] = 1;
        continue;
      }
      for (int j = 0; j < besti1; j++) L[idx[j]] = 0;
      for (int j = besti1; j < besti2; j++) L[idx[j]] = 1;
      for (int j = besti2; j < kBlock; j++) L[idx[j]] = 2;
      if (scale < 0) {
        for (int j = 0; j < kBlock; j++) L[j] = static_cast<int8_t>(2 - L[j]);
        scale = -scale;
        best_shift = -best_shift;
      }
      bool all_on_grid = true;
      const float* xx = best_shift == 1 ? kXp : kXm;
      for (int k = 0; k < kBlock / 8; k++) {
        const uint16_t u = levels_key(L + 8 * k);
        int j = g.kmap[u];
        if (j < 0) {
          all_on_grid = false;
          j = best_neighbour(g, u, xb + 8 * k, weight + 8 * k, scale, xx);
        }
        index[k] = static_cast<uint16_t>(j);
      }
      if (!all_on_grid) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < kBlock / 8; k++) {
          const uint8_t* pg = reinterpret_cast<const uint8_t*>(g.point + index[k]);
          for (int j = 0; j < 8; j++) {
            const float w = weight[8 * k + j];
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
      shifts[ib] = static_cast<int8_t>(best_shift);
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) continue;
    const float d = max_scale / 15;
    store_u16(y, f32_to_f16(d * 1.125f));
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / kBlock; ib++) {
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
