// fp8Quantize: FP8 e4m3fn rows with 128x128 block scales straight to a ggml type. Each row is decoded
// (cast.h, through BF16 when asked) into a per-thread buffer and quantized while it is still in cache,
// instead of a chunk of float32 values going out to memory and back. The bytes are those of fp8ToF32
// followed by ggmlQuantize (BF16 output takes the fused FP8 -> BF16 row: the same rounding, once).
#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "cast.h"
#include "ggml_iq2.h"
#include "ggml_quants.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace {

// Rows handed out per fetch: a few thousand values, so a slow thread does not hold up the rest.
constexpr size_t kValuesPerFetch = 16384;

// fp8Quantize(type, src u8[rows*cols], rows, cols, scale f32[ceil(rows/128)*ceil(cols/128)],
//             dst u8[rows*rowBytes], imatrix f32[cols] | null, threads, bf16Round) -> NaN code count
Napi::Value Fp8Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "type: expected a ggml type id").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int id = info[0].As<Napi::Number>().Int32Value();
  const ggml::TypeTraits* t = ggml::type_traits(id);
  Bytes src, scale, dst, imat;
  size_t rows, cols;
  if (!require(env, t != nullptr && id != ggml::kMXFP4, "ggml type id " + std::to_string(id) + " is not supported") ||
      !get_bytes(info, 1, "src", src) || !get_size(info, 2, "rows", rows) || !get_size(info, 3, "cols", cols) ||
      !get_bytes(info, 4, "scale", scale) || !get_bytes(info, 5, "dst", dst))
    return env.Undefined();
  const bool has_imatrix = info.Length() > 6 && !info[6].IsNull() && !info[6].IsUndefined();
  if (has_imatrix && !get_bytes(info, 6, "imatrix", imat)) return env.Undefined();
  const int threads = get_threads(info, 7);
  const bool round = info.Length() > 8 && info[8].ToBoolean().Value();
  const size_t row_bytes = ggml::row_size(id, cols);
  const size_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
  const size_t scale_rows = (rows + kFp8Block - 1) / kFp8Block;
  if (!require(env, cols > 0 && row_bytes != 0,
               std::string("cols must be a positive multiple of ") + std::to_string(t->block_size) + " for " + t->name +
                   ", got " + std::to_string(cols)) ||
      !require(env, rows == 0 || cols <= SIZE_MAX / 4 / rows, "rows * cols overflows") ||
      !require(env, src.size == rows * cols, "src has " + std::to_string(src.size) + " bytes, expected " + std::to_string(rows * cols)) ||
      !require(env, scale.size == scale_rows * scale_cols * 4,
               "scale has " + std::to_string(scale.size / 4) + " values, expected " + std::to_string(scale_rows * scale_cols)) ||
      !require(env, dst.size == rows * row_bytes,
               "dst has " + std::to_string(dst.size) + " bytes, expected " + std::to_string(rows * row_bytes)) ||
      !require(env, has_imatrix || !ggml::iq2_requires_imatrix(id),
               std::string(t->name) + " needs an importance matrix (ggml asserts one)") ||
      !require(env, !has_imatrix || imat.size == cols * 4,
               "imatrix has " + std::to_string(imat.size / 4) + " values, expected cols = " + std::to_string(cols)) ||
      !require(env, reinterpret_cast<uintptr_t>(scale.data) % 4 == 0 &&
                        (!has_imatrix || reinterpret_cast<uintptr_t>(imat.data) % 4 == 0),
               "scale/imatrix must be 4-byte aligned"))
    return env.Undefined();
  const float* scales = reinterpret_cast<const float*>(scale.data);
  const float* qw = has_imatrix ? reinterpret_cast<const float*>(imat.data) : nullptr;
  const bool bf16_out = id == ggml::kBF16 && reinterpret_cast<uintptr_t>(dst.data) % 2 == 0;

  const size_t grain = std::max<size_t>(1, kValuesPerFetch / cols);
  const size_t nt = std::min<size_t>(static_cast<size_t>(threads), (rows + grain - 1) / grain);
  std::atomic<size_t> next{0}, nan{0};
  parallel_for(nt, static_cast<int>(nt), 1, [&](size_t, size_t) {
    std::vector<float> row(bf16_out ? 0 : cols);
    size_t local = 0;
    for (size_t r0; (r0 = next.fetch_add(grain)) < rows;) {
      const size_t r1 = std::min(rows, r0 + grain);
      for (size_t r = r0; r < r1; r++) {
        const uint8_t* s = src.data + r * cols;
        const float* srow = scales + (r / kFp8Block) * scale_cols;
        uint8_t* y = dst.data + r * row_bytes;
        if (bf16_out) {
          local += fp8_row_to_bf16(s, srow, cols, reinterpret_cast<uint16_t*>(y));
        } else {
          local += fp8_row_to_f32(s, srow, cols, row.data(), round);
          ggml::quantize_row(id, row.data(), y, cols, qw);
        }
      }
    }
    nan += local;
  });
  return Napi::Number::New(env, static_cast<double>(nan.load()));
}

}  // namespace

DEEPCAST_EXPORT("fp8Quantize", Fp8Quantize);

}  // namespace deepcast
