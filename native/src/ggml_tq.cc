// TQ1_0 and TQ2_0: ternary weights {-1, 0, 1} times one f16 scale per 256 (BitNet b1.58, TriLMs).
// Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a): quantize_row_tq{1,2}_0_ref
// (quantize_tq*_0 ignore quant_weights) and dequantize_row_tq{1,2}_0. Rounding is lroundf: half
// away from zero, not nearest_int.
#include <cmath>
#include <cstring>

#include "ggml_iq34_tq.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

// d = max |x| over the block; returns 1/d (0 when d is 0) and stores d as f16 at `dst`.
inline float store_absmax(const float* x, uint8_t* dst) {
  float amax = 0.0f;
  for (int j = 0; j < QK_K; j++) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;
  }
  store_u16(dst, f32_to_f16(amax));
  return amax ? 1.0f / amax : 0.0f;
}

// The trit of one value: lroundf(x*id) + 1 in 0..2.
inline int trit(float v, float id) { return static_cast<int>(std::lround(v * id)) + 1; }

// Base-3 digits packed into a byte as a fixed-point fraction of 3^5: ceil(q * 256 / 243).
inline uint8_t pack_trits(uint8_t q) { return static_cast<uint8_t>((static_cast<uint16_t>(q) * 256 + (243 - 1)) / 243); }

}  // namespace

// ---- TQ1_0: { u8 qs[48]; u8 qh[4]; f16 d } = 5 trits per qs byte, 4 per qh byte ---------------

void quantize_row_tq1_0(const float* x, uint8_t* y, size_t n) {
  for (size_t ib = 0; ib < n / QK_K; ib++, x += QK_K, y += kTQ1_0Bytes) {
    const float id = store_absmax(x, y + 52);
    const float* xv = x;
    // qs[0..31]: values m + 32t (t = 0..4) of the first 160; qs[32..47]: m + 16t of the next 80.
    for (int j = 0; j < 32; j++) {
      uint8_t q = 0;
      for (int t = 0; t < 5; t++) q = static_cast<uint8_t>(q * 3 + trit(xv[j + 32 * t], id));
      y[j] = pack_trits(q);
    }
    xv += 160;
    for (int j = 0; j < 16; j++) {
      uint8_t q = 0;
      for (int t = 0; t < 5; t++) q = static_cast<uint8_t>(q * 3 + trit(xv[j + 16 * t], id));
      y[32 + j] = pack_trits(q);
    }
    xv += 80;
    // qh[0..3]: values j + 4t (t = 0..3) of the last 16, the first in the most significant trit.
    for (int j = 0; j < 4; j++) {
      uint8_t q = 0;
      for (int t = 0; t < 4; t++) q = static_cast<uint8_t>(q * 3 + trit(xv[j + 4 * t], id));
      y[48 + j] = pack_trits(static_cast<uint8_t>(q * 3));
    }
  }
}

void dequantize_row_tq1_0(const uint8_t* x, float* y, size_t n) {
  static const uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  // Digit t of a packed byte: multiply by 3^t (mod 256) to bring it to the top, then * 3 >> 8.
  auto digit = [](uint8_t b, uint8_t pow3) {
    const uint8_t q = static_cast<uint8_t>(b * pow3);
    return static_cast<int16_t>((static_cast<uint16_t>(q) * 3) >> 8);
  };
  for (size_t ib = 0; ib < n / QK_K; ib++, x += kTQ1_0Bytes) {
    const float d = load_f16(x + 52);
    for (int t = 0; t < 5; t++)
      for (int m = 0; m < 32; m++) *y++ = static_cast<float>(digit(x[m], kPow3[t]) - 1) * d;
    for (int t = 0; t < 5; t++)
      for (int m = 0; m < 16; m++) *y++ = static_cast<float>(digit(x[32 + m], kPow3[t]) - 1) * d;
    for (int t = 0; t < 4; t++)
      for (int j = 0; j < 4; j++) *y++ = static_cast<float>(digit(x[48 + j], kPow3[t]) - 1) * d;
  }
}

// ---- TQ2_0: { u8 qs[64]; f16 d } = 2 bits per value ------------------------------------------

void quantize_row_tq2_0(const float* x, uint8_t* y, size_t n) {
  for (size_t ib = 0; ib < n / QK_K; ib++, x += QK_K, y += kTQ2_0Bytes) {
    const float id = store_absmax(x, y + 64);
    // Byte j + m of each 32-byte half j holds values m + 32t (t = 0..3) of its 128, at bits 2t.
    for (int j = 0; j < 64; j += 32) {
      for (int m = 0; m < 32; m++) {
        uint8_t q = 0;
        for (int t = 0; t < 4; t++) q = static_cast<uint8_t>(q + ((trit(x[4 * j + m + 32 * t], id) & 3) << (2 * t)));
        y[j + m] = q;
      }
    }
  }
}

void dequantize_row_tq2_0(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK_K; ib++, x += kTQ2_0Bytes) {
    const float d = load_f16(x + 64);
    for (int j = 0; j < 64; j += 32)
      for (int t = 0; t < 4; t++)
        for (int m = 0; m < 32; m++) *y++ = static_cast<float>(((x[j + m] >> (2 * t)) & 3) - 1) * d;
  }
}

}  // namespace ggml
}  // namespace deepcast
