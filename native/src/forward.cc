// Hot kernels of the reference forward pass (src/model/forward.ts): matmul y = x W^T (gemm.cc) with
// W in float32 or in its stored ggml form, causal multi-head attention over ragged sequences, and
// the SwiGLU product silu(g) * u.
//
// Numerics: float32 throughout, float32 accumulation. Every output element is computed by one
// fixed sequence of operations that does not depend on the tiling or on which thread runs it, so
// results are bit-identical for any thread count, and so are the scalar, AVX2 and AVX-512 paths of
// the matmul (gemm.h), of attention (one fma chain per score over the head dimension, keys
// transposed so a vector holds 16 or 8 of them; vexp.h's exp; fma for the weighted sum of values)
// and of SwiGLU.
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
#define DC_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

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

// p[j] = (sum_c q[c] * kt[c*ld + j]) * scale for j < n: one fma chain over c per key, in the same
// order at every level (16 or 8 keys per vector, or one at a time).
void scores_scalar(const float* q, const float* kt, size_t ld, size_t dqk, size_t n, float scale, float* p, size_t j0) {
  for (size_t j = j0; j < n; j++) {
    float s = q[0] * kt[j];
    for (size_t c = 1; c < dqk; c++) s = std::fma(q[c], kt[c * ld + j], s);
    p[j] = s * scale;
  }
}

// o[d] = sum_j (p[j] * inv) * v[j*ld + d] for d < dv, j < n: per element one fma chain over j in
// order from 0, at every level (the vector paths keep 32 or 8 outputs in registers across j).
void weighted_sum_scalar(float* o, const float* p, float inv, const float* v, size_t ld, size_t n, size_t d0, size_t dv) {
  for (size_t d = d0; d < dv; d++) {
    float acc = 0.0f;
    for (size_t j = 0; j < n; j++) acc = std::fma(p[j] * inv, v[j * ld + d], acc);
    o[d] = acc;
  }
}

#if defined(__x86_64__)
// Four independent vectors of keys per step (four fma chains in flight instead of one, which the
// fma latency bounded); each key's chain is still q[0]*k, then fma over c = 1.. in order.
DC_AVX2 void scores_avx2(const float* q, const float* kt, size_t ld, size_t dqk, size_t n, float scale, float* p) {
  size_t j = 0;
  const __m256 sc = _mm256_set1_ps(scale);
  for (; j + 32 <= n; j += 32) {
    const __m256 q0 = _mm256_set1_ps(q[0]);
    __m256 s0 = _mm256_mul_ps(q0, _mm256_loadu_ps(kt + j)), s1 = _mm256_mul_ps(q0, _mm256_loadu_ps(kt + j + 8));
    __m256 s2 = _mm256_mul_ps(q0, _mm256_loadu_ps(kt + j + 16)), s3 = _mm256_mul_ps(q0, _mm256_loadu_ps(kt + j + 24));
    for (size_t c = 1; c < dqk; c++) {
      const __m256 qc = _mm256_set1_ps(q[c]);
      const float* kc = kt + c * ld + j;
      s0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kc), s0);
      s1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kc + 8), s1);
      s2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kc + 16), s2);
      s3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kc + 24), s3);
    }
    _mm256_storeu_ps(p + j, _mm256_mul_ps(s0, sc));
    _mm256_storeu_ps(p + j + 8, _mm256_mul_ps(s1, sc));
    _mm256_storeu_ps(p + j + 16, _mm256_mul_ps(s2, sc));
    _mm256_storeu_ps(p + j + 24, _mm256_mul_ps(s3, sc));
  }
  for (; j + 8 <= n; j += 8) {
    __m256 s = _mm256_mul_ps(_mm256_set1_ps(q[0]), _mm256_loadu_ps(kt + j));
    for (size_t c = 1; c < dqk; c++) s = _mm256_fmadd_ps(_mm256_set1_ps(q[c]), _mm256_loadu_ps(kt + c * ld + j), s);
    _mm256_storeu_ps(p + j, _mm256_mul_ps(s, sc));
  }
  scores_scalar(q, kt, ld, dqk, n, scale, p, j);
}

