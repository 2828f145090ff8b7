// Element casts: FP8 e4m3fn with 128x128 block scales -> BF16/F32, and F32 <-> BF16/F16.
// Scalar and AVX2 paths give identical bytes: the only rounding float operation is one IEEE f32
// multiply by the scale (no contraction: -ffp-contract=off; the decodes' own multiplies by powers of
// two are exact), and every other rounding is done with integer operations.
#include <immintrin.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "cast.h"
#include "cpu.h"
#include "floats.h"
#include "floats_avx2.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace {

constexpr size_t kBlock = kFp8Block;

// ---- scalar rows --------------------------------------------------------------------------

// Each row kernel returns how many of its codes are e4m3fn's NaN (0x7F, 0xFF): counted on the way,
// so detecting them costs no second pass over the data.
inline bool fp8_is_nan(uint8_t c) { return (c & 0x7F) == 0x7F; }

size_t fp8_row_bf16_scalar(const uint8_t* src, const float* srow, size_t cols, uint16_t* dst) {
  size_t nan = 0;
  for (size_t j = 0; j < cols; j++) {
    nan += fp8_is_nan(src[j]);
    dst[j] = f32_to_bf16(fp8_e4m3fn_to_f32(src[j]) * srow[j / kBlock]);
  }
  return nan;
}

size_t fp8_row_f32_scalar(const uint8_t* src, const float* srow, size_t cols, float* dst, bool bf16_round) {
  size_t nan = 0;
  for (size_t j = 0; j < cols; j++) {
    nan += fp8_is_nan(src[j]);
    float v = fp8_e4m3fn_to_f32(src[j]) * srow[j / kBlock];
    dst[j] = bf16_round ? bf16_to_f32(f32_to_bf16(v)) : v;
  }
  return nan;
}

// ---- AVX2 rows ----------------------------------------------------------------------------
#if defined(__x86_64__)

// 8 FP8 codes (low 8 bytes of the xmm) -> 8 f32, exactly as fp8_e4m3fn_to_f32, built with integer
// operations so that no subnormal float is ever an operand (x86 cores take a slow assist for those):
// exponent+mantissa moved into f32 position with the exponent rebiased (+120), subnormal codes as
// mantissa * 2^-9 (an exact product of normal numbers), NaN codes as sign|0x7FF00000.
DC_AVX2 inline __m256 fp8x8_to_f32(__m128i codes8) {
  const __m256i c = _mm256_cvtepu8_epi32(codes8);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
  const __m256i nonsign = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
  const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(nonsign, 20), _mm256_set1_epi32(120 << 23));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(nonsign, _mm256_set1_epi32(7))), _mm256_set1_ps(0x1p-9f));
  __m256i bits = _mm256_blendv_epi8(normal, _mm256_castps_si256(sub), _mm256_cmpgt_epi32(_mm256_set1_epi32(8), nonsign));
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7FF00000), _mm256_cmpeq_epi32(nonsign, _mm256_set1_epi32(0x7F)));
  return _mm256_castsi256_ps(_mm256_or_si256(bits, sign));
}

// The same for codes that are neither NaN nor of exponent 0 (zero, subnormal), in 4 integer
// operations: the sign-extended code shifted left by 20 has the code's sign in bit 31 and its
// exponent+mantissa in bits 20..26 (the sign copies in between are masked off), and adding 120 to
// the exponent field rebiases it.
DC_AVX2 inline __m256 fp8x8_to_f32_normal(__m128i codes8) {
  const __m256i c = _mm256_slli_epi32(_mm256_cvtepi8_epi32(codes8), 20);
  const __m256i bits = _mm256_and_si256(c, _mm256_set1_epi32(static_cast<int>(0x87F00000u)));
  return _mm256_castsi256_ps(_mm256_add_epi32(bits, _mm256_set1_epi32(120 << 23)));
}

// f32_to_bf16 of lanes that are not NaN, in the upper 16 bits (lower bits zero).
DC_AVX2 inline __m256i bf16_round_number(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
  return _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
}

// Lanes of `codes` (16 bytes) that are e4m3fn NaN codes, as a 16-bit mask.
DC_AVX2 inline unsigned fp8x16_nan_mask(__m128i codes) {
  const __m128i m = _mm_set1_epi8(0x7F);
  return static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(codes, m), m)));
}

