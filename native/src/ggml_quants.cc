// Legacy 32-element ggml types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the type table, row dispatch and
// the N-API exports ggmlQuantize / ggmlDequantize / ggmlRowBytes.
// Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a): quantize_row_q*_ref,
// quantize_row_q*_impl and dequantize_row_q*; see ggml_quants.h for the float rules.
#include "ggml_quants.h"
#include "ggml_iq34_tq.h"
#include "ggml_iq2.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <string>

#include "cast.h"
#include "cpu.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace ggml {

namespace {

const TypeTraits kTypes[] = {
    {kF32, "f32", 1, 4, false},        {kF16, "f16", 1, 2, false},
    {kQ4_0, "q4_0", QK, kQ4_0Bytes, false}, {kQ4_1, "q4_1", QK, kQ4_1Bytes, false},
    {kQ5_0, "q5_0", QK, kQ5_0Bytes, false}, {kQ5_1, "q5_1", QK, kQ5_1Bytes, false},
    {kQ8_0, "q8_0", QK, kQ8_0Bytes, false}, {kQ2_K, "q2_K", QK_K, kQ2_KBytes, true},
    {kQ3_K, "q3_K", QK_K, kQ3_KBytes, true}, {kQ4_K, "q4_K", QK_K, kQ4_KBytes, true},
    {kQ5_K, "q5_K", QK_K, kQ5_KBytes, true}, {kQ6_K, "q6_K", QK_K, kQ6_KBytes, true},
    {kBF16, "bf16", 1, 2, false},
    {kIQ3_XXS, "iq3_xxs", QK_K, kIQ3_XXSBytes, false}, {kIQ3_S, "iq3_s", QK_K, kIQ3_SBytes, false},
    {kIQ4_NL, "iq4_nl", QK, kIQ4_NLBytes, false}, {kIQ4_XS, "iq4_xs", QK_K, kIQ4_XSBytes, false},
    {kTQ1_0, "tq1_0", QK_K, kTQ1_0Bytes, false}, {kTQ2_0, "tq2_0", QK_K, kTQ2_0Bytes, false},
    {kIQ2_XXS, "iq2_xxs", QK_K, kIQ2_XXSBytes, false}, {kIQ2_XS, "iq2_xs", QK_K, kIQ2_XSBytes, false},
    {kIQ2_S, "iq2_s", QK_K, kIQ2_SBytes, false}, {kIQ1_S, "iq1_s", QK_K, kIQ1_SBytes, false},
    {kIQ1_M, "iq1_m", QK_K, kIQ1_MBytes, false},
    {kMXFP4, "mxfp4", QK, kMXFP4Bytes, false},
};

// Clamp used by the legacy _ref paths: MIN(nmax, (int8_t)(v)) with C's float -> int8 narrowing.
inline int min_i8(int nmax, float v) {
  const int q = static_cast<int8_t>(trunc_i32(v));
  return q < nmax ? q : nmax;
}

// Sum of x^2 over the whole row, divided by its length (the legacy _impl sigma2).
float row_sigma2(const float* x, size_t n) {
  float sum_x2 = 0;
  for (size_t j = 0; j < n; j++) sum_x2 += x[j] * x[j];
  return sum_x2 / static_cast<float>(static_cast<int64_t>(n));
}

// The _impl paths search 16 blocks at a time (one call of the group search).
constexpr size_t kBatch = 16;

void batch_weights(const float* xb, const float* qw, float sigma2, size_t count, float* weight) {
  for (size_t j = 0; j < count; j++) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
}

void pack_q5_low_high(const uint8_t* L, uint8_t* qs, uint8_t* qh_out) {
  uint32_t qh = 0;
  for (int j = 0; j < QK / 2; j++) {
    const uint8_t a = L[j], b = L[j + QK / 2];
    qs[j] = static_cast<uint8_t>((a & 0x0F) | ((b & 0x0F) << 4));
    qh |= ((a & 0x10u) >> 4) << j;
    qh |= ((b & 0x10u) >> 4) << (j + QK / 2);
  }
  std::memcpy(qh_out, &qh, 4);
}

// ---- Q4_0 / Q5_0: symmetric, d = signed absmax / -2^(bits-1) -------------------------------

template <int kBits>
void ref_symmetric_block(const float* x, uint8_t* b) {
  constexpr int kHalf = 1 << (kBits - 1);
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < QK; j++) {
    const float v = x[j];
    if (amax < std::fabs(v)) {
      amax = std::fabs(v);
      max = v;
    }
  }
  const float d = max / static_cast<float>(-kHalf);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(b, f32_to_f16(d));
  uint8_t L[QK];
  for (int j = 0; j < QK; j++)
    L[j] = static_cast<uint8_t>(min_i8(2 * kHalf - 1, x[j] * id + (static_cast<float>(kHalf) + 0.5f)));
  if (kBits == 4) {
    for (int j = 0; j < QK / 2; j++) b[2 + j] = static_cast<uint8_t>(L[j] | (L[j + QK / 2] << 4));
  } else {
    pack_q5_low_high(L, b + 6, b + 2);
  }
}