DC_AVX512 void scores_avx512(const float* q, const float* kt, size_t ld, size_t dqk, size_t n, float scale, float* p) {
  size_t j = 0;
  const __m512 sc = _mm512_set1_ps(scale);
  for (; j + 64 <= n; j += 64) {
    const __m512 q0 = _mm512_set1_ps(q[0]);
    __m512 s0 = _mm512_mul_ps(q0, _mm512_loadu_ps(kt + j)), s1 = _mm512_mul_ps(q0, _mm512_loadu_ps(kt + j + 16));
    __m512 s2 = _mm512_mul_ps(q0, _mm512_loadu_ps(kt + j + 32)), s3 = _mm512_mul_ps(q0, _mm512_loadu_ps(kt + j + 48));
    for (size_t c = 1; c < dqk; c++) {
      const __m512 qc = _mm512_set1_ps(q[c]);
      const float* kc = kt + c * ld + j;
      s0 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(kc), s0);
      s1 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(kc + 16), s1);
      s2 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(kc + 32), s2);
      s3 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(kc + 48), s3);
    }
    _mm512_storeu_ps(p + j, _mm512_mul_ps(s0, sc));
    _mm512_storeu_ps(p + j + 16, _mm512_mul_ps(s1, sc));
    _mm512_storeu_ps(p + j + 32, _mm512_mul_ps(s2, sc));
    _mm512_storeu_ps(p + j + 48, _mm512_mul_ps(s3, sc));
  }
  for (; j + 16 <= n; j += 16) {
    __m512 s = _mm512_mul_ps(_mm512_set1_ps(q[0]), _mm512_loadu_ps(kt + j));
    for (size_t c = 1; c < dqk; c++) s = _mm512_fmadd_ps(_mm512_set1_ps(q[c]), _mm512_loadu_ps(kt + c * ld + j), s);
    _mm512_storeu_ps(p + j, _mm512_mul_ps(s, sc));
  }
  scores_scalar(q, kt, ld, dqk, n, scale, p, j);
}

// The weighted sums of G consecutive queries at once (G <= 4; query r sums over n[r] keys, n
// non-decreasing): 16 outputs of each query in two ymm accumulators, 2G chains in flight. Each output
// is still one fma chain over j in order from 0 (keys past a shorter query's n continue only the
// longer queries' chains).
constexpr size_t kGroup = 4;
DC_AVX2 void weighted_sums_avx2(float* const* o, const float* const* p, const float* inv, const float* v, size_t ld,
                                const size_t* n, size_t G, size_t dv) {
  size_t d = 0;
  for (; d + 16 <= dv; d += 16) {
    __m256 a[kGroup][2];
    for (size_t r = 0; r < G; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    size_t j = 0;
    if (G == kGroup) {
      for (; j < n[0]; j++) {
        const float* vj = v + j * ld + d;
        const __m256 v0 = _mm256_loadu_ps(vj), v1 = _mm256_loadu_ps(vj + 8);
        for (size_t r = 0; r < kGroup; r++) {
          const __m256 pj = _mm256_set1_ps(p[r][j] * inv[r]);
          a[r][0] = _mm256_fmadd_ps(pj, v0, a[r][0]);
          a[r][1] = _mm256_fmadd_ps(pj, v1, a[r][1]);
        }
      }
    }
    for (size_t r = 0; r < G; r++) {
      for (size_t jj = j; jj < n[r]; jj++) {
        const __m256 pj = _mm256_set1_ps(p[r][jj] * inv[r]);
        const float* vj = v + jj * ld + d;
        a[r][0] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a[r][0]);
        a[r][1] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a[r][1]);
      }
      _mm256_storeu_ps(o[r] + d, a[r][0]);
      _mm256_storeu_ps(o[r] + d + 8, a[r][1]);
    }
  }
  for (; d + 8 <= dv; d += 8) {
    for (size_t r = 0; r < G; r++) {
      __m256 a = _mm256_setzero_ps();
      for (size_t j = 0; j < n[r]; j++) a = _mm256_fmadd_ps(_mm256_set1_ps(p[r][j] * inv[r]), _mm256_loadu_ps(v + j * ld + d), a);
      _mm256_storeu_ps(o[r] + d, a);
    }
  }
  for (size_t r = 0; r < G; r++) weighted_sum_scalar(o[r], p[r], inv[r], v, ld, n[r], d, dv);
}

