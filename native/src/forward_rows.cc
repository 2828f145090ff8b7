// Row-wise float32 steps of the forward pass (src/model/ops.ts): RMSNorm, RoPE, x += y, MLA's K/V
// assembly and the MoE's gather / weighted scatter-add. Each is the TypeScript twin's arithmetic
// operation for operation (float32 rounding after every operation, RMSNorm's sum of squares in
// float64 in index order), so both give the same bytes (test/forward-rows.test.ts). Single-threaded:
// they are memory-bound and short; what they save is the JavaScript loop's overhead.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "napi_util.h"
#include "registry.h"

namespace deepcast {
namespace {

bool f32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, const float*& p, size_t& n) {
  Bytes b;
  if (!get_bytes(info, i, what, b)) return false;
  if (!require(info.Env(), reinterpret_cast<uintptr_t>(b.data) % 4 == 0 && b.size % 4 == 0, std::string(what) + " must be float32 data")) return false;
  p = reinterpret_cast<const float*>(b.data);
  n = b.size / 4;
  return true;
}

bool i32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, const int32_t*& p, size_t& n) {
  Bytes b;
  if (!get_bytes(info, i, what, b)) return false;
  if (!require(info.Env(), reinterpret_cast<uintptr_t>(b.data) % 4 == 0 && b.size % 4 == 0, std::string(what) + " must be an Int32Array")) return false;
  p = reinterpret_cast<const int32_t*>(b.data);
  n = b.size / 4;
  return true;
}

bool number_arg(const Napi::CallbackInfo& info, size_t i, const char* what, double& v) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(what) + ": expected a number").ThrowAsJavaScriptException();
    return false;
  }
  v = info[i].As<Napi::Number>().DoubleValue();
  return true;
}

// Whether rows of `len` values at stride `stride` from `off` fit in n values.
bool fits(size_t n, size_t rows, size_t stride, size_t off, size_t len) {
  return rows == 0 || (len <= stride || rows == 1) && off + (rows - 1) * stride + len <= n;
}

// rmsNormRows(x, rows, dim, w, eps, y, xStride, yStride): y = x / sqrt(mean(x^2) + eps) * w per row.
Napi::Value RmsNormRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *x, *w, *yc;
  size_t nx, nw, ny, rows, dim, xs, ys;
  double eps;
  if (!f32_arg(info, 0, "x", x, nx) || !get_size(info, 1, "rows", rows) || !get_size(info, 2, "dim", dim) ||
      !f32_arg(info, 3, "w", w, nw) || !number_arg(info, 4, "eps", eps) || !f32_arg(info, 5, "y", yc, ny) ||
      !get_size(info, 6, "xStride", xs) || !get_size(info, 7, "yStride", ys))
    return env.Undefined();
  if (!require(env, nw >= dim && fits(nx, rows, xs, 0, dim) && fits(ny, rows, ys, 0, dim), "rmsNormRows: sizes out of range")) return env.Undefined();
  float* y = const_cast<float*>(yc);
  const float feps = static_cast<float>(eps);
  for (size_t r = 0; r < rows; r++) {
    const float* xr = x + r * xs;
    float* yr = y + r * ys;
    double ss = 0;
    for (size_t i = 0; i < dim; i++) ss += static_cast<double>(xr[i]) * xr[i];
    const float mean = static_cast<float>(ss / static_cast<double>(dim));
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mean + feps)));
    for (size_t i = 0; i < dim; i++) yr[i] = (xr[i] * inv) * w[i];
  }
  return env.Undefined();
}

// ropeRows(x, rows, rowStride, offset, heads, headStride, dr, pos, cos, sin): interleaved-pair RoPE
// in place on x[i*rowStride + h*headStride + offset + 0..dr), row i at position pos[i].
Napi::Value RopeRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *xc, *cs, *sn;
  const int32_t* pos;
  size_t nx, ncs, nsn, npos, rows, rs, off, heads, hs, dr;
  if (!f32_arg(info, 0, "x", xc, nx) || !get_size(info, 1, "rows", rows) || !get_size(info, 2, "rowStride", rs) ||
      !get_size(info, 3, "offset", off) || !get_size(info, 4, "heads", heads) || !get_size(info, 5, "headStride", hs) ||
      !get_size(info, 6, "dr", dr) || !i32_arg(info, 7, "pos", pos, npos) || !f32_arg(info, 8, "cos", cs, ncs) ||
      !f32_arg(info, 9, "sin", sn, nsn))
    return env.Undefined();
  const size_t half = dr / 2;
  bool ok = npos >= rows && (rows == 0 || heads == 0 || off + (heads - 1) * hs + dr + (rows - 1) * rs <= nx);
  for (size_t i = 0; ok && i < rows; i++) ok = pos[i] >= 0 && (static_cast<size_t>(pos[i]) + 1) * half <= std::min(ncs, nsn);
  if (!require(env, ok, "ropeRows: sizes out of range")) return env.Undefined();
  float* x = const_cast<float*>(xc);
  for (size_t i = 0; i < rows; i++) {
    const size_t t = static_cast<size_t>(pos[i]) * half;
    for (size_t h = 0; h < heads; h++) {
      float* o = x + i * rs + h * hs + off;
      for (size_t j = 0; j < half; j++) {
        const float c = cs[t + j], s = sn[t + j];
        const float x0 = o[2 * j], x1 = o[2 * j + 1];
        o[2 * j] = x0 * c - x1 * s;
        o[2 * j + 1] = x0 * s + x1 * c;
      }
    }
  }
  return env.Undefined();
}