template <int kBits>
void impl_symmetric_row(const float* x, uint8_t* y, size_t n, const float* qw) {
  constexpr int kHalf = 1 << (kBits - 1);
  constexpr size_t kBytes = kBits == 4 ? kQ4_0Bytes : kQ5_0Bytes;
  const float sigma2 = row_sigma2(x, n);
  float weight[QK * kBatch], d[kBatch];
  int8_t Lb[QK * kBatch];
  const size_t nb = n / QK;
  for (size_t ib0 = 0; ib0 < nb; ib0 += kBatch) {
    const size_t count = std::min(kBatch, nb - ib0);
    batch_weights(x + QK * ib0, qw + QK * ib0, sigma2, QK * count, weight);
    search_qx(static_cast<int>(count), QK, kHalf, x + QK * ib0, weight, Lb, d);
    for (size_t k = 0; k < count; k++) {
      uint8_t* b = y + kBytes * (ib0 + k);
      const int8_t* L = Lb + QK * k;
      store_u16(b, f32_to_f16(d[k]));
      if (kBits == 4) {
        for (int j = 0; j < QK / 2; j++) b[2 + j] = static_cast<uint8_t>(L[j] | (L[j + QK / 2] << 4));
      } else {
        uint8_t U[QK];
        for (int j = 0; j < QK; j++) U[j] = static_cast<uint8_t>(L[j]);
        pack_q5_low_high(U, b + 6, b + 2);
      }
    }
  }
}

// ---- Q4_1 / Q5_1: asymmetric, d = (max - min) / (2^bits - 1), m = min -----------------------

template <int kBits>
void ref_asymmetric_block(const float* x, uint8_t* b) {
  constexpr int kMax = (1 << kBits) - 1;
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < QK; j++) {
    const float v = x[j];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const float d = (max - min) / static_cast<float>(kMax);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(b, f32_to_f16(d));
  store_u16(b + 2, f32_to_f16(min));
  uint8_t L[QK];
  for (int j = 0; j < QK; j++) {
    const float v = (x[j] - min) * id + 0.5f;
    // Q4_1 clamps through int8 and MIN(15); Q5_1 narrows straight to uint8 with no clamp.
    L[j] = kBits == 4 ? static_cast<uint8_t>(min_i8(kMax, v)) : static_cast<uint8_t>(trunc_i32(v));
  }
  if (kBits == 4) {
    for (int j = 0; j < QK / 2; j++) b[4 + j] = static_cast<uint8_t>(L[j] | (L[j + QK / 2] << 4));
  } else {
    pack_q5_low_high(L, b + 8, b + 4);
  }
}

template <int kBits>
void impl_asymmetric_row(const float* x, uint8_t* y, size_t n, const float* qw) {
  constexpr int kMax = (1 << kBits) - 1;
  constexpr size_t kBytes = kBits == 4 ? kQ4_1Bytes : kQ5_1Bytes;
  const float sigma2 = row_sigma2(x, n);
  float weight[QK * kBatch], d[kBatch], min[kBatch];
  uint8_t Lb[QK * kBatch];
  const size_t nb = n / QK;
  for (size_t ib0 = 0; ib0 < nb; ib0 += kBatch) {
    const size_t count = std::min(kBatch, nb - ib0);
    batch_weights(x + QK * ib0, qw + QK * ib0, sigma2, QK * count, weight);
    search_qkx(static_cast<int>(count), QK, kMax, x + QK * ib0, weight, Lb, min, d, -0.9f, 0.05f, 36, false, true);
    for (size_t k = 0; k < count; k++) {
      uint8_t* b = y + kBytes * (ib0 + k);
      const uint8_t* L = Lb + QK * k;
      store_u16(b, f32_to_f16(d[k]));
      store_u16(b + 2, f32_to_f16(-min[k]));
      if (kBits == 4) {
        for (int j = 0; j < QK / 2; j++) b[4 + j] = static_cast<uint8_t>(L[j] | (L[j + QK / 2] << 4));
      } else {
        pack_q5_low_high(L, b + 8, b + 4);
      }
    }
  }
}

