// Hot kernels of the reference forward pass (src/model/forward.ts): matmul y = x W^T (gemm.cc) with
// W in float32 or in its stored ggml form, causal multi-head attention over ragged sequences, and
// the SwiGLU product silu(g) * u.
//
// Numerics: float32 throughout, float32 accumulation. Every output element is computed by one
// fixed sequence of operations that does not depend on the tiling or on which thread runs it, so
// results are bit-identical for any thread count. The matmul's AVX2 and scalar paths are
// bit-identical (gemm.h); attention's are not (FMA, 8 lanes vs mul + add, 8 partial sums), both
// float32-exact enough for the 1e-4 logits tolerance of the golden tests.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu.h"
#include "gemm.h"
#include "ggml_quants.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"
#include "vexp.h"

namespace deepcast {
namespace {

#if defined(__x86_64__)
#define DC_AVX2 __attribute__((target("avx2,fma,f16c")))

DC_AVX2 inline float hsum8(__m256 v) {
  // ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), the scalar twin's order.
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l0+l4 .. l3+l7
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));                                // (0+4)+(2+6), (1+5)+(3+7)
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
  return _mm_cvtss_f32(s1);
}

#endif

bool get_f32(const Napi::CallbackInfo& info, size_t i, const char* what, Bytes& b) {
  if (!get_bytes(info, i, what, b)) return false;
  return require(info.Env(), reinterpret_cast<uintptr_t>(b.data) % 4 == 0 && b.size % 4 == 0,
                 std::string(what) + " must be 4-byte aligned float32 data");
}

// f32Matmul(x f32[T*in], w f32[out*in], y f32[(T-1)*ldy + out], T, in, out, threads, ldy = out)
Napi::Value F32Matmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes xb, wb, yb;
  size_t T = 0, in = 0, out = 0;
  if (!get_f32(info, 0, "x", xb) || !get_f32(info, 1, "w", wb) || !get_f32(info, 2, "y", yb) ||
      !get_size(info, 3, "tokens", T) || !get_size(info, 4, "in", in) || !get_size(info, 5, "out", out))
    return env.Undefined();
  const int threads = get_threads(info, 6);
  size_t ldy = out;
  if (info.Length() > 7 && !info[7].IsUndefined() && !get_size(info, 7, "ldy", ldy)) return env.Undefined();
  if (!require(env, xb.size / 4 == T * in, "x has " + std::to_string(xb.size / 4) + " values, expected " + std::to_string(T * in)) ||
      !require(env, wb.size / 4 == out * in, "w has " + std::to_string(wb.size / 4) + " values, expected " + std::to_string(out * in)) ||
      !require(env, ldy >= out, "ldy must be >= out") ||
      !require(env, T == 0 || yb.size / 4 >= (T - 1) * ldy + out, "y is too small"))
    return env.Undefined();
  if (T == 0 || out == 0) return env.Undefined();
  const GemmWeight w{wb.data, in * 4, ggml::kF32, 1, 4};
  gemm(w, reinterpret_cast<const float*>(xb.data), reinterpret_cast<float*>(yb.data), T, in, out, ldy, threads);
  return env.Undefined();
}

// ggmlMatmul(x f32[T*in], type, w u8[out * rowBytes(type, in)], y f32[(T-1)*ldy + out], T, in, out,
//            threads, ldy = out): y = x W^T with W in its stored ggml form, dequantized panel by panel.
Napi::Value GgmlMatmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes xb, wb, yb;
  size_t T = 0, in = 0, out = 0;
  if (info.Length() <= 1 || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "type: expected a ggml type id").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int type = info[1].As<Napi::Number>().Int32Value();
  const ggml::TypeTraits* tt = ggml::type_traits(type);
  if (!require(env, tt != nullptr, "ggml type id " + std::to_string(type) + " is not supported")) return env.Undefined();
  if (!get_f32(info, 0, "x", xb) || !get_bytes(info, 2, "w", wb) || !get_f32(info, 3, "y", yb) ||
      !get_size(info, 4, "tokens", T) || !get_size(info, 5, "in", in) || !get_size(info, 6, "out", out))
    return env.Undefined();
  const int threads = get_threads(info, 7);
  size_t ldy = out;
  if (info.Length() > 8 && !info[8].IsUndefined() && !get_size(info, 8, "ldy", ldy)) return env.Undefined();
  const size_t row_bytes = ggml::row_size(type, in);
  if (!require(env, in > 0 && row_bytes != 0, std::string("in must be a positive multiple of ") + std::to_string(tt->block_size) + " for " + tt->name) ||
      !require(env, xb.size / 4 == T * in, "x has " + std::to_string(xb.size / 4) + " values, expected " + std::to_string(T * in)) ||
      !require(env, wb.size == out * row_bytes, "w has " + std::to_string(wb.size) + " bytes, expected " + std::to_string(out * row_bytes)) ||
      !require(env, ldy >= out, "ldy must be >= out") ||
      !require(env, T == 0 || yb.size / 4 >= (T - 1) * ldy + out, "y is too small"))
    return env.Undefined();
  const GemmWeight w{wb.data, row_bytes, type, tt->block_size, tt->type_size};
  gemm(w, reinterpret_cast<const float*>(xb.data), reinterpret_cast<float*>(yb.data), T, in, out, ldy, threads);
  return env.Undefined();
}