// Lanes of `codes` of exponent 0 (zero or subnormal), as a 16-bit mask.
DC_AVX2 inline unsigned fp8x16_exp0_mask(__m128i codes) {
  return static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(codes, _mm_set1_epi8(0x78)), _mm_setzero_si128())));
}

// Both rows run 16 codes at a time. When none of them is a NaN code or of exponent 0 and the block's
// scale is not NaN or infinite, no product can be NaN, so the short forms apply; else the general ones.
DC_AVX2 size_t fp8_row_bf16_avx2(const uint8_t* src, const float* srow, size_t cols, uint16_t* dst) {
  size_t j = 0;
  size_t nan = 0;
  while (j < cols) {
    const size_t block_end = std::min(cols, (j / kBlock + 1) * kBlock);
    const float sf = srow[j / kBlock];
    const bool finite_scale = sf - sf == 0.0f;
    const __m256 s = _mm256_set1_ps(sf);
    for (; j + 16 <= block_end; j += 16) {
      const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
      const unsigned nan_mask = fp8x16_nan_mask(codes);
      if ((nan_mask | fp8x16_exp0_mask(codes)) == 0 && finite_scale) {
        const __m256i lo = _mm256_srli_epi32(bf16_round_number(_mm256_mul_ps(fp8x8_to_f32_normal(codes), s)), 16);
        const __m256i hi = _mm256_srli_epi32(bf16_round_number(_mm256_mul_ps(fp8x8_to_f32_normal(_mm_srli_si128(codes, 8)), s)), 16);
        store_bf16x16(dst + j, lo, hi);
        continue;
      }
      nan += static_cast<size_t>(__builtin_popcount(nan_mask));
      __m256 lo = _mm256_mul_ps(fp8x8_to_f32(codes), s);
      __m256 hi = _mm256_mul_ps(fp8x8_to_f32(_mm_srli_si128(codes, 8)), s);
      store_bf16x16(dst + j, f32x8_to_bf16_lanes(lo), f32x8_to_bf16_lanes(hi));
    }
    for (; j < block_end; j++) {
      nan += fp8_is_nan(src[j]);
      dst[j] = f32_to_bf16(fp8_e4m3fn_to_f32(src[j]) * sf);
    }
  }
  return nan;
}

DC_AVX2 size_t fp8_row_f32_avx2(const uint8_t* src, const float* srow, size_t cols, float* dst, bool bf16_round) {
  size_t j = 0;
  size_t nan = 0;
  while (j < cols) {
    const size_t block_end = std::min(cols, (j / kBlock + 1) * kBlock);
    const float sf = srow[j / kBlock];
    const bool finite_scale = sf - sf == 0.0f;
    const __m256 s = _mm256_set1_ps(sf);
    for (; j + 16 <= block_end; j += 16) {
      const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
      const unsigned nan_mask = fp8x16_nan_mask(codes);
      if ((nan_mask | fp8x16_exp0_mask(codes)) == 0 && finite_scale) {
        __m256 lo = _mm256_mul_ps(fp8x8_to_f32_normal(codes), s);
        __m256 hi = _mm256_mul_ps(fp8x8_to_f32_normal(_mm_srli_si128(codes, 8)), s);
        if (bf16_round) {
          lo = _mm256_castsi256_ps(bf16_round_number(lo));
          hi = _mm256_castsi256_ps(bf16_round_number(hi));
        }
        _mm256_storeu_ps(dst + j, lo);
        _mm256_storeu_ps(dst + j + 8, hi);
        continue;
      }
      nan += static_cast<size_t>(__builtin_popcount(nan_mask));
      for (int h = 0; h < 2; h++) {
        __m256 v = _mm256_mul_ps(fp8x8_to_f32(h ? _mm_srli_si128(codes, 8) : codes), s);
        if (bf16_round) v = _mm256_castsi256_ps(_mm256_slli_epi32(f32x8_to_bf16_lanes(v), 16));
        _mm256_storeu_ps(dst + j + 8 * h, v);
      }
    }
    for (; j < block_end; j++) {
      nan += fp8_is_nan(src[j]);
      float v = fp8_e4m3fn_to_f32(src[j]) * sf;
      dst[j] = bf16_round ? bf16_to_f32(f32_to_bf16(v)) : v;
    }
  }
  return nan;
}

DC_AVX2 void f32_to_bf16_avx2(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    store_bf16x16(dst + i, f32x8_to_bf16_lanes(_mm256_loadu_ps(src + i)),
                  f32x8_to_bf16_lanes(_mm256_loadu_ps(src + i + 8)));
  }
  for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

