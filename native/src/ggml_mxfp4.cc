// MXFP4 dequantization as ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a) defines it:
// block_mxfp4 = { uint8 e (E8M0); uint8 qs[16] }, element j (< 16) in the low nibble of qs[j],
// element j + 16 in its high nibble; value = kvalues_mxfp4[code] * 2^(e-128) where kvalues are
// twice the e2m1 values and the scale is ggml_e8m0_to_fp32_half (so the product is e2m1 * 2^(e-127)).
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

constexpr int8_t kValuesMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ggml_e8m0_to_fp32_half: 2^(e-128) built from bits; e < 2 gives the float32 subnormals 2^-128
// and 2^-127; 255 is not treated as NaN (gives 2^127), as in ggml.
inline float e8m0_to_f32_half(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e - 1) << 23);
  return f32_from_bits(bits);
}

}  // namespace

void dequantize_row_mxfp4(const uint8_t* x, float* y, size_t n) {
  const size_t nb = n / QK;
  for (size_t i = 0; i < nb; i++) {
    const uint8_t* b = x + i * kMXFP4Bytes;
    const float d = e8m0_to_f32_half(b[0]);
    const uint8_t* qs = b + 1;
    for (int j = 0; j < QK / 2; j++) {
      y[i * QK + j] = static_cast<float>(kValuesMxfp4[qs[j] & 0x0F]) * d;
      y[i * QK + j + QK / 2] = static_cast<float>(kValuesMxfp4[qs[j] >> 4]) * d;
    }
  }
}

}  // namespace ggml
}  // namespace deepcast