// addRows(x, y): x += y.
Napi::Value AddRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *xc, *y;
  size_t nx, ny;
  if (!f32_arg(info, 0, "x", xc, nx) || !f32_arg(info, 1, "y", y, ny)) return env.Undefined();
  if (!require(env, ny >= nx, "addRows: y is shorter than x")) return env.Undefined();
  float* x = const_cast<float*>(xc);
  for (size_t i = 0; i < nx; i++) x[i] = x[i] + y[i];
  return env.Undefined();
}

// mlaKv(kva, kvb, k, v, N, H, dn, dr, dv, kvr): per token i and head h,
// k[i,h] = [kvb[i,h,0..dn), kva[i, kvr..kvr+dr)], v[i,h] = kvb[i,h,dn..dn+dv).
Napi::Value MlaKv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *kva, *kvb, *kc, *vc;
  size_t na, nb, nk, nv, N, H, dn, dr, dv, kvr;
  if (!f32_arg(info, 0, "kva", kva, na) || !f32_arg(info, 1, "kvb", kvb, nb) || !f32_arg(info, 2, "k", kc, nk) ||
      !f32_arg(info, 3, "v", vc, nv) || !get_size(info, 4, "N", N) || !get_size(info, 5, "H", H) ||
      !get_size(info, 6, "dn", dn) || !get_size(info, 7, "dr", dr) || !get_size(info, 8, "dv", dv) || !get_size(info, 9, "kvr", kvr))
    return env.Undefined();
  if (!require(env, na >= N * (kvr + dr) && nb >= N * H * (dn + dv) && nk >= N * H * (dn + dr) && nv >= N * H * dv, "mlaKv: sizes out of range"))
    return env.Undefined();
  float* k = const_cast<float*>(kc);
  float* v = const_cast<float*>(vc);
  for (size_t i = 0; i < N; i++) {
    const float* pe = kva + i * (kvr + dr) + kvr;
    for (size_t h = 0; h < H; h++) {
      const float* src = kvb + (i * H + h) * (dn + dv);
      float* ko = k + (i * H + h) * (dn + dr);
      std::memcpy(ko, src, dn * 4);
      std::memcpy(ko + dn, pe, dr * 4);
      std::memcpy(v + (i * H + h) * dv, src + dn, dv * 4);
    }
  }
  return env.Undefined();
}

// gatherRows(x, rows, dim, y): y[j] = x[rows[j]] (rows of dim values).
Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *x, *yc;
  const int32_t* idx;
  size_t nx, ny, ni, dim;
  if (!f32_arg(info, 0, "x", x, nx) || !i32_arg(info, 1, "rows", idx, ni) || !get_size(info, 2, "dim", dim) || !f32_arg(info, 3, "y", yc, ny))
    return env.Undefined();
  bool ok = ny >= ni * dim;
  for (size_t j = 0; ok && j < ni; j++) ok = idx[j] >= 0 && (static_cast<size_t>(idx[j]) + 1) * dim <= nx;
  if (!require(env, ok, "gatherRows: sizes out of range")) return env.Undefined();
  float* y = const_cast<float*>(yc);
  for (size_t j = 0; j < ni; j++) std::memcpy(y + j * dim, x + static_cast<size_t>(idx[j]) * dim, dim * 4);
  return env.Undefined();
}

// scatterAddScaled(y, out, rows, scale, dim): y[rows[j]] += out[j] * scale[j], in order of j.
Napi::Value ScatterAddScaled(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float *yc, *out, *sc;
  const int32_t* idx;
  size_t ny, no, ni, ns, dim;
  if (!f32_arg(info, 0, "y", yc, ny) || !f32_arg(info, 1, "out", out, no) || !i32_arg(info, 2, "rows", idx, ni) ||
      !f32_arg(info, 3, "scale", sc, ns) || !get_size(info, 4, "dim", dim))
    return env.Undefined();
  bool ok = no >= ni * dim && ns >= ni;
  for (size_t j = 0; ok && j < ni; j++) ok = idx[j] >= 0 && (static_cast<size_t>(idx[j]) + 1) * dim <= ny;
  if (!require(env, ok, "scatterAddScaled: sizes out of range")) return env.Undefined();
  float* y = const_cast<float*>(yc);
  for (size_t j = 0; j < ni; j++) {
    float* yr = y + static_cast<size_t>(idx[j]) * dim;
    const float* o = out + j * dim;
    const float s = sc[j];
    for (size_t c = 0; c < dim; c++) yr[c] = yr[c] + o[c] * s;
  }
  return env.Undefined();
}

}  // namespace

DEEPCAST_EXPORT("rmsNormRows", RmsNormRows);
DEEPCAST_EXPORT("ropeRows", RopeRows);
DEEPCAST_EXPORT("addRows", AddRows);
DEEPCAST_EXPORT("mlaKv", MlaKv);
DEEPCAST_EXPORT("gatherRows", GatherRows);
DEEPCAST_EXPORT("scatterAddScaled", ScatterAddScaled);

}  // namespace deepcast
