// ggml block quantizers and dequantizers, byte-identical to ggml-base of llama.cpp v0.4.0
// (commit 80fb11a, ggml/src/ggml-quants.c) as built for x86-64 without -march: every float
// operation is a single IEEE float32 op, evaluated in the order ggml writes it, with no FMA
// contraction (binding.gyp compiles with -ffp-contract=off). Do not "simplify" the arithmetic in
// these files: (w*x)*l is not w*(x*l), and a reordered sum chooses different scales.
//
// Which ggml function each path reproduces (what ggml_quantize_chunk calls):
//   no imatrix:   quantize_row_<type>_ref  (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)
//   with imatrix: quantize_row_<type>_impl (Q8_0, F16, BF16, F32 ignore the imatrix)
//   dequantize:   dequantize_row_<type>
//
// Files: ggml_quants.cc (legacy types, dispatch, N-API exports), ggml_legacy_avx2.cc (AVX2 twins
// of the Q8_0 / Q4_0 _ref rows), ggml_kquants.cc (K-quants and the scale searches),
// ggml_quants_simd.cc (the group searches with their AVX2 lane twins).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "floats.h"

namespace deepcast {
namespace ggml {

// ggml type ids (enum ggml_type).
enum TypeId : int {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
  kMXFP4 = 39,
};

constexpr int QK = 32;    // legacy block
constexpr int QK_K = 256; // K-quant super-block

// Bytes per block (ggml's sizeof(block_*)).
constexpr size_t kQ4_0Bytes = 2 + QK / 2;                       // 18
constexpr size_t kQ4_1Bytes = 2 + 2 + QK / 2;                   // 20
constexpr size_t kQ5_0Bytes = 2 + 4 + QK / 2;                   // 22
constexpr size_t kQ5_1Bytes = 2 + 2 + 4 + QK / 2;               // 24
constexpr size_t kQ8_0Bytes = 2 + QK;                           // 34
constexpr size_t kMXFP4Bytes = 1 + QK / 2;                      // 17 (block_mxfp4: e8m0 byte + 16 nibble pairs)
constexpr size_t kQ2_KBytes = QK_K / 16 + QK_K / 4 + 2 + 2;     // 84
constexpr size_t kQ3_KBytes = QK_K / 8 + QK_K / 4 + 12 + 2;     // 110
constexpr size_t kQ4_KBytes = 2 + 2 + 12 + QK_K / 2;            // 144
constexpr size_t kQ5_KBytes = 2 + 2 + 12 + QK_K / 8 + QK_K / 2; // 176
constexpr size_t kQ6_KBytes = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2; // 210
static_assert(kQ2_KBytes == 84 && kQ3_KBytes == 110 && kQ4_KBytes == 144 && kQ5_KBytes == 176 &&
                  kQ6_KBytes == 210,
              "K-quant block sizes");

struct TypeTraits {
  int id;
  const char* name;  // ggml_type_name()
  size_t block_size; // elements per block
  size_t type_size;  // bytes per block
  bool k_quant;
};

// nullptr for a type id this module does not implement.
const TypeTraits* type_traits(int id);
// Bytes of one row of n values; 0 when the type is unknown or n is not a multiple of its block.
size_t row_size(int id, size_t n);

// One row of n values (n a multiple of the block size). imatrix: n importance weights or nullptr.
void quantize_row(int id, const float* x, uint8_t* y, size_t n, const float* imatrix);
void dequantize_row(int id, const uint8_t* x, float* y, size_t n);

// MXFP4 (ggml_mxfp4.cc): dequantize only; deepcast never re-quantizes to it.
void dequantize_row_mxfp4(const uint8_t* x, float* y, size_t n);

// ---- numeric primitives shared by the quantizer files --------------------------------------

constexpr float kGroupMaxEps = 1e-15f;  // GROUP_MAX_EPS

// ggml's nearest_int: round half to even via the 1.5*2^23 trick (float add), then read the bits.
inline int nearest_int(float f) {
  const float v = f + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// C's float -> int conversion exactly as GCC emits it on x86-64 (cvttss2si, 32-bit): truncate
// toward zero; NaN and out-of-range give INT32_MIN. ggml narrows the result to int8/uint8 after.
inline int32_t trunc_i32(float f) {
#if defined(__x86_64__) || defined(__i386__)
  return _mm_cvtt_ss2si(_mm_set_ss(f));
#else
  if (!(f > -2147483904.0f && f < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(f);
#endif
}

inline float fp16_round(float f) { return f16_to_f32(f32_to_f16(f)); }

inline void store_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }

// ---- ggml's scale searches (ggml-quants.c helpers), float32 throughout ----------------------

// make_qx_quants with rmse_type == 1 (the only mode the model quantizers use): symmetric, L in
// [0, 2*nmax). Weights are qw[i], or x[i]*x[i] when qw is null.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, const float* qw);
// make_q3_quants with do_rmse = true (Q3_K ref).
float make_q3_quants(int n, int nmax, const float* x, int8_t* L);
// make_qkx2_quants (x3 = false) and make_qkx3_quants (x3 = true); weights never null here.
// Asymmetric: returns the scale, stores -min in *the_min.
float make_qkx_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                      uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad, bool x3);
// make_qp_quants: quantizes non-negative scales with weights quant_weights.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights);

// The same searches over `groups` consecutive groups of n values (n <= 32): group g is
// x + g*n (weights + g*n), writes L + g*n and scales[g] (and mins[g]). When the AVX2 level is
// active (cpu.h), eight groups run at once, one per vector lane, each lane performing exactly the
// scalar operation sequence of its group (no reduction is reordered), so the bytes are identical.
void search_qkx(int groups, int n, int nmax, const float* x, const float* weights, uint8_t* L, float* mins,
                float* scales, float rmin, float rdelta, int nstep, bool use_mad, bool x3);
void search_qx(int groups, int n, int nmax, const float* x, const float* qw, int8_t* L, float* scales);

// ---- per-type rows (ggml_quants.cc: legacy; ggml_kquants.cc: K-quants) ----------------------

void quantize_row_q4_0(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q4_1(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q5_0(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q5_1(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q8_0(const float* x, uint8_t* y, size_t n);
void quantize_row_q2_K(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q3_K(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q4_K(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q5_K(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_q6_K(const float* x, uint8_t* y, size_t n, const float* qw);

// One block of 32 of quantize_row_q8_0_ref / quantize_row_q4_0_ref (the scalar code; the AVX2 rows
// hand it the blocks they leave, e.g. those holding a NaN or Inf).
void quantize_block_q8_0_ref(const float* x, uint8_t* y);
void quantize_block_q4_0_ref(const float* x, uint8_t* y);
#if defined(__x86_64__)
// ggml_legacy_avx2.cc: the same rows eight blocks at a time; identical bytes (AVX2 CPUs only).
void quantize_row_q8_0_avx2(const float* x, uint8_t* y, size_t n);
void quantize_row_q4_0_avx2(const float* x, uint8_t* y, size_t n);
#endif

void dequantize_row_q4_0(const uint8_t* x, float* y, size_t n);
void dequantize_row_q4_1(const uint8_t* x, float* y, size_t n);
void dequantize_row_q5_0(const uint8_t* x, float* y, size_t n);
void dequantize_row_q5_1(const uint8_t* x, float* y, size_t n);
void dequantize_row_q8_0(const uint8_t* x, float* y, size_t n);
void dequantize_row_q2_K(const uint8_t* x, float* y, size_t n);
void dequantize_row_q3_K(const uint8_t* x, float* y, size_t n);
void dequantize_row_q4_K(const uint8_t* x, float* y, size_t n);
void dequantize_row_q5_K(const uint8_t* x, float* y, size_t n);
void dequantize_row_q6_K(const uint8_t* x, float* y, size_t n);

}  // namespace ggml
}  // namespace deepcast