// ---- exp over arrays (vexp.h: the scalar, AVX2 and AVX-512 twins give identical bytes) -------

// p[j] = exp(p[j] - sub), j < n.
void exp_sub(float* p, size_t n, float sub) {
  size_t j = 0;
#if defined(__x86_64__)
  if (use_avx512()) {
    [&]() DC_VEXP_AVX512 {
      const __m512 s = _mm512_set1_ps(sub);
      for (; j + 16 <= n; j += 16) _mm512_storeu_ps(p + j, vexp::exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(p + j), s)));
    }();
  } else if (use_avx2()) {
    [&]() DC_VEXP_AVX2 {
      const __m256 s = _mm256_set1_ps(sub);
      for (; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, vexp::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + j), s)));
    }();
  }
#endif
  for (; j < n; j++) p[j] = vexp::exp_scalar(p[j] - sub);
}

// g[i] = (g[i] / (1 + exp(-g[i]))) * u[i], i in [a, b).
void silu_mul_range(float* g, const float* u, size_t a, size_t b) {
  size_t i = a;
#if defined(__x86_64__)
  if (use_avx512()) {
    [&]() DC_VEXP_AVX512 {
      const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
      for (; i + 16 <= b; i += 16) {
        const __m512 z = _mm512_loadu_ps(g + i);
        const __m512 d = _mm512_add_ps(one, vexp::exp_avx512(_mm512_sub_ps(zero, z)));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_div_ps(z, d), _mm512_loadu_ps(u + i)));
      }
    }();
  } else if (use_avx2()) {
    [&]() DC_VEXP_AVX2 {
      const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
      for (; i + 8 <= b; i += 8) {
        const __m256 z = _mm256_loadu_ps(g + i);
        const __m256 d = _mm256_add_ps(one, vexp::exp_avx2(_mm256_sub_ps(zero, z)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(z, d), _mm256_loadu_ps(u + i)));
      }
    }();
  }
#endif
  for (; i < b; i++) {
    const float z = g[i];
    g[i] = (z / (1.0f + vexp::exp_scalar(0.0f - z))) * u[i];
  }
}

// ---- causal attention ---------------------------------------------------------------------

float dot_scalar(const float* a, const float* b, size_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int l = 0; l < 8; l++) lane[l] += a[k + l] * b[k + l];
  float s = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
  for (; k < n; k++) s += a[k] * b[k];
  return s;
}

// o += p * v
void axpy_scalar(float* o, float p, const float* v, size_t n) {
  for (size_t d = 0; d < n; d++) o[d] += p * v[d];
}

#if defined(__x86_64__)
DC_AVX2 float dot_avx2(const float* a, const float* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
  float s = hsum8(acc);
  for (; k < n; k++) s += a[k] * b[k];
  return s;
}