DC_AVX2 void bf16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; i++) dst[i] = bf16_to_f32(src[i]);
}

// F16C rounds to nearest even like the scalar path; NaN lanes differ (F16C keeps payload), so
// they are patched to ggml's sign|0x7E00.
DC_AVX2 void f32_to_f16_avx2(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(src + i);
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (!_mm256_testz_ps(nan, nan)) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
      for (size_t k = i; k < i + 8; k++)
        if (src[k] != src[k]) dst[k] = f32_to_f16(src[k]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

DC_AVX2 void f16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
#endif

}  // namespace

// ---- row functions for other kernels (cast.h) -------------------------------------------------

size_t fp8_row_to_f32(const uint8_t* src, const float* srow, size_t cols, float* dst, bool bf16_round) {
#if defined(__x86_64__)
  if (use_avx2()) return fp8_row_f32_avx2(src, srow, cols, dst, bf16_round);
#endif
  return fp8_row_f32_scalar(src, srow, cols, dst, bf16_round);
}

size_t fp8_row_to_bf16(const uint8_t* src, const float* srow, size_t cols, uint16_t* dst) {
#if defined(__x86_64__)
  if (use_avx2()) return fp8_row_bf16_avx2(src, srow, cols, dst);
#endif
  return fp8_row_bf16_scalar(src, srow, cols, dst);
}

namespace {
void f32_to_bf16_scalar(const float* s, uint16_t* d, size_t n) { for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]); }
void f32_to_f16_scalar(const float* s, uint16_t* d, size_t n) { for (size_t i = 0; i < n; i++) d[i] = f32_to_f16(s[i]); }
}  // namespace

void f32_to_bf16_n(const float* src, uint16_t* dst, size_t n) {
#if defined(__x86_64__)
  if (use_avx2()) return f32_to_bf16_avx2(src, dst, n);
#endif
  f32_to_bf16_scalar(src, dst, n);
}

void f32_to_f16_n(const float* src, uint16_t* dst, size_t n) {
#if defined(__x86_64__)
  if (use_avx2()) return f32_to_f16_avx2(src, dst, n);
#endif
  f32_to_f16_scalar(src, dst, n);
}