template <void (*Block)(const float*, uint8_t*), size_t kBytes>
void ref_row(const float* x, uint8_t* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++) Block(x + QK * ib, y + kBytes * ib);
}

}  // namespace

// ---- legacy rows ----------------------------------------------------------------------------

void quantize_block_q4_0_ref(const float* x, uint8_t* y) { ref_symmetric_block<4>(x, y); }

void quantize_row_q4_0(const float* x, uint8_t* y, size_t n, const float* qw) {
  if (qw) impl_symmetric_row<4>(x, y, n, qw);
#if defined(__x86_64__)
  else if (use_avx2()) quantize_row_q4_0_avx2(x, y, n);
#endif
  else ref_row<ref_symmetric_block<4>, kQ4_0Bytes>(x, y, n);
}
void quantize_row_q5_0(const float* x, uint8_t* y, size_t n, const float* qw) {
  if (qw) impl_symmetric_row<5>(x, y, n, qw);
  else ref_row<ref_symmetric_block<5>, kQ5_0Bytes>(x, y, n);
}
void quantize_row_q4_1(const float* x, uint8_t* y, size_t n, const float* qw) {
  if (qw) impl_asymmetric_row<4>(x, y, n, qw);
  else ref_row<ref_asymmetric_block<4>, kQ4_1Bytes>(x, y, n);
}
void quantize_row_q5_1(const float* x, uint8_t* y, size_t n, const float* qw) {
  if (qw) impl_asymmetric_row<5>(x, y, n, qw);
  else ref_row<ref_asymmetric_block<5>, kQ5_1Bytes>(x, y, n);
}

void quantize_block_q8_0_ref(const float* x, uint8_t* y) {
  float amax = 0.0f;
  for (int j = 0; j < QK; j++) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(y, f32_to_f16(d));
  for (int j = 0; j < QK; j++) y[2 + j] = static_cast<uint8_t>(trunc_i32(std::round(x[j] * id)));
}

// Q8_0 ignores the imatrix (quantize_q8_0 always calls the _ref row).
void quantize_row_q8_0(const float* x, uint8_t* y, size_t n) {
#if defined(__x86_64__)
  if (use_avx2()) return quantize_row_q8_0_avx2(x, y, n);
#endif
  for (size_t ib = 0; ib < n / QK; ib++, x += QK, y += kQ8_0Bytes) quantize_block_q8_0_ref(x, y);
}

void dequantize_row_q4_0(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kQ4_0Bytes, y += QK) {
    const float d = load_f16(x);
    for (int j = 0; j < QK / 2; j++) {
      y[j] = static_cast<float>((x[2 + j] & 0x0F) - 8) * d;
      y[j + QK / 2] = static_cast<float>((x[2 + j] >> 4) - 8) * d;
    }
  }
}

void dequantize_row_q4_1(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kQ4_1Bytes, y += QK) {
    const float d = load_f16(x), m = load_f16(x + 2);
    for (int j = 0; j < QK / 2; j++) {
      y[j] = static_cast<float>(x[4 + j] & 0x0F) * d + m;
      y[j + QK / 2] = static_cast<float>(x[4 + j] >> 4) * d + m;
    }
  }
}

void dequantize_row_q5_0(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kQ5_0Bytes, y += QK) {
    const float d = load_f16(x);
    uint32_t qh;
    std::memcpy(&qh, x + 2, 4);
    for (int j = 0; j < QK / 2; j++) {
      const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
      y[j] = static_cast<float>(((x[6 + j] & 0x0F) | h0) - 16) * d;
      y[j + QK / 2] = static_cast<float>(((x[6 + j] >> 4) | h1) - 16) * d;
    }
  }
}

