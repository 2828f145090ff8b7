// Statistics over the forward pass's outputs. Scoring (src/model/kld-stats.ts): the log-softmax facts of one float32 logit row in float64 --
// max, first argmax, log sum exp -- the TypeScript twin's loops with the C library's exp (it and
// V8's Math.exp may differ in the last bit of a double; the sums agree to ~1e-16 relative).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace {

// logitRowFacts(logits f32, off, vocab, out f64[3]): out = [max, argmax, lse].
Napi::Value LogitRowFacts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes lb, ob;
  size_t off = 0, vocab = 0;
  if (!get_bytes(info, 0, "logits", lb) || !get_size(info, 1, "off", off) || !get_size(info, 2, "vocab", vocab) ||
      !get_bytes(info, 3, "out", ob))
    return env.Undefined();
  if (!require(env, reinterpret_cast<uintptr_t>(lb.data) % 4 == 0 && reinterpret_cast<uintptr_t>(ob.data) % 8 == 0 &&
                        ob.size >= 24 && vocab > 0 && off + vocab <= lb.size / 4,
               "logitRowFacts: sizes out of range"))
    return env.Undefined();
  const float* x = reinterpret_cast<const float*>(lb.data) + off;
  double* out = reinterpret_cast<double*>(ob.data);
  double max = -INFINITY;
  size_t argmax = 0;
  for (size_t j = 0; j < vocab; j++) {
    if (x[j] > max) {
      max = x[j];
      argmax = j;
    }
  }
  double sum = 0;
  for (size_t j = 0; j < vocab; j++) sum += std::exp(static_cast<double>(x[j]) - max);
  out[0] = max;
  out[1] = static_cast<double>(argmax);
  out[2] = max + std::log(sum);
  return env.Undefined();
}

// addSquares(acc f64, off, x f32, rows, cols, stride): acc[off + j] += x[r*stride + j]^2 for r in
// order, j < cols, in float64: imatrix's in_sum2 (src/model/imatrix-collect.ts), the bytes of the
// TypeScript loop (each square is exact in float64, the additions in the same order).
Napi::Value AddSquares(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes ab, xb;
  size_t off = 0, rows = 0, cols = 0, stride = 0;
  if (!get_bytes(info, 0, "acc", ab) || !get_size(info, 1, "off", off) || !get_bytes(info, 2, "x", xb) ||
      !get_size(info, 3, "rows", rows) || !get_size(info, 4, "cols", cols) || !get_size(info, 5, "stride", stride))
    return env.Undefined();
  const size_t nx = xb.size / 4;
  if (!require(env, reinterpret_cast<uintptr_t>(ab.data) % 8 == 0 && reinterpret_cast<uintptr_t>(xb.data) % 4 == 0 &&
                        off + cols <= ab.size / 8 && (rows == 0 || (cols <= stride && (rows - 1) * stride + cols <= nx)),
               "addSquares: sizes out of range"))
    return env.Undefined();
  double* acc = reinterpret_cast<double*>(ab.data) + off;
  const float* x = reinterpret_cast<const float*>(xb.data);
  for (size_t r = 0; r < rows; r++) {
    const float* xr = x + r * stride;
    for (size_t j = 0; j < cols; j++) acc[j] += static_cast<double>(xr[j]) * xr[j];
  }
  return env.Undefined();
}

// logSumExpBlock(logits f32, rows, n, ld, max f64[rows], sum f64[rows], threads): folds a block of n
// logits per row (row r at logits[r*ld ..]) into a running max and sum of exp(x - max) in float64:
// m' = max(m, x_j...), s' = s * exp(m - m') + sum_j exp(x_j - m'), j in order -- the TypeScript
// loop of src/model/imatrix-run.ts with the C library's exp. Rows are independent (threads split them).
Napi::Value LogSumExpBlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes lb, mb, sb;
  size_t rows = 0, n = 0, ld = 0;
  if (!get_bytes(info, 0, "logits", lb) || !get_size(info, 1, "rows", rows) || !get_size(info, 2, "n", n) ||
      !get_size(info, 3, "ld", ld) || !get_bytes(info, 4, "max", mb) || !get_bytes(info, 5, "sum", sb))
    return env.Undefined();
  const int threads = get_threads(info, 6);
  if (!require(env, reinterpret_cast<uintptr_t>(lb.data) % 4 == 0 && reinterpret_cast<uintptr_t>(mb.data) % 8 == 0 &&
                        reinterpret_cast<uintptr_t>(sb.data) % 8 == 0 && n <= ld && mb.size / 8 >= rows && sb.size / 8 >= rows &&
                        (rows == 0 || (rows - 1) * ld + n <= lb.size / 4),
               "logSumExpBlock: sizes out of range"))
    return env.Undefined();
  const float* x = reinterpret_cast<const float*>(lb.data);
  double* mx = reinterpret_cast<double*>(mb.data);
  double* sm = reinterpret_cast<double*>(sb.data);
  parallel_for(rows, rows * n < (size_t{1} << 16) ? 1 : threads, 16, [&](size_t a, size_t b) {
    for (size_t r = a; r < b; r++) {
      const float* xr = x + r * ld;
      double m = mx[r];
      for (size_t j = 0; j < n; j++) m = std::max(m, static_cast<double>(xr[j]));
      double s = sm[r] * std::exp(mx[r] - m);
      for (size_t j = 0; j < n; j++) s += std::exp(static_cast<double>(xr[j]) - m);
      mx[r] = m;
      sm[r] = s;
    }
  });
  return env.Undefined();
}

}  // namespace

DEEPCAST_EXPORT("logSumExpBlock", LogSumExpBlock);
DEEPCAST_EXPORT("logitRowFacts", LogitRowFacts);
DEEPCAST_EXPORT("addSquares", AddSquares);

}  // namespace deepcast
