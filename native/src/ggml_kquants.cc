// K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and ggml's scale-search helpers.
// Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a): make_qx_quants,
// make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants, quantize_row_q*_K_ref
// (no imatrix), quantize_row_q*_K_impl (imatrix) and dequantize_row_q*_K. Every expression keeps
// ggml's float32 evaluation order and ggml's integer types (narrowing to int8/uint8 included).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

// ---- helpers ------------------------------------------------------------------------------

float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.f;
  }
  auto weight = [&](int i) { return qw ? qw[i] : x[i] * x[i]; };
  auto level = [&](float iscale, int i) {
    const int l = nearest_int(iscale * x[i]);
    return l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l);
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = level(iscale, i);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = weight(i);
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; is++) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; i++) {
      const int l = level(iscale, i);
      const float w = weight(i);
      sumlx += w * x[i] * static_cast<float>(l);
      suml2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; i++) L[i] = static_cast<int8_t>(nmax + level(iscale, i));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.f;
  }
  auto clamp = [&](int l) { return l < -nmax ? -nmax : (l > nmax - 1 ? nmax - 1 : l); };
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = clamp(nearest_int(iscale * x[i]));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; itry++) {
    int n_changed = 0;
    for (int i = 0; i < n; i++) {
      const float w = x[i] * x[i];
      const float li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      if (slx > 0) {
        float sl2 = suml2 - w * li * li;
        const int new_l = clamp(nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          const float nl = static_cast<float>(new_l);
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            n_changed++;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; i++) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                      uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad, bool x3) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  // make_qkx2_quants tests max == min, make_qkx3_quants max <= min.
  if (x3 ? max <= min : max == min) {
    std::memset(L, 0, static_cast<size_t>(n));
    *the_min = -min;
    return 0.f;
  }
  auto level = [&](float iscale, int i) {
    const int l = nearest_int(iscale * (x[i] - min));
    return static_cast<uint8_t>(l < 0 ? 0 : (l > nmax ? nmax : l));
  };
  auto error = [&](float scale, float mn, const uint8_t* Q) {
    float err = 0;
    for (int i = 0; i < n; i++) {
      float diff = scale * static_cast<float>(Q[i]) + mn - x[i];
      diff = use_mad ? std::fabs(diff) : diff * diff;
      err += weights[i] * diff;
    }
    return err;
  };
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  for (int i = 0; i < n; i++) L[i] = level(iscale, i);
  float best_error = error(scale, min, L);
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
      const uint8_t q = level(iscale, i);
      Laux[i] = q;
      const float l = static_cast<float>(q);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      const float cur_error = error(this_scale, this_min, Laux);
      if (cur_error < best_error) {
        std::memcpy(L, Laux, static_cast<size_t>(n));
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights) {
  float max = 0;
  for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
  if (max < kGroupMaxEps) {
    std::memset(L, 0, static_cast<size_t>(n));
    return 0.f;
  }
  auto level = [&](float iscale, int i) {
    const int l = nearest_int(iscale * x[i]);
    return l < nmax ? l : nmax;
  };
  float iscale = static_cast<float>(nmax) / max;
  for (int i = 0; i < n; i++) L[i] = static_cast<uint8_t>(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; i++) {
    const float diff = x[i] - scale * static_cast<float>(L[i]);
    best_mse += quant_weights[i] * diff * diff;
  }
  for (int is = -4; is <= 4; is++) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * static_cast<float>(is) + static_cast<float>(nmax)) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; i++) {
      const float diff = x[i] - scale_is * static_cast<float>(level(iscale_is, i));
      mse += quant_weights[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    const int l = level(iscale, i);
    L[i] = static_cast<uint8_t>(l);
    const float w = quant_weights[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; itry++) {
    int n_changed = 0;
    for (int i = 0; i < n; i++) {
      const float w = quant_weights[i];
      const float li = static_cast<float>(L[i]);
      float slx = sumlx - w * x[i] * li;
      float sl2 = suml2 - w * li * li;
      if (slx > 0 && sl2 > 0) {
        int new_l = nearest_int(x[i] * sl2 / slx);
        new_l = new_l < nmax ? new_l : nmax;
        if (new_l != L[i]) {
          const float nl = static_cast<float>(new_l);
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            n_changed++;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

namespace {

// ---- shared packing -----------------------------------------------------------------------

// Four 2-bit values per byte (Q2_K qs and the low bits of Q3_K): byte 32h+l holds elements
// 128h+l, +32, +64, +96 in bits 0-1, 2-3, 4-5, 6-7. T is ggml's type for L (uint8 or int8).
template <typename T>
void pack_2bit(const T* L, uint8_t* qs) {
  for (int j = 0; j < QK_K; j += 128)
    for (int l = 0; l < 32; l++)
      qs[j / 4 + l] =
          static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// 6-bit scale and min j of a Q4_K/Q5_K block (ggml's get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

inline void pack_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* s) {
  if (j < 4) {
    s[j] = ls;
    s[j + 4] = lm;
  } else {
    s[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    s[j - 4] = static_cast<uint8_t>(s[j - 4] | ((ls >> 4) << 6));
    s[j] = static_cast<uint8_t>(s[j] | ((lm >> 4) << 6));
  }
}

// Q4_K/Q5_K tail: re-quantize every sub-block against the stored fp16 d/dmin and 6-bit scales;
// sub-blocks whose scale is 0 keep the levels of the search.
void requantize_k4(const float* x, const uint8_t* d_dmin_scales, uint8_t* L, int nmax) {
  const float d_all = load_f16(d_dmin_scales), dmin_all = load_f16(d_dmin_scales + 2);
  for (int j = 0; j < QK_K / 32; j++) {
    uint8_t sc, m;
    scale_min_k4(j, d_dmin_scales + 4, sc, m);
    const float d = d_all * static_cast<float>(sc);
    if (d == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(m);
    for (int ii = 0; ii < 32; ii++) {
      const int l = nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(l < 0 ? 0 : (l > nmax ? nmax : l));
    }
  }
}

void pack_q4_K_quants(const uint8_t* L, uint8_t* q) {
  for (int j = 0; j < QK_K; j += 64, q += 32)
    for (int l = 0; l < 32; l++) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
}

void pack_q5_K_quants(const uint8_t* L, uint8_t* qh, uint8_t* ql) {
  std::memset(qh, 0, QK_K / 8);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < QK_K; n += 64, ql += 32) {
    for (int j = 0; j < 32; j++) {
      int l1 = L[n + j];
      if (l1 > 15) {
        l1 -= 16;
        qh[j] |= m1;
      }
      int l2 = L[n + j + 32];
      if (l2 > 15) {
        l2 -= 16;
        qh[j] |= m2;
      }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    m1 = static_cast<uint8_t>(m1 << 2);
    m2 = static_cast<uint8_t>(m2 << 2);
  }
}

float sum_squares_256(const float* x) {
  float s = 0;
  for (int l = 0; l < QK_K; l++) s += x[l] * x[l];
  return s;
}

// ---- Q2_K: 84 bytes = scales[16] qs[64] d dmin -----------------------------------------------

void q2_K_finish(const float* x, uint8_t* b, uint8_t* L) {
  const float d_all = load_f16(b + 80), dmin_all = load_f16(b + 82);
  for (int j = 0; j < QK_K / 16; j++) {
    const float d = d_all * static_cast<float>(b[j] & 0xF);
    if (d == 0.0f) continue;
    const float dm = dmin_all * static_cast<float>(b[j] >> 4);
    for (int ii = 0; ii < 16; ii++) {
      const int l = nearest_int((x[16 * j + ii] + dm) / d);
      L[16 * j + ii] = static_cast<uint8_t>(l < 0 ? 0 : (l > 3 ? 3 : l));
    }
  }
  pack_2bit(L, b + 16);
}

void q2_K_ref_block(const float* x, uint8_t* b) {
  uint8_t L[QK_K];
  float weights[QK_K], mins[QK_K / 16], scales[QK_K / 16];
  for (int l = 0; l < QK_K; l++) weights[l] = std::fabs(x[l]);
  search_qkx(QK_K / 16, 16, 3, x, weights, L, mins, scales, -0.5f, 0.1f, 15, true, false);
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < QK_K / 16; j++) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0) {
    const float iscale = 15.f / max_scale;
    for (int j = 0; j < QK_K / 16; j++) b[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
    store_u16(b + 80, f32_to_f16(max_scale / 15.f));
  } else {
    std::memset(b, 0, QK_K / 16);
    store_u16(b + 80, f32_to_f16(0.f));
  }
  if (max_min > 0) {
    const float iscale = 15.f / max_min;
    for (int j = 0; j < QK_K / 16; j++) b[j] = static_cast<uint8_t>(b[j] | (nearest_int(iscale * mins[j]) << 4));
    store_u16(b + 82, f32_to_f16(max_min / 15.f));
  } else {
    store_u16(b + 82, f32_to_f16(0.f));
  }
  q2_K_finish(x, b, L);
}

void q2_K_impl_block(const float* x, uint8_t* b, const float* qw) {
  uint8_t L[QK_K], Ls[QK_K / 16], Lm[QK_K / 16];
  float mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16], weight[QK_K];
  const float sigma2 = sum_squares_256(x) / static_cast<float>(QK_K);
  for (int l = 0; l < QK_K; l++) weight[l] = qw[l] * std::sqrt(sigma2 + x[l] * x[l]);
  for (int j = 0; j < QK_K / 16; j++) {
    float sumw = 0;
    for (int l = 0; l < 16; l++) sumw += weight[16 * j + l];
    sw[j] = sumw;
  }
  search_qkx(QK_K / 16, 16, 3, x, weight, L, mins, scales, -0.9f, 0.05f, 36, false, true);
  const float dm = make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
  const float mm = make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
  store_u16(b + 80, f32_to_f16(dm));
  store_u16(b + 82, f32_to_f16(mm));
  for (int j = 0; j < QK_K / 16; j++) b[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
  q2_K_finish(x, b, L);
}

// ---- Q3_K: 110 bytes = hmask[32] qs[64] scales[12] d ----------------------------------------

// Stores 6-bit scale l (0..63) of sub-block j into the 12 packed scale bytes.
void pack_scale_q3(int j, int l, uint8_t* s) {
  if (j < 8) s[j] = static_cast<uint8_t>(l & 0xF);
  else s[j - 8] = static_cast<uint8_t>(s[j - 8] | ((l & 0xF) << 4));
  l >>= 4;
  s[j % 4 + 8] = static_cast<uint8_t>(s[j % 4 + 8] | (l << (2 * (j / 4))));
}

inline int8_t unpack_scale_q3(int j, const uint8_t* s) {
  int8_t sc = static_cast<int8_t>(j < 8 ? s[j] & 0xF : s[j - 8] >> 4);
  return static_cast<int8_t>((sc | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
}

void q3_K_finish(const float* x, uint8_t* b, int8_t* L) {
  const float d_all = load_f16(b + 108);
  for (int j = 0; j < QK_K / 16; j++) {
    const float d = d_all * static_cast<float>(unpack_scale_q3(j, b + 96));
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ii++) {
      const int l = nearest_int(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>((l < -4 ? -4 : (l > 3 ? 3 : l)) + 4);
    }
  }
  uint8_t* hmask = b;
  std::memset(hmask, 0, QK_K / 8);
  for (int j = 0; j < QK_K; j++) {
    if (L[j] > 3) {
      hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1 << (j / 32)));
      L[j] = static_cast<int8_t>(L[j] - 4);
    }
  }
  pack_2bit(L, b + 32);
}

void q3_K_ref_block(const float* x, uint8_t* b) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < QK_K / 16; j++) {
    scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
    const float scale = std::fabs(scales[j]);
    if (scale > amax) {
      amax = scale;
      max_scale = scales[j];
    }
  }
  std::memset(b + 96, 0, 12);
  if (max_scale != 0.0f) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < QK_K / 16; j++) {
      int8_t l = static_cast<int8_t>(nearest_int(iscale * scales[j]));
      l = static_cast<int8_t>((l < -32 ? -32 : (l > 31 ? 31 : l)) + 32);
      pack_scale_q3(j, l, b + 96);
    }
    store_u16(b + 108, f32_to_f16(1 / iscale));
  } else {
    store_u16(b + 108, f32_to_f16(0.f));
  }
  q3_K_finish(x, b, L);
}

void q3_K_impl_block(const float* x, uint8_t* b, const float* qw) {
  int8_t L[QK_K], Ls[QK_K / 16];
  float scales[QK_K / 16], weight[QK_K], sw[QK_K / 16];
  const float sigma2 = 2 * sum_squares_256(x) / static_cast<float>(QK_K);
  for (int l = 0; l < QK_K; l++) weight[l] = qw[l] * std::sqrt(sigma2 + x[l] * x[l]);
  for (int j = 0; j < QK_K / 16; j++) {
    float sumw = 0;
    for (int l = 0; l < 16; l++) sumw += weight[16 * j + l];
    sw[j] = sumw;
  }
  search_qx(QK_K / 16, 16, 4, x, weight, L, scales);
  std::memset(b + 96, 0, 12);
  const float d_block = make_qx_quants(QK_K / 16, 32, scales, Ls, sw);
  for (int j = 0; j < QK_K / 16; j++) pack_scale_q3(j, Ls[j], b + 96);
  store_u16(b + 108, f32_to_f16(d_block));
  q3_K_finish(x, b, L);
}

// ---- Q4_K / Q5_K: d dmin scales[12] (qh[32]) qs[128] ------------------------------------------

// Q4_K/Q5_K rows are searched two super-blocks (16 sub-blocks) at a time, which fills the lanes
// of the AVX2 group search twice over; blocks stay independent.
constexpr size_t kK4Pair = 2;

// No imatrix: sub-block weights av_x + |x| (av_x = rms of the sub-block), make_qkx2_quants.
template <int kNmax>
void k4_ref_search(const float* x, size_t blocks, uint8_t* L, float* mins, float* scales) {
  float weights[QK_K * kK4Pair];
  for (size_t j = 0; j < blocks * QK_K / 32; j++) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.f);
    for (int l = 0; l < 32; l++) weights[32 * j + l] = av_x + std::fabs(xs[l]);
  }
  const int groups = static_cast<int>(blocks * QK_K / 32);
  if (kNmax == 15) search_qkx(groups, 32, 15, x, weights, L, mins, scales, -1.f, 0.1f, 20, false, false);
  else search_qkx(groups, 32, 31, x, weights, L, mins, scales, -0.5f, 0.1f, 15, false, false);
}

// Fills d, dmin and the 12 scale bytes of one block (same offsets in Q4_K and Q5_K), then
// re-quantizes L against them.
template <int kNmax>
void k4_ref_finish(const float* x, uint8_t* b, uint8_t* L, const float* mins, const float* scales) {
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < QK_K / 32; j++) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < QK_K / 32; j++) {
    uint8_t ls = static_cast<uint8_t>(nearest_int(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(nearest_int(inv_min * mins[j]));
    ls = ls < 63 ? ls : 63;
    lm = lm < 63 ? lm : 63;
    pack_scale_min_k4(j, ls, lm, b + 4);
  }
  store_u16(b, f32_to_f16(max_scale / 63.f));
  store_u16(b + 2, f32_to_f16(max_min / 63.f));
  requantize_k4(x, b, L, kNmax);
}

// With imatrix: weights qw * sqrt(sigma2 + x^2), sigma2 = 2 * mean x^2 of the super-block,
// make_qkx3_quants; sw = per-sub-block weight sums.
template <int kNmax>
void k4_impl_search(const float* x, const float* qw, size_t blocks, uint8_t* L, float* mins, float* scales, float* sw) {
  float weights[QK_K * kK4Pair];
  for (size_t i = 0; i < blocks; i++) {
    const float* xb = x + QK_K * i;
    const float sigma2 = 2 * sum_squares_256(xb) / static_cast<float>(QK_K);
    for (int l = 0; l < QK_K; l++) weights[QK_K * i + l] = qw[QK_K * i + l] * std::sqrt(sigma2 + xb[l] * xb[l]);
  }
  for (size_t j = 0; j < blocks * QK_K / 32; j++) {
    float sumw = 0;
    for (int l = 0; l < 32; l++) sumw += weights[32 * j + l];
    sw[j] = sumw;
  }
  search_qkx(static_cast<int>(blocks * QK_K / 32), 32, kNmax, x, weights, L, mins, scales, -0.9f, 0.05f, 36, false, true);
}

template <int kNmax>
void k4_impl_finish(const float* x, uint8_t* b, uint8_t* L, float* mins, float* scales, const float* sw) {
  uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
  const float d_block = make_qp_quants(QK_K / 32, 63, scales, Ls, sw);
  const float m_block = make_qp_quants(QK_K / 32, 63, mins, Lm, sw);
  for (int j = 0; j < QK_K / 32; j++) {
    uint8_t ls = Ls[j], lm = Lm[j];
    if (kNmax == 31) {  // Q5_K's _impl clamps to 63 here; Q4_K's does not
      ls = ls < 63 ? ls : 63;
      lm = lm < 63 ? lm : 63;
    }
    pack_scale_min_k4(j, ls, lm, b + 4);
  }
  store_u16(b, f32_to_f16(d_block));
  store_u16(b + 2, f32_to_f16(m_block));
  requantize_k4(x, b, L, kNmax);
}

template <int kNmax>
void quantize_row_k4(const float* x, uint8_t* y, size_t n, const float* qw) {
  constexpr size_t kBytes = kNmax == 15 ? kQ4_KBytes : kQ5_KBytes;
  constexpr int kSub = QK_K / 32;
  uint8_t L[QK_K * kK4Pair];
  float mins[kSub * kK4Pair], scales[kSub * kK4Pair], sw[kSub * kK4Pair];
  const size_t nb = n / QK_K;
  for (size_t i0 = 0; i0 < nb; i0 += kK4Pair) {
    const size_t blocks = std::min(kK4Pair, nb - i0);
    const float* xp = x + QK_K * i0;
    if (qw) k4_impl_search<kNmax>(xp, qw + QK_K * i0, blocks, L, mins, scales, sw);
    else k4_ref_search<kNmax>(xp, blocks, L, mins, scales);
    for (size_t i = 0; i < blocks; i++) {
      uint8_t* b = y + kBytes * (i0 + i);
      uint8_t* Lb = L + QK_K * i;
      const size_t s = kSub * i;
      if (qw) k4_impl_finish<kNmax>(xp + QK_K * i, b, Lb, mins + s, scales + s, sw + s);
      else k4_ref_finish<kNmax>(xp + QK_K * i, b, Lb, mins + s, scales + s);
      if (kNmax == 15) pack_q4_K_quants(Lb, b + 16);
      else pack_q5_K_quants(Lb, b + 16, b + 48);
    }
  }
}

// ---- Q6_K: 210 bytes = ql[128] qh[64] scales[16] d ------------------------------------------

void q6_K_block(const float* x, uint8_t* b, const float* qw) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  search_qx(QK_K / 16, 16, 32, x, qw, L, scales);
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < QK_K / 16; ib++) {
    const float scale = scales[ib];
    const float abs_scale = std::fabs(scale);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scale;
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(b, 0, kQ6_KBytes);
    store_u16(b + 208, f32_to_f16(0.f));
    return;
  }
  const float iscale = -128.f / max_scale;
  store_u16(b + 208, f32_to_f16(1 / iscale));
  int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
  for (int ib = 0; ib < QK_K / 16; ib++) {
    const int l = nearest_int(iscale * scales[ib]);
    sc[ib] = static_cast<int8_t>(l < 127 ? l : 127);
  }
  const float d_all = load_f16(b + 208);
  for (int j = 0; j < QK_K / 16; j++) {
    const float d = d_all * static_cast<float>(sc[j]);
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ii++) {
      const int l = nearest_int(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>((l < -32 ? -32 : (l > 31 ? 31 : l)) + 32);
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; l++) {
      const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
      const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
      ql[l] = static_cast<uint8_t>(q1 | (q3 << 4));
      ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
      qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                   ((L[j + l + 96] >> 4) << 6));
    }
  }
}

}  // namespace

