// DeepSeek-V4's packed FP4 routed experts (src/formats/fp4.ts): I8 [rows, cols/2], element 2k in the low
// nibble of byte k and 2k+1 in the high one, one E8M0 scale byte per 32 elements of a row.
//  - fp4ToBf16: value = e2m1(code) * 2^(e-127), exact in f32 and in BF16 (code 8 is +0).
//  - fp4ToFp8: DeepSeek's cast_e2m1fn_to_e4m3fn per 128x128 tile: fp8 = e4m3(e2m1 * 2^(e_g - E_max + 6))
//    with E_max the tile's largest scale byte (the tile's E8M0 scale is E_max - 6), refused for a tile
//    where it would not be exact (a group with nonzero codes and e_g < E_max - 14, or E_max < 6).
// Scalar and AVX2 paths give identical bytes: one exact f32 multiply, integer rounding.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>

#include "cpu.h"
#include "floats.h"
#include "floats_avx2.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace {

constexpr size_t kGroup = 32;
constexpr size_t kTile = 128;
constexpr float kFp4[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                            0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// 2^(e-127) for e in 0..254 (e = 0 is the f32 subnormal 2^-127); 255 (NaN) is refused before the cast.
inline float e8m0_to_f32(uint8_t e) {
  return e == 0 ? f32_from_bits(0x00400000u) : f32_from_bits(static_cast<uint32_t>(e) << 23);
}

void fp4_row_bf16_scalar(const uint8_t* src, const uint8_t* srow, size_t cols, uint16_t* dst) {
  for (size_t j = 0; j < cols; j += 2) {
    const float s = e8m0_to_f32(srow[j / kGroup]);
    const uint8_t b = src[j / 2];
    dst[j] = f32_to_bf16(kFp4[b & 0x0F] * s);
    dst[j + 1] = f32_to_bf16(kFp4[b >> 4] * s);
  }
}

#if defined(__x86_64__)
// 8 codes (low 8 bytes, one per byte) -> their e2m1 values.
DC_AVX2 inline __m256 fp4x8_to_f32(__m128i codes8) {
  const __m256i c = _mm256_cvtepu8_epi32(codes8);
  const __m256 pos = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256 neg = _mm256_setr_ps(0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f);
  const __m256 p = _mm256_permutevar8x32_ps(pos, c);  // uses the low 3 bits
  const __m256 n = _mm256_permutevar8x32_ps(neg, c);
  const __m256i is_neg = _mm256_slli_epi32(c, 28);  // bit 3 -> sign bit, the blend mask
  return _mm256_blendv_ps(p, n, _mm256_castsi256_ps(is_neg));
}

DC_AVX2 void fp4_row_bf16_avx2(const uint8_t* src, const uint8_t* srow, size_t cols, uint16_t* dst) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  size_t j = 0;
  for (; j + kGroup <= cols; j += kGroup) {
    const __m256 s = _mm256_set1_ps(e8m0_to_f32(srow[j / kGroup]));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j / 2));
    const __m128i lo = _mm_and_si128(b, low4);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    const __m128i c0 = _mm_unpacklo_epi8(lo, hi);  // elements 0..15 in order
    const __m128i c1 = _mm_unpackhi_epi8(lo, hi);  // elements 16..31
    const __m256 v0 = _mm256_mul_ps(fp4x8_to_f32(c0), s);
    const __m256 v1 = _mm256_mul_ps(fp4x8_to_f32(_mm_srli_si128(c0, 8)), s);
    const __m256 v2 = _mm256_mul_ps(fp4x8_to_f32(c1), s);
    const __m256 v3 = _mm256_mul_ps(fp4x8_to_f32(_mm_srli_si128(c1, 8)), s);
    store_bf16x16(dst + j, f32x8_to_bf16_lanes(v0), f32x8_to_bf16_lanes(v1));
    store_bf16x16(dst + j + 16, f32x8_to_bf16_lanes(v2), f32x8_to_bf16_lanes(v3));
  }
  if (j < cols) fp4_row_bf16_scalar(src + j / 2, srow + j / kGroup, cols - j, dst + j);
}
#endif

// e4m3fn code of e2m1(code) * 2^k for k in [-8, 6] (exact: the lossless range of the cast).
struct Fp8Table {
  uint8_t code[16][15];
  Fp8Table() {
    for (int c = 0; c < 16; c++) {
      for (int k = -8; k <= 6; k++) {
        const double v = static_cast<double>(kFp4[c & 7]) * std::ldexp(1.0, k);
        uint8_t best = 0;
        for (int q = 0; q < 0x7F; q++) {
          const double f = static_cast<double>(fp8_e4m3fn_to_f32(static_cast<uint8_t>(q)));
          if (f == v) { best = static_cast<uint8_t>(q); break; }
        }
        code[c][k + 8] = static_cast<uint8_t>(((c & 8) && best != 0 ? 0x80 : 0) | best);
      }
    }
  }
};
const Fp8Table kFp8Table;