void dequantize_row_q5_1(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kQ5_1Bytes, y += QK) {
    const float d = load_f16(x), m = load_f16(x + 2);
    uint32_t qh;
    std::memcpy(&qh, x + 4, 4);
    for (int j = 0; j < QK / 2; j++) {
      const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
      y[j] = static_cast<float>((x[8 + j] & 0x0F) | h0) * d + m;
      y[j + QK / 2] = static_cast<float>((x[8 + j] >> 4) | h1) * d + m;
    }
  }
}

void dequantize_row_q8_0(const uint8_t* x, float* y, size_t n) {
  for (size_t ib = 0; ib < n / QK; ib++, x += kQ8_0Bytes, y += QK) {
    const float d = load_f16(x);
    for (int j = 0; j < QK; j++) y[j] = static_cast<float>(static_cast<int8_t>(x[2 + j])) * d;
  }
}

// ---- table and dispatch ---------------------------------------------------------------------

namespace {

// F16/BF16 rows through cast.h's converters (AVX2 when active), into y at any alignment.
void f16_row(const float* x, uint8_t* y, size_t n, void (*convert)(const float*, uint16_t*, size_t)) {
  if (reinterpret_cast<uintptr_t>(y) % 2 == 0) return convert(x, reinterpret_cast<uint16_t*>(y), n);
  uint16_t buf[256];
  for (size_t i = 0; i < n; i += 256) {
    const size_t m = std::min<size_t>(256, n - i);
    convert(x + i, buf, m);
    std::memcpy(y + 2 * i, buf, 2 * m);
  }
}

}  // namespace

const TypeTraits* type_traits(int id) {
  for (const auto& t : kTypes)
    if (t.id == id) return &t;
  return nullptr;
}

size_t row_size(int id, size_t n) {
  const TypeTraits* t = type_traits(id);
  if (!t || n % t->block_size != 0) return 0;
  return n / t->block_size * t->type_size;
}

void quantize_row(int id, const float* x, uint8_t* y, size_t n, const float* qw) {
  switch (id) {
    case kF32: std::memcpy(y, x, n * 4); break;
    case kF16: f16_row(x, y, n, f32_to_f16_n); break;
    case kBF16: f16_row(x, y, n, f32_to_bf16_n); break;
    case kQ4_0: quantize_row_q4_0(x, y, n, qw); break;
    case kQ4_1: quantize_row_q4_1(x, y, n, qw); break;
    case kQ5_0: quantize_row_q5_0(x, y, n, qw); break;
    case kQ5_1: quantize_row_q5_1(x, y, n, qw); break;
    case kQ8_0: quantize_row_q8_0(x, y, n); break;
    case kQ2_K: quantize_row_q2_K(x, y, n, qw); break;
    case kQ3_K: quantize_row_q3_K(x, y, n, qw); break;
    case kQ4_K: quantize_row_q4_K(x, y, n, qw); break;
    case kQ5_K: quantize_row_q5_K(x, y, n, qw); break;
    case kQ6_K: quantize_row_q6_K(x, y, n, qw); break;
    case kIQ3_XXS: quantize_row_iq3_xxs(x, y, n, qw); break;
    case kIQ3_S: quantize_row_iq3_s(x, y, n, qw); break;
    case kIQ4_NL: quantize_row_iq4_nl(x, y, n, qw); break;
    case kIQ4_XS: quantize_row_iq4_xs(x, y, n, qw); break;
    case kTQ1_0: quantize_row_tq1_0(x, y, n); break;  // ggml ignores the imatrix
    case kTQ2_0: quantize_row_tq2_0(x, y, n); break;
    case kIQ2_XXS: quantize_row_iq2_xxs(x, y, n, qw); break;
    case kIQ2_XS: quantize_row_iq2_xs(x, y, n, qw); break;
    case kIQ2_S: quantize_row_iq2_s(x, y, n, qw); break;
    case kIQ1_S: quantize_row_iq1_s(x, y, n, qw); break;
    case kIQ1_M: quantize_row_iq1_m(x, y, n, qw); break;
    default: break;
  }
}