DC_AVX512 void weighted_sums_avx512(float* const* o, const float* const* p, const float* inv, const float* v, size_t ld,
                                    const size_t* n, size_t G, size_t dv) {
  size_t d = 0;
  for (; d + 32 <= dv; d += 32) {
    __m512 a[kGroup][2];
    for (size_t r = 0; r < G; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    size_t j = 0;
    if (G == kGroup) {
      for (; j < n[0]; j++) {
        const float* vj = v + j * ld + d;
        const __m512 v0 = _mm512_loadu_ps(vj), v1 = _mm512_loadu_ps(vj + 16);
        for (size_t r = 0; r < kGroup; r++) {
          const __m512 pj = _mm512_set1_ps(p[r][j] * inv[r]);
          a[r][0] = _mm512_fmadd_ps(pj, v0, a[r][0]);
          a[r][1] = _mm512_fmadd_ps(pj, v1, a[r][1]);
        }
      }
    }
    for (size_t r = 0; r < G; r++) {
      for (size_t jj = j; jj < n[r]; jj++) {
        const __m512 pj = _mm512_set1_ps(p[r][jj] * inv[r]);
        const float* vj = v + jj * ld + d;
        a[r][0] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), a[r][0]);
        a[r][1] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), a[r][1]);
      }
      _mm512_storeu_ps(o[r] + d, a[r][0]);
      _mm512_storeu_ps(o[r] + d + 16, a[r][1]);
    }
  }
  if (d < dv) {
    float* o2[kGroup];
    for (size_t r = 0; r < G; r++) o2[r] = o[r] + d;
    weighted_sums_avx2(o2, p, inv, v + d, ld, n, G, dv - d);
  }
}
#endif

void scores(const float* q, const float* kt, size_t ld, size_t dqk, size_t n, float scale, float* p, int level) {
#if defined(__x86_64__)
  if (level == 2) return scores_avx512(q, kt, ld, dqk, n, scale, p);
  if (level == 1) return scores_avx2(q, kt, ld, dqk, n, scale, p);
#endif
  (void)level;
  scores_scalar(q, kt, ld, dqk, n, scale, p, 0);
}

void weighted_sums(float* const* o, const float* const* p, const float* inv, const float* v, size_t ld, const size_t* n,
                   size_t G, size_t dv, int level) {
#if defined(__x86_64__)
  if (level == 2) return weighted_sums_avx512(o, p, inv, v, ld, n, G, dv);
  if (level == 1) return weighted_sums_avx2(o, p, inv, v, ld, n, G, dv);
#endif
  (void)level;
  for (size_t r = 0; r < G; r++) weighted_sum_scalar(o[r], p[r], inv[r], v, ld, n[r], 0, dv);
}

