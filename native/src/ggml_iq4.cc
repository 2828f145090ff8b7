// IQ4_NL and IQ4_XS: 4-bit non-linear levels (kvalues_iq4nl) with one scale per 32 values.
// Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a): quantize_row_iq4_nl_impl as
// quantize_iq4_nl / quantize_iq4_xs call it (ntry = 7, with or without quant_weights), and
// dequantize_row_iq4_{nl,xs}; float rules of ggml_quants.h.
#include <cmath>
#include <cstring>

#include "ggml_iq34_tq.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

// The 16 levels of IQ4_NL/IQ4_XS (format constants, ggml's kvalues_iq4nl).
constexpr int8_t kValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
constexpr int kNtry = 7;

// best_index_int8: the nearest level (an exact midpoint goes to the upper one).
inline int best_index(float x) {
  if (x <= kValues[0]) return 0;
  if (x >= kValues[15]) return 15;
  int ml = 0, mu = 15;
  while (mu - ml > 1) {
    const int mav = (ml + mu) / 2;
    if (x < kValues[mav]) mu = mav;
    else ml = mav;
  }
  return x - kValues[mu - 1] < kValues[mu] - x ? mu - 1 : mu;
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
  float d = -max / kValues[0];
  float id = 1 / d;
  float sumqx = 0, sumq2 = 0;
  for (int j = 0; j < 32; j++) {
    const float q = kValues[best_index(id * xb[j])];
    const float w = weight[j];
    sumqx += w * q * xb[j];
    sumq2 += w * q * q;
  }
  d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
  float best = d * sumqx;
  for (int itry = -kNtry; itry <= kNtry; itry++) {
    id = static_cast<float>(itry + kValues[0]) / max;
    sumqx = sumq2 = 0;
    for (int j = 0; j < 32; j++) {
      const float q = kValues[best_index(id * xb[j])];
      const float w = weight[j];
      sumqx += w * q * xb[j];
      sumq2 += w * q * q;
    }
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  return d;
}

// 32 levels best_index(id*x) packed two per byte: q[j] = L[j] | L[j+16] << 4.
inline void pack_levels(const float* xb, float id, uint8_t* q) {
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