// ---- rows ---------------------------------------------------------------------------------

void quantize_row_q2_K(const float* x, uint8_t* y, size_t n, const float* qw) {
  for (size_t i = 0; i < n / QK_K; i++, x += QK_K, y += kQ2_KBytes) {
    if (qw) q2_K_impl_block(x, y, qw + QK_K * i);
    else q2_K_ref_block(x, y);
  }
}

void quantize_row_q3_K(const float* x, uint8_t* y, size_t n, const float* qw) {
  for (size_t i = 0; i < n / QK_K; i++, x += QK_K, y += kQ3_KBytes) {
    if (qw) q3_K_impl_block(x, y, qw + QK_K * i);
    else q3_K_ref_block(x, y);
  }
}

void quantize_row_q4_K(const float* x, uint8_t* y, size_t n, const float* qw) { quantize_row_k4<15>(x, y, n, qw); }

void quantize_row_q5_K(const float* x, uint8_t* y, size_t n, const float* qw) { quantize_row_k4<31>(x, y, n, qw); }

void quantize_row_q6_K(const float* x, uint8_t* y, size_t n, const float* qw) {
  for (size_t i = 0; i < n / QK_K; i++, x += QK_K, y += kQ6_KBytes) q6_K_block(x, y, qw ? qw + QK_K * i : nullptr);
}