// causalAttention(q f32[N*H*dqk], k f32[N*H*dqk], v f32[N*H*dv], out f32[N*H*dv],
//                 offsets i32[B+1], H, dqk, dv, scale, threads[, c f32[N*C], cOut f32[N*H*C]])
// Sequence b holds tokens offsets[b] .. offsets[b+1]-1 at positions 0..; token i attends to the
// tokens of its own sequence up to and including itself. scores = (q.k) * scale, softmax in
// float32 (max subtracted, exp, sum, times 1/sum), out = sum_j p_j v_j. With c (values that every
// head shares: MLA's latent), also cOut[i, h] = sum_j p_j c_j with the same weights: the bytes of
// attention over values [v_h, c] (each output is its own fma chain over j), without building them.
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
  Bytes cb, cob;
  const bool latent = info.Length() > 10 && !info[10].IsUndefined();
  if (latent && (!get_f32(info, 10, "c", cb) || !get_f32(info, 11, "cOut", cob))) return env.Undefined();
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
      !require(env, ob.size / 4 == N * H * dv, "out has the wrong size") ||
      !require(env, dqk > 0, "dqk must be positive"))
    return env.Undefined();
  const size_t C = latent && N > 0 ? cb.size / 4 / N : 0;
  if (latent && (!require(env, cb.size / 4 == N * C, "c has the wrong size") ||
                 !require(env, cob.size / 4 == N * H * C, "cOut has the wrong size")))
    return env.Undefined();
  const float* c = latent ? reinterpret_cast<const float*>(cb.data) : nullptr;
  float* co = latent ? reinterpret_cast<float*>(cob.data) : nullptr;

  size_t maxlen = 0;
  for (size_t b = 0; b < nseq; b++) maxlen = std::max<size_t>(maxlen, static_cast<size_t>(off[b + 1] - off[b]));
  const float* q = reinterpret_cast<const float*>(qb.data);
  const float* k = reinterpret_cast<const float*>(kb.data);
  const float* v = reinterpret_cast<const float*>(vb.data);
  float* o = reinterpret_cast<float*>(ob.data);
  const int level = use_avx512() ? 2 : use_avx2() ? 1 : 0;
  // Units: (sequence, head, block of 16 queries), dearer towards the end of a sequence; handed out
  // from a counter. Each output is computed the same way whichever thread takes it and at every
  // SIMD level (fma chains in the same order; vexp.h's exp), so the bytes never change.
  constexpr size_t kQb = 16;
  std::vector<size_t> unit_seq, unit_q0;
  for (size_t b = 0; b < nseq; b++)
    for (size_t h = 0; h < H; h++)
      for (size_t q0 = 0; q0 < static_cast<size_t>(off[b + 1] - off[b]); q0 += kQb) {
        unit_seq.push_back(b * H + h);
        unit_q0.push_back(q0);
      }
  const size_t units = unit_seq.size();
  std::atomic<size_t> next{0};
  const int t = N * H * maxlen * (dqk + dv + C) < (size_t{1} << 21) ? 1 : threads;
  parallel_for(static_cast<size_t>(t), t, 1, [&](size_t, size_t) {
    std::vector<float> kt(dqk * maxlen), pbuf(kGroup * maxlen);
    size_t have = SIZE_MAX;  // the (sequence, head) whose keys kt holds
    for (size_t u; (u = next.fetch_add(1)) < units;) {
      const size_t bh = unit_seq[u], b = bh / H, h = bh % H;
      const size_t s0 = static_cast<size_t>(off[b]), len = static_cast<size_t>(off[b + 1]) - s0;
      const size_t q0 = unit_q0[u], q1 = std::min(len, q0 + kQb);
      if (have != bh) {
        // kt[c * len + j] = K[s0 + j, h, c]: 16 keys per vector in the score loop.
        for (size_t j = 0; j < len; j++) {
          const float* kj = k + ((s0 + j) * H + h) * dqk;
          for (size_t c = 0; c < dqk; c++) kt[c * len + j] = kj[c];
        }
        have = bh;
      }
      for (size_t i0 = q0; i0 < q1; i0 += kGroup) {
        const size_t G = std::min(kGroup, q1 - i0);
        float* outs[kGroup];
        const float* ps[kGroup];
        float invs[kGroup];
        size_t ns[kGroup];
        for (size_t r = 0; r < G; r++) {
          const size_t i = i0 + r, n = i + 1;
          float* p = pbuf.data() + r * maxlen;
          scores(q + ((s0 + i) * H + h) * dqk, kt.data(), len, dqk, n, scale, p, level);
          float mx = -INFINITY;
          for (size_t j = 0; j < n; j++) mx = std::max(mx, p[j]);
          exp_sub(p, n, mx);
          float sum = 0.0f;
          for (size_t j = 0; j < n; j++) sum += p[j];
          invs[r] = 1.0f / sum;
          ps[r] = p;
          ns[r] = n;
          outs[r] = o + ((s0 + i) * H + h) * dv;
        }
        weighted_sums(outs, ps, invs, v + (s0 * H + h) * dv, H * dv, ns, G, dv, level);
        if (latent) {
          for (size_t r = 0; r < G; r++) outs[r] = co + ((s0 + i0 + r) * H + h) * C;
          weighted_sums(outs, ps, invs, c + s0 * C, C, ns, G, C, level);
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