DC_AVX2 void axpy_avx2(float* o, float p, const float* v, size_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  size_t d = 0;
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(o + d, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
  for (; d < n; d++) o[d] += p * v[d];
}
#endif

// causalAttention(q f32[N*H*dqk], k f32[N*H*dqk], v f32[N*H*dv], out f32[N*H*dv],
//                 offsets i32[B+1], H, dqk, dv, scale, threads)
// Sequence b holds tokens offsets[b] .. offsets[b+1]-1 at positions 0..; token i attends to the
// tokens of its own sequence up to and including itself. scores = (q.k) * scale, softmax in
// float32 (max subtracted, exp, sum, times 1/sum), out = sum_j p_j v_j.
Napi::Value CausalAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes qb, kb, vb, ob, offb;
  size_t H = 0, dqk = 0, dv = 0;
  if (!get_f32(info, 0, "q", qb) || !get_f32(info, 1, "k", kb) || !get_f32(info, 2, "v", vb) ||
      !get_f32(info, 3, "out", ob) || !get_bytes(info, 4, "offsets", offb) || !get_size(info, 5, "heads", H) ||
      !get_size(info, 6, "dqk", dqk) || !get_size(info, 7, "dv", dv))
    return env.Undefined();
  if (info.Length() <= 8 || !info[8].IsNumber()) {
    Napi::TypeError::New(env, "scale: expected a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const float scale = static_cast<float>(info[8].As<Napi::Number>().DoubleValue());
  const int threads = get_threads(info, 9);
  if (!require(env, offb.size % 4 == 0 && offb.size >= 4 && reinterpret_cast<uintptr_t>(offb.data) % 4 == 0,
               "offsets must be an Int32Array of B+1 values"))
    return env.Undefined();
  const int32_t* off = reinterpret_cast<const int32_t*>(offb.data);
  const size_t nseq = offb.size / 4 - 1;
  if (!require(env, off[0] == 0, "offsets[0] must be 0")) return env.Undefined();
  for (size_t b = 0; b < nseq; b++)
    if (!require(env, off[b + 1] >= off[b], "offsets must be non-decreasing")) return env.Undefined();
  const size_t N = static_cast<size_t>(off[nseq]);
  if (!require(env, qb.size / 4 == N * H * dqk, "q has the wrong size") ||
      !require(env, kb.size / 4 == N * H * dqk, "k has the wrong size") ||
      !require(env, vb.size / 4 == N * H * dv, "v has the wrong size") ||
      !require(env, ob.size / 4 == N * H * dv, "out has the wrong size"))
    return env.Undefined();

  std::vector<uint32_t> start(N);
  size_t maxlen = 0;
  for (size_t b = 0; b < nseq; b++) {
    for (int32_t i = off[b]; i < off[b + 1]; i++) start[i] = static_cast<uint32_t>(off[b]);
    maxlen = std::max<size_t>(maxlen, static_cast<size_t>(off[b + 1] - off[b]));
  }
  const float* q = reinterpret_cast<const float*>(qb.data);
  const float* k = reinterpret_cast<const float*>(kb.data);
  const float* v = reinterpret_cast<const float*>(vb.data);
  float* o = reinterpret_cast<float*>(ob.data);
  const bool avx2 = use_avx2();
  const size_t units = N * H;
  const size_t grain = 8;
  std::atomic<size_t> next{0};
  const int t = units * maxlen * (dqk + dv) < (size_t{1} << 21) ? 1 : threads;
  // Each (token, head) unit is computed the same way whichever thread takes it, so handing units
  // out dynamically (the causal triangle makes later tokens dearer) keeps results deterministic.
  parallel_for(static_cast<size_t>(t), t, 1, [&](size_t, size_t) {
    std::vector<float> p(maxlen);
    for (;;) {
      const size_t u0 = next.fetch_add(grain);
      if (u0 >= units) break;
      const size_t u1 = std::min(units, u0 + grain);
      for (size_t u = u0; u < u1; u++) {
        const size_t i = u / H, h = u % H;
        const size_t s0 = start[i], len = i - s0 + 1;
        const float* qi = q + (i * H + h) * dqk;
        float mx = -INFINITY;
        for (size_t j = 0; j < len; j++) {
          const float* kj = k + ((s0 + j) * H + h) * dqk;
#if defined(__x86_64__)
          const float d = avx2 ? dot_avx2(qi, kj, dqk) : dot_scalar(qi, kj, dqk);
#else
          const float d = dot_scalar(qi, kj, dqk);
#endif
          p[j] = d * scale;
          mx = std::max(mx, p[j]);
        }
        exp_sub(p.data(), len, mx);
        float sum = 0.0f;
        for (size_t j = 0; j < len; j++) sum += p[j];
        const float inv = 1.0f / sum;
        float* oi = o + (i * H + h) * dv;
        std::memset(oi, 0, dv * sizeof(float));
        for (size_t j = 0; j < len; j++) {
          const float pj = p[j] * inv;
          const float* vj = v + ((s0 + j) * H + h) * dv;
#if defined(__x86_64__)
          if (avx2) { axpy_avx2(oi, pj, vj, dv); continue; }
#endif
          axpy_scalar(oi, pj, vj, dv);
        }
      }
    }
  });
  return env.Undefined();
}

// siluMul(g f32[n], u f32[n], threads): g <- silu(g) * u with silu(z) = z / (1 + exp(-z)), exp of
// vexp.h (the same bytes at every SIMD level and thread count).
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes gb, ub;
  if (!get_f32(info, 0, "g", gb) || !get_f32(info, 1, "u", ub)) return env.Undefined();
  if (!require(env, gb.size == ub.size, "g and u differ in size")) return env.Undefined();
  const size_t n = gb.size / 4;
  const int threads = n < (size_t{1} << 18) ? 1 : get_threads(info, 2);
  float* g = reinterpret_cast<float*>(gb.data);
  const float* u = reinterpret_cast<const float*>(ub.data);
  parallel_for(n, threads, 4096, [&](size_t a, size_t b) { silu_mul_range(g, u, a, b); });
  return env.Undefined();
}

}  // namespace

DEEPCAST_EXPORT("f32Matmul", F32Matmul);
DEEPCAST_EXPORT("ggmlMatmul", GgmlMatmul);
DEEPCAST_EXPORT("f32SiluMul", SiluMul);
DEEPCAST_EXPORT("causalAttention", CausalAttention);

}  // namespace deepcast