void dequantize_row(int id, const uint8_t* x, float* y, size_t n) {
  switch (id) {
    case kF32: std::memcpy(y, x, n * 4); break;
    case kF16:
      for (size_t i = 0; i < n; i++) y[i] = f16_to_f32(load_u16(x + 2 * i));
      break;
    case kBF16:
      for (size_t i = 0; i < n; i++) y[i] = bf16_to_f32(load_u16(x + 2 * i));
      break;
    case kQ4_0: dequantize_row_q4_0(x, y, n); break;
    case kQ4_1: dequantize_row_q4_1(x, y, n); break;
    case kQ5_0: dequantize_row_q5_0(x, y, n); break;
    case kQ5_1: dequantize_row_q5_1(x, y, n); break;
    case kQ8_0: dequantize_row_q8_0(x, y, n); break;
    case kQ2_K: dequantize_row_q2_K(x, y, n); break;
    case kQ3_K: dequantize_row_q3_K(x, y, n); break;
    case kQ4_K: dequantize_row_q4_K(x, y, n); break;
    case kQ5_K: dequantize_row_q5_K(x, y, n); break;
    case kQ6_K: dequantize_row_q6_K(x, y, n); break;
    case kIQ3_XXS: dequantize_row_iq3_xxs(x, y, n); break;
    case kIQ3_S: dequantize_row_iq3_s(x, y, n); break;
    case kIQ4_NL: dequantize_row_iq4_nl(x, y, n); break;
    case kIQ4_XS: dequantize_row_iq4_xs(x, y, n); break;
    case kTQ1_0: dequantize_row_tq1_0(x, y, n); break;
    case kTQ2_0: dequantize_row_tq2_0(x, y, n); break;
    case kIQ2_XXS: dequantize_row_iq2_xxs(x, y, n); break;
    case kIQ2_XS: dequantize_row_iq2_xs(x, y, n); break;
    case kIQ2_S: dequantize_row_iq2_s(x, y, n); break;
    case kIQ1_S: dequantize_row_iq1_s(x, y, n); break;
    case kIQ1_M: dequantize_row_iq1_m(x, y, n); break;
    case kMXFP4: dequantize_row_mxfp4(x, y, n); break;
    default: break;
  }
}

}  // namespace ggml

// ---- N-API exports --------------------------------------------------------------------------
namespace {

// Each thread gets at least this many values (thread start-up costs more than a tiny slice).
constexpr size_t kMinValuesPerThread = 8192;

bool parse_type(const Napi::CallbackInfo& info, size_t i, const ggml::TypeTraits*& out) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(env, "type: expected a ggml type id").ThrowAsJavaScriptException();
    return false;
  }
  const int id = info[i].As<Napi::Number>().Int32Value();
  out = ggml::type_traits(id);
  return require(env, out != nullptr, "ggml type id " + std::to_string(id) + " is not supported");
}

bool check_shape(Napi::Env env, const ggml::TypeTraits* t, size_t rows, size_t n, size_t& row_bytes) {
  row_bytes = ggml::row_size(t->id, n);
  return require(env, n > 0 && row_bytes != 0,
                 std::string("nPerRow must be a positive multiple of ") + std::to_string(t->block_size) +
                     " for " + t->name + ", got " + std::to_string(n)) &&
         require(env, rows == 0 || n <= SIZE_MAX / 4 / rows, "rows * nPerRow overflows");
}