// One 128x128 tile: returns false (writing nothing more) when the cast would not be exact.
bool fp4_tile_fp8(const uint8_t* src, const uint8_t* scale, size_t rows, size_t cols, size_t tr, size_t tc, uint8_t* dst) {
  const size_t groups = cols / kGroup;
  const size_t r0 = tr * kTile, r1 = std::min(rows, r0 + kTile);
  const size_t g0 = tc * (kTile / kGroup), g1 = std::min(groups, g0 + kTile / kGroup);
  int emax = 0;
  for (size_t r = r0; r < r1; r++)
    for (size_t g = g0; g < g1; g++) emax = std::max<int>(emax, scale[r * groups + g]);
  if (emax < 6) return false;
  for (size_t r = r0; r < r1; r++) {
    for (size_t g = g0; g < g1; g++) {
      const int k = static_cast<int>(scale[r * groups + g]) - emax + 6;
      const uint8_t* b = src + (r * cols + g * kGroup) / 2;
      uint8_t* d = dst + r * cols + g * kGroup;
      if (k < -8) {
        for (size_t i = 0; i < kGroup / 2; i++)
          if ((b[i] & 0x77) != 0) return false;  // a nonzero code would round
        for (size_t i = 0; i < kGroup; i++) d[i] = 0;
        continue;
      }
      for (size_t i = 0; i < kGroup / 2; i++) {
        d[2 * i] = kFp8Table.code[b[i] & 0x0F][k + 8];
        d[2 * i + 1] = kFp8Table.code[b[i] >> 4][k + 8];
      }
    }
  }
  return true;
}

struct Fp4Args {
  Bytes src, scale, dst;
  size_t rows = 0, cols = 0;
  int threads = 1;
};

// (src u8[rows*cols/2], rows, cols (logical, a multiple of 32), scale u8[rows*cols/32], dst, threads)
bool parse_fp4_args(const Napi::CallbackInfo& info, size_t out_elem, Fp4Args& a) {
  Napi::Env env = info.Env();
  if (!get_bytes(info, 0, "src", a.src) || !get_size(info, 1, "rows", a.rows) || !get_size(info, 2, "cols", a.cols) ||
      !get_bytes(info, 3, "scale", a.scale) || !get_bytes(info, 4, "dst", a.dst))
    return false;
  a.threads = get_threads(info, 5);
  const size_t n = a.rows * a.cols;
  return require(env, a.cols % kGroup == 0, "cols must be a multiple of 32, got " + std::to_string(a.cols)) &&
         require(env, a.src.size * 2 == n, "src has " + std::to_string(a.src.size) + " bytes, expected " + std::to_string(n / 2)) &&
         require(env, a.scale.size == n / kGroup, "scale has " + std::to_string(a.scale.size) + " bytes, expected " + std::to_string(n / kGroup)) &&
         require(env, a.dst.size == n * out_elem, "dst has the wrong size") &&
         require(env, reinterpret_cast<uintptr_t>(a.dst.data) % out_elem == 0, "dst is misaligned");
}

Napi::Value Fp4ToBf16(const Napi::CallbackInfo& info) {
  Fp4Args a;
  if (!parse_fp4_args(info, 2, a)) return info.Env().Undefined();
  const bool avx2 = use_avx2();
  const size_t groups = a.cols / kGroup;
  parallel_for(a.rows, a.threads, 64, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; r++) {
      const uint8_t* s = a.src.data + r * a.cols / 2;
      const uint8_t* srow = a.scale.data + r * groups;
      uint16_t* d = reinterpret_cast<uint16_t*>(a.dst.data) + r * a.cols;
#if defined(__x86_64__)
      if (avx2) { fp4_row_bf16_avx2(s, srow, a.cols, d); continue; }
#endif
      (void)avx2;
      fp4_row_bf16_scalar(s, srow, a.cols, d);
    }
  });
  return info.Env().Undefined();
}

// Same arguments, dst u8[rows*cols] e4m3fn codes. Returns -1, or the index (tileRow * tileCols + tileCol)
// of the first tile that cannot be cast exactly (the output is then incomplete).
Napi::Value Fp4ToFp8(const Napi::CallbackInfo& info) {
  Fp4Args a;
  if (!parse_fp4_args(info, 1, a)) return info.Env().Undefined();
  const size_t tiles_r = (a.rows + kTile - 1) / kTile, tiles_c = (a.cols + kTile - 1) / kTile;
  std::atomic<size_t> bad{SIZE_MAX};
  parallel_for(tiles_r, a.threads, 1, [&](size_t t0, size_t t1) {
    for (size_t tr = t0; tr < t1; tr++)
      for (size_t tc = 0; tc < tiles_c; tc++)
        if (!fp4_tile_fp8(a.src.data, a.scale.data, a.rows, a.cols, tr, tc, a.dst.data)) {
          size_t idx = tr * tiles_c + tc, cur = bad.load();
          while (idx < cur && !bad.compare_exchange_weak(cur, idx)) {}
          break;
        }
  });
  const size_t b = bad.load();
  return Napi::Number::New(info.Env(), b == SIZE_MAX ? -1.0 : static_cast<double>(b));
}

}  // namespace

DEEPCAST_EXPORT("fp4ToBf16", Fp4ToBf16);
DEEPCAST_EXPORT("fp4ToFp8", Fp4ToFp8);

}  // namespace deepcast
