// Row-level element casts of cast.cc for other kernels (ggml_quants.cc, fp8_quantize.cc): each takes
// its AVX2 path when the active level allows (cpu.h), else the scalar loop; both give the same bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace deepcast {

constexpr size_t kFp8Block = 128;

// One row of FP8 e4m3fn codes times its 128-wide block scales (srow[j / 128]) -> f32, rounded through
// BF16 when bf16_round; returns how many codes were NaN (0x7F/0xFF).
size_t fp8_row_to_f32(const uint8_t* src, const float* srow, size_t cols, float* dst, bool bf16_round);
// The same -> BF16 (the value fp8_row_to_f32 gives with bf16_round, as its upper 16 bits).
size_t fp8_row_to_bf16(const uint8_t* src, const float* srow, size_t cols, uint16_t* dst);

// f32 -> BF16 / F16 (floats.h's rules: ggml's conversions).
void f32_to_bf16_n(const float* src, uint16_t* dst, size_t n);
void f32_to_f16_n(const float* src, uint16_t* dst, size_t n);

}  // namespace deepcast