namespace {

// ---- exports ------------------------------------------------------------------------------

struct Fp8Args {
  Bytes src, scale, dst;
  size_t rows = 0, cols = 0, scale_cols = 0;
  int threads = 1;
};

// (src u8[rows*cols], rows, cols, scale f32[ceil(rows/128)*ceil(cols/128)], dst, threads)
bool parse_fp8_args(const Napi::CallbackInfo& info, size_t out_elem, Fp8Args& a) {
  Napi::Env env = info.Env();
  if (!get_bytes(info, 0, "src", a.src) || !get_size(info, 1, "rows", a.rows) ||
      !get_size(info, 2, "cols", a.cols) || !get_bytes(info, 3, "scale", a.scale) ||
      !get_bytes(info, 4, "dst", a.dst))
    return false;
  a.threads = get_threads(info, 5);
  const size_t n = a.rows * a.cols;
  const size_t srows = (a.rows + kBlock - 1) / kBlock;
  a.scale_cols = (a.cols + kBlock - 1) / kBlock;
  return require(env, a.src.size == n, "src has " + std::to_string(a.src.size) + " bytes, expected " + std::to_string(n)) &&
         require(env, a.scale.size == srows * a.scale_cols * 4,
                 "scale has " + std::to_string(a.scale.size / 4) + " values, expected " +
                     std::to_string(srows * a.scale_cols)) &&
         require(env, a.dst.size == n * out_elem, "dst has the wrong size") &&
         require(env, reinterpret_cast<uintptr_t>(a.scale.data) % 4 == 0, "scale must be 4-byte aligned") &&
         require(env, reinterpret_cast<uintptr_t>(a.dst.data) % out_elem == 0, "dst is misaligned");
}

Napi::Value Fp8ToBf16(const Napi::CallbackInfo& info) {
  Fp8Args a;
  if (!parse_fp8_args(info, 2, a)) return info.Env().Undefined();
  const bool avx2 = use_avx2();
  std::atomic<size_t> nan{0};
  parallel_for(a.rows, a.threads, 64, [&](size_t r0, size_t r1) {
    size_t local = 0;
    for (size_t r = r0; r < r1; r++) {
      const uint8_t* s = a.src.data + r * a.cols;
      const float* srow = reinterpret_cast<const float*>(a.scale.data) + (r / kBlock) * a.scale_cols;
      uint16_t* d = reinterpret_cast<uint16_t*>(a.dst.data) + r * a.cols;
#if defined(__x86_64__)
      if (avx2) { local += fp8_row_bf16_avx2(s, srow, a.cols, d); continue; }
#endif
      (void)avx2;
      local += fp8_row_bf16_scalar(s, srow, a.cols, d);
    }
    nan += local;
  });
  return Napi::Number::New(info.Env(), static_cast<double>(nan.load()));
}

// Same arguments plus bf16Round (arg 6): when true, values are rounded through BF16, i.e. exactly
// what a BF16 intermediate checkpoint would hold.
Napi::Value Fp8ToF32(const Napi::CallbackInfo& info) {
  Fp8Args a;
  if (!parse_fp8_args(info, 4, a)) return info.Env().Undefined();
  const bool round = info.Length() > 6 && info[6].ToBoolean().Value();
  const bool avx2 = use_avx2();
  std::atomic<size_t> nan{0};
  parallel_for(a.rows, a.threads, 64, [&](size_t r0, size_t r1) {
    size_t local = 0;
    for (size_t r = r0; r < r1; r++) {
      const uint8_t* s = a.src.data + r * a.cols;
      const float* srow = reinterpret_cast<const float*>(a.scale.data) + (r / kBlock) * a.scale_cols;
      float* d = reinterpret_cast<float*>(a.dst.data) + r * a.cols;
#if defined(__x86_64__)
      if (avx2) { local += fp8_row_f32_avx2(s, srow, a.cols, d, round); continue; }
#endif
      (void)avx2;
      local += fp8_row_f32_scalar(s, srow, a.cols, d, round);
    }
    nan += local;
  });
  return Napi::Number::New(info.Env(), static_cast<double>(nan.load()));
}

// Element-wise casts: (src, dst, threads). Sizes are checked against the element widths.
template <typename In, typename Out, void (*Scalar)(const In*, Out*, size_t), void (*Vector)(const In*, Out*, size_t)>
Napi::Value ElementCast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src, dst;
  if (!get_bytes(info, 0, "src", src) || !get_bytes(info, 1, "dst", dst)) return env.Undefined();
  const int threads = get_threads(info, 2);
  const size_t n = src.size / sizeof(In);
  if (!require(env, src.size % sizeof(In) == 0 && dst.size == n * sizeof(Out), "src/dst sizes do not match") ||
      !require(env, reinterpret_cast<uintptr_t>(src.data) % sizeof(In) == 0 &&
                        reinterpret_cast<uintptr_t>(dst.data) % sizeof(Out) == 0,
               "src/dst are misaligned"))
    return env.Undefined();
  const In* s = reinterpret_cast<const In*>(src.data);
  Out* d = reinterpret_cast<Out*>(dst.data);
  const bool avx2 = use_avx2();
  parallel_for(n, threads, 1 << 16, [&](size_t b, size_t e) {
    if (avx2 && Vector) Vector(s + b, d + b, e - b);
    else Scalar(s + b, d + b, e - b);
  });
  return env.Undefined();
}

void bf16_to_f32_scalar(const uint16_t* s, float* d, size_t n) { for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]); }
void f16_to_f32_scalar(const uint16_t* s, float* d, size_t n) { for (size_t i = 0; i < n; i++) d[i] = f16_to_f32(s[i]); }

#if defined(__x86_64__)
#define VEC(fn) fn
#else
#define VEC(fn) nullptr
#endif

}  // namespace

DEEPCAST_EXPORT("fp8ToBf16", Fp8ToBf16);
DEEPCAST_EXPORT("fp8ToF32", Fp8ToF32);
DEEPCAST_EXPORT("f32ToBf16", (ElementCast<float, uint16_t, f32_to_bf16_scalar, VEC(f32_to_bf16_avx2)>));
DEEPCAST_EXPORT("bf16ToF32", (ElementCast<uint16_t, float, bf16_to_f32_scalar, VEC(bf16_to_f32_avx2)>));
DEEPCAST_EXPORT("f32ToF16", (ElementCast<float, uint16_t, f32_to_f16_scalar, VEC(f32_to_f16_avx2)>));
DEEPCAST_EXPORT("f16ToF32", (ElementCast<uint16_t, float, f16_to_f32_scalar, VEC(f16_to_f32_avx2)>));

}  // namespace deepcast