// ggmlQuantize(type, src: Float32Array, rows, nPerRow, dst: Uint8Array, imatrix: Float32Array | null,
//              threads) -> bytes written. imatrix holds nPerRow weights used for every row.
Napi::Value GgmlQuantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ggml::TypeTraits* t;
  Bytes src, dst, imat;
  size_t rows, n, row_bytes;
  if (!parse_type(info, 0, t) || !get_bytes(info, 1, "src", src) || !get_size(info, 2, "rows", rows) ||
      !get_size(info, 3, "nPerRow", n) || !get_bytes(info, 4, "dst", dst) || !check_shape(env, t, rows, n, row_bytes))
    return env.Undefined();
  const bool has_imatrix = info.Length() > 5 && !info[5].IsNull() && !info[5].IsUndefined();
  if (has_imatrix && !get_bytes(info, 5, "imatrix", imat)) return env.Undefined();
  const int threads = get_threads(info, 6);
  if (!require(env, src.size == rows * n * 4,
               "src has " + std::to_string(src.size) + " bytes, expected " + std::to_string(rows * n * 4)) ||
      !require(env, dst.size == rows * row_bytes,
               "dst has " + std::to_string(dst.size) + " bytes, expected " + std::to_string(rows * row_bytes)) ||
      !require(env, has_imatrix || !ggml::iq2_requires_imatrix(t->id),
               std::string(t->name) + " needs an importance matrix (ggml asserts one)") ||
      !require(env, !has_imatrix || imat.size == n * 4,
               "imatrix has " + std::to_string(imat.size / 4) + " values, expected nPerRow = " + std::to_string(n)) ||
      !require(env, reinterpret_cast<uintptr_t>(src.data) % 4 == 0 &&
                        (!has_imatrix || reinterpret_cast<uintptr_t>(imat.data) % 4 == 0),
               "src/imatrix must be 4-byte aligned"))
    return env.Undefined();
  const float* x = reinterpret_cast<const float*>(src.data);
  const float* qw = has_imatrix ? reinterpret_cast<const float*>(imat.data) : nullptr;
  const int id = t->id;
  // Rows go out in short runs from a counter, not in one fixed share per thread: on a shared machine
  // a thread the system delays does not leave the others idle at the end (the slow IQ types take
  // ~0.1 ms per row). A row's bytes do not depend on which thread quantizes it.
  const size_t min_rows = std::max<size_t>(1, kMinValuesPerThread / n);
  const size_t nt = std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), std::max<size_t>(1, rows / min_rows));
  const size_t grain = std::max<size_t>(1, std::min(min_rows, (rows + 16 * nt - 1) / (16 * nt)));
  std::atomic<size_t> next{0};
  parallel_for(nt, static_cast<int>(nt), 1, [&](size_t, size_t) {
    for (size_t r0; (r0 = next.fetch_add(grain)) < rows;) {
      const size_t r1 = std::min(rows, r0 + grain);
      for (size_t r = r0; r < r1; r++) ggml::quantize_row(id, x + r * n, dst.data + r * row_bytes, n, qw);
    }
  });
  return Napi::Number::New(env, static_cast<double>(rows * row_bytes));
}

// ggmlDequantize(type, src: Uint8Array, rows, nPerRow, dst: Float32Array, threads) -> values written.
Napi::Value GgmlDequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ggml::TypeTraits* t;
  Bytes src, dst;
  size_t rows, n, row_bytes;
  if (!parse_type(info, 0, t) || !get_bytes(info, 1, "src", src) || !get_size(info, 2, "rows", rows) ||
      !get_size(info, 3, "nPerRow", n) || !get_bytes(info, 4, "dst", dst) || !check_shape(env, t, rows, n, row_bytes))
    return env.Undefined();
  const int threads = get_threads(info, 5);
  if (!require(env, src.size == rows * row_bytes,
               "src has " + std::to_string(src.size) + " bytes, expected " + std::to_string(rows * row_bytes)) ||
      !require(env, dst.size == rows * n * 4,
               "dst has " + std::to_string(dst.size) + " bytes, expected " + std::to_string(rows * n * 4)) ||
      !require(env, reinterpret_cast<uintptr_t>(dst.data) % 4 == 0, "dst must be 4-byte aligned"))
    return env.Undefined();
  float* y = reinterpret_cast<float*>(dst.data);
  const int id = t->id;
  parallel_for(rows, threads, std::max<size_t>(1, 4 * kMinValuesPerThread / n), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; r++) ggml::dequantize_row(id, src.data + r * row_bytes, y + r * n, n);
  });
  return Napi::Number::New(env, static_cast<double>(rows * n));
}

// ggmlRowBytes(type, nPerRow) -> bytes of one row (throws when nPerRow is not a multiple of the block).
Napi::Value GgmlRowBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ggml::TypeTraits* t;
  size_t n, row_bytes;
  if (!parse_type(info, 0, t) || !get_size(info, 1, "nPerRow", n) || !check_shape(env, t, 1, n, row_bytes))
    return env.Undefined();
  return Napi::Number::New(env, static_cast<double>(row_bytes));
}

}  // namespace

DEEPCAST_EXPORT("ggmlQuantize", GgmlQuantize);
DEEPCAST_EXPORT("ggmlDequantize", GgmlDequantize);
DEEPCAST_EXPORT("ggmlRowBytes", GgmlRowBytes);

}  // namespace deepcast