// ---- dequantizers ---------------------------------------------------------------------------

void dequantize_row_q2_K(const uint8_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n / QK_K; i++, x += kQ2_KBytes) {
    const float d = load_f16(x + 80), min = load_f16(x + 82);
    const uint8_t* q = x + 16;
    int is = 0;
    for (int h = 0; h < QK_K; h += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; half++) {
          const uint8_t sc = x[is++];
          const float dl = d * static_cast<float>(sc & 0xF), ml = min * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; l++)
            *y++ = dl * static_cast<float>(static_cast<int8_t>((q[l + 16 * half] >> shift) & 3)) - ml;
        }
      }
    }
  }
}

void dequantize_row_q3_K(const uint8_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n / QK_K; i++, x += kQ3_KBytes) {
    const float d_all = load_f16(x + 108);
    const uint8_t* q = x + 32;
    const uint8_t* hm = x;
    uint8_t m = 1;
    int is = 0;
    for (int h = 0; h < QK_K; h += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, m = static_cast<uint8_t>(m << 1)) {
        for (int half = 0; half < 2; half++) {
          const float dl = d_all * static_cast<float>(unpack_scale_q3(is++, x + 96));
          for (int l = 16 * half; l < 16 * half + 16; l++) {
            const int v = static_cast<int8_t>((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

void dequantize_row_q4_K(const uint8_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n / QK_K; i++, x += kQ4_KBytes) {
    const float d = load_f16(x), min = load_f16(x + 2);
    const uint8_t* q = x + 16;
    for (int is = 0; is < QK_K / 32; is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, x + 4, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
      scale_min_k4(is + 1, x + 4, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; l++) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; l++) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_row_q5_K(const uint8_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n / QK_K; i++, x += kQ5_KBytes) {
    const float d = load_f16(x), min = load_f16(x + 2);
    const uint8_t* qh = x + 16;
    const uint8_t* ql = x + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < QK_K / 32; is += 2, ql += 32) {
      uint8_t sc, m;
      scale_min_k4(is, x + 4, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = min * static_cast<float>(m);
      scale_min_k4(is + 1, x + 4, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; l++) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; l++) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

void dequantize_row_q6_K(const uint8_t* x, float* y, size_t n) {
  for (size_t i = 0; i < n / QK_K; i++, x += kQ6_KBytes) {
    const float d = load_f16(x + 208);
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    for (int h = 0; h < QK_K; h += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; l++) {
        const int is = l / 16;
        const int q1 = static_cast<int8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace ggml
}  // namespace deepcast
