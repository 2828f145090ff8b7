// Group searches for the ggml quantizers: the scalar loop, and an AVX2 twin that runs 8 or 16
// independent groups (sub-blocks, or blocks for the legacy imatrix paths) in the lanes of one or
// two vectors. Selected at run time (active_simd(), cpu.h); setSimd('scalar') forces the loop.
//
// Why the AVX2 twin gives the scalar bytes: lane k executes, in the same order, the same IEEE
// float32 operations as make_qkx_quants / make_qx_quants do for group k (add, sub, mul, div,
// compare; no FMA: -ffp-contract=off and no fmadd intrinsic is used). Sums run over the elements
// of one group in element order, inside one lane, so nothing is reassociated. Branches become
// per-lane masks: a lane whose scalar code would skip an update keeps its old value (blend), and
// lanes the scalar code would have returned early from (all-zero or constant groups) get the
// early-return values at the end. nearest_int uses the same 1.5*2^23 add and bit extraction.
// Checked by test/ggml-quants.test.ts: both levels reproduce all golden cases, and agree on mixed
// random rows (constant, zero, spike, subnormal, huge and tie-heavy groups side by side).
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_quants.h"

namespace deepcast {
namespace ggml {

namespace {

constexpr int kLanes = 8;
constexpr int kMaxN = 32;

#if defined(__x86_64__)
#define DC_AVX2 __attribute__((target("avx2,fma,f16c")))

// V vectors of 8 lanes = 8*V groups. Element i of group 8v+k sits at xt[(i*V + v)*8 + k], so one
// element step touches V adjacent vectors; V = 2 gives two independent dependency chains per sum.
template <int V>
void to_lanes(const float* x, int n, float* xt) {
  for (int g = 0; g < kLanes * V; g++)
    for (int i = 0; i < n; i++) xt[(i * V + g / kLanes) * kLanes + g % kLanes] = x[g * n + i];
}

template <int V>
void from_lanes(const int32_t* lt, int n, int32_t offset, const uint32_t* zero_lanes, uint8_t* L) {
  for (int g = 0; g < kLanes * V; g++)
    for (int i = 0; i < n; i++) {
      const int32_t v = lt[(i * V + g / kLanes) * kLanes + g % kLanes];
      L[g * n + i] = static_cast<uint8_t>(zero_lanes[g] ? 0 : v + offset);
    }
}

DC_AVX2 inline __m256i nearest_int_x8(__m256 f) {
  const __m256i i = _mm256_castps_si256(_mm256_add_ps(f, _mm256_set1_ps(12582912.f)));
  return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

DC_AVX2 inline __m256i clamp_x8(__m256i l, __m256i lo, __m256i hi) {
  return _mm256_min_epi32(_mm256_max_epi32(l, lo), hi);
}

DC_AVX2 inline __m256 abs_x8(__m256 v) {
  return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
}

DC_AVX2 inline __m256 neg_x8(__m256 v) {
  return _mm256_xor_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u))));
}

DC_AVX2 inline __m256 ld(const float* p) { return _mm256_load_ps(p); }

// Weighted error of levels Q for (scale, mn): sum over i of w * f(scale*Q + mn - x), f = |.| or square.
template <int V>
DC_AVX2 inline void qkx_error(int n, const float* xt, const float* wt, const __m256* scale, const __m256* mn,
                              const __m256i* Q, bool use_mad, __m256* err) {
  for (int v = 0; v < V; v++) err[v] = _mm256_setzero_ps();
  for (int i = 0; i < n; i++) {
    for (int v = 0; v < V; v++) {
      const int o = i * V + v;
      __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[v], _mm256_cvtepi32_ps(Q[o])), mn[v]), ld(xt + o * kLanes));
      diff = use_mad ? abs_x8(diff) : _mm256_mul_ps(diff, diff);
      err[v] = _mm256_add_ps(err[v], _mm256_mul_ps(ld(wt + o * kLanes), diff));
    }
  }
}

// make_qkx_quants (make_qkx2_quants / make_qkx3_quants) for 8*V groups of n values.
template <int V>
DC_AVX2 void qkx_lanes(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* mins, float* scales,
                       float rmin, float rdelta, int nstep, bool use_mad, bool x3) {
  alignas(32) float xt[kMaxN * kLanes * V] = {}, wt[kMaxN * kLanes * V] = {};
  to_lanes<V>(x, n, xt);
  to_lanes<V>(weights, n, wt);
  __m256i Lq[kMaxN * V], La[kMaxN * V];
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lo = _mm256_setzero_si256(), hi = _mm256_set1_epi32(nmax);

  __m256 min[V], max[V], sum_w[V], sum_x[V], degenerate[V], min0[V], iscale[V], scale[V], best[V];
  for (int v = 0; v < V; v++) {
    min[v] = max[v] = ld(xt + v * kLanes);
    sum_w[v] = ld(wt + v * kLanes);
    sum_x[v] = _mm256_mul_ps(sum_w[v], min[v]);
  }
  for (int i = 1; i < n; i++) {
    for (int v = 0; v < V; v++) {
      const int o = (i * V + v) * kLanes;
      const __m256 xi = ld(xt + o), w = ld(wt + o);
      min[v] = _mm256_blendv_ps(min[v], xi, _mm256_cmp_ps(xi, min[v], _CMP_LT_OQ));
      max[v] = _mm256_blendv_ps(max[v], xi, _mm256_cmp_ps(xi, max[v], _CMP_GT_OQ));
      sum_w[v] = _mm256_add_ps(sum_w[v], w);
      sum_x[v] = _mm256_add_ps(sum_x[v], _mm256_mul_ps(w, xi));
    }
  }
  for (int v = 0; v < V; v++) {
    min[v] = _mm256_blendv_ps(min[v], zero, _mm256_cmp_ps(min[v], zero, _CMP_GT_OQ));
    degenerate[v] = x3 ? _mm256_cmp_ps(max[v], min[v], _CMP_LE_OQ) : _mm256_cmp_ps(max[v], min[v], _CMP_EQ_OQ);
    min0[v] = min[v];
    iscale[v] = _mm256_div_ps(_mm256_set1_ps(static_cast<float>(nmax)), _mm256_sub_ps(max[v], min[v]));
    scale[v] = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale[v]);
  }
  for (int i = 0; i < n; i++)
    for (int v = 0; v < V; v++) {
      const int o = i * V + v;
      Lq[o] = clamp_x8(nearest_int_x8(_mm256_mul_ps(iscale[v], _mm256_sub_ps(ld(xt + o * kLanes), min[v]))), lo, hi);
    }
  qkx_error<V>(n, xt, wt, scale, min, Lq, use_mad, best);

  for (int is = 0; nstep >= 1 && is <= nstep; is++) {
    const float num = rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax);
    __m256 sum_l[V], sum_l2[V], sum_xl[V];
    for (int v = 0; v < V; v++) {
      iscale[v] = _mm256_div_ps(_mm256_set1_ps(num), _mm256_sub_ps(max[v], min[v]));
      sum_l[v] = sum_l2[v] = sum_xl[v] = zero;
    }
    for (int i = 0; i < n; i++) {
      for (int v = 0; v < V; v++) {
        const int o = i * V + v;
        const __m256 xi = ld(xt + o * kLanes);
        La[o] = clamp_x8(nearest_int_x8(_mm256_mul_ps(iscale[v], _mm256_sub_ps(xi, min[v]))), lo, hi);
        const __m256 l = _mm256_cvtepi32_ps(La[o]);
        const __m256 wl = _mm256_mul_ps(ld(wt + o * kLanes), l);
        sum_l[v] = _mm256_add_ps(sum_l[v], wl);
        sum_l2[v] = _mm256_add_ps(sum_l2[v], _mm256_mul_ps(wl, l));
        sum_xl[v] = _mm256_add_ps(sum_xl[v], _mm256_mul_ps(wl, xi));
      }
    }
    __m256 dpos[V], this_scale[V], this_min[V], cur[V];
    int any = 0;
    for (int v = 0; v < V; v++) {
      const __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w[v], sum_l2[v]), _mm256_mul_ps(sum_l[v], sum_l[v]));
      dpos[v] = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
      any |= _mm256_movemask_ps(dpos[v]);
      this_scale[v] = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w[v], sum_xl[v]), _mm256_mul_ps(sum_x[v], sum_l[v])), D);
      this_min[v] = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2[v], sum_x[v]), _mm256_mul_ps(sum_l[v], sum_xl[v])), D);
      const __m256 mpos = _mm256_cmp_ps(this_min[v], zero, _CMP_GT_OQ);
      this_min[v] = _mm256_blendv_ps(this_min[v], zero, mpos);
      this_scale[v] = _mm256_blendv_ps(this_scale[v], _mm256_div_ps(sum_xl[v], sum_l2[v]), mpos);
    }
    if (!any) continue;
    qkx_error<V>(n, xt, wt, this_scale, this_min, La, use_mad, cur);
    for (int v = 0; v < V; v++) {
      const __m256 better = _mm256_and_ps(dpos[v], _mm256_cmp_ps(cur[v], best[v], _CMP_LT_OQ));
      if (_mm256_movemask_ps(better) == 0) continue;
      const __m256i bm = _mm256_castps_si256(better);
      for (int i = 0; i < n; i++) Lq[i * V + v] = _mm256_blendv_epi8(Lq[i * V + v], La[i * V + v], bm);
      best[v] = _mm256_blendv_ps(best[v], cur[v], better);
      scale[v] = _mm256_blendv_ps(scale[v], this_scale[v], better);
      min[v] = _mm256_blendv_ps(min[v], this_min[v], better);
    }
  }

  // Constant groups: the scalar code returned L = 0, scale 0, the_min = -min before searching.
  alignas(32) uint32_t zero_lanes[kLanes * V];
  for (int v = 0; v < V; v++) {
    _mm256_storeu_ps(mins + v * kLanes, _mm256_blendv_ps(neg_x8(min[v]), neg_x8(min0[v]), degenerate[v]));
    _mm256_storeu_ps(scales + v * kLanes, _mm256_blendv_ps(scale[v], zero, degenerate[v]));
    _mm256_store_si256(reinterpret_cast<__m256i*>(zero_lanes + v * kLanes), _mm256_castps_si256(degenerate[v]));
  }
  from_lanes<V>(reinterpret_cast<const int32_t*>(Lq), n, 0, zero_lanes, L);
}

// make_qx_quants' inner pass: levels clamp(nearest_int(iscale*x)) into Q, and their weighted sums.
template <int V>
DC_AVX2 inline void qx_sums(int n, const float* xt, const float* wt, const __m256* iscale, __m256i lo, __m256i hi,
                            __m256i* Q, __m256* sumlx, __m256* suml2) {
  for (int v = 0; v < V; v++) sumlx[v] = suml2[v] = _mm256_setzero_ps();
  for (int i = 0; i < n; i++) {
    for (int v = 0; v < V; v++) {
      const int o = i * V + v;
      const __m256 xi = ld(xt + o * kLanes);
      Q[o] = clamp_x8(nearest_int_x8(_mm256_mul_ps(iscale[v], xi)), lo, hi);
      const __m256 l = _mm256_cvtepi32_ps(Q[o]);
      const __m256 w = ld(wt + o * kLanes);
      sumlx[v] = _mm256_add_ps(sumlx[v], _mm256_mul_ps(_mm256_mul_ps(w, xi), l));
      suml2[v] = _mm256_add_ps(suml2[v], _mm256_mul_ps(_mm256_mul_ps(w, l), l));
    }
  }
}

// make_qx_quants (rmse_type 1) for 8*V groups of n values; qw null means weights x*x.
template <int V>
DC_AVX2 void qx_lanes(int n, int nmax, const float* x, const float* qw, int8_t* L, float* scales) {
  alignas(32) float xt[kMaxN * kLanes * V] = {}, wt[kMaxN * kLanes * V] = {};
  to_lanes<V>(x, n, xt);
  if (qw) {
    to_lanes<V>(qw, n, wt);
  } else {
    for (int i = 0; i < n * kLanes * V; i++) wt[i] = xt[i] * xt[i];
  }
  __m256i Lq[kMaxN * V], La[kMaxN * V];
  const __m256 zero = _mm256_setzero_ps();
  const __m256i lo = _mm256_set1_epi32(-nmax), hi = _mm256_set1_epi32(nmax - 1);

  __m256 max[V], amax[V], all_zero[V], iscale[V], sumlx[V], suml2[V], scale[V], best[V];
  for (int v = 0; v < V; v++) max[v] = amax[v] = zero;
  for (int i = 0; i < n; i++) {
    for (int v = 0; v < V; v++) {
      const __m256 xi = ld(xt + (i * V + v) * kLanes);
      const __m256 ax = abs_x8(xi);
      const __m256 gt = _mm256_cmp_ps(ax, amax[v], _CMP_GT_OQ);
      amax[v] = _mm256_blendv_ps(amax[v], ax, gt);
      max[v] = _mm256_blendv_ps(max[v], xi, gt);
    }
  }
  for (int v = 0; v < V; v++) {
    all_zero[v] = _mm256_cmp_ps(amax[v], _mm256_set1_ps(kGroupMaxEps), _CMP_LT_OQ);
    iscale[v] = _mm256_div_ps(_mm256_set1_ps(static_cast<float>(-nmax)), max[v]);
  }
  qx_sums<V>(n, xt, wt, iscale, lo, hi, Lq, sumlx, suml2);
  for (int v = 0; v < V; v++) {
    scale[v] = _mm256_blendv_ps(zero, _mm256_div_ps(sumlx[v], suml2[v]), _mm256_cmp_ps(suml2[v], zero, _CMP_NEQ_UQ));
    best[v] = _mm256_mul_ps(scale[v], sumlx[v]);
  }
  for (int is = -9; is <= 9; is++) {
    if (is == 0) continue;
    const float num = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is));
    for (int v = 0; v < V; v++) iscale[v] = _mm256_div_ps(_mm256_set1_ps(num), max[v]);
    qx_sums<V>(n, xt, wt, iscale, lo, hi, La, sumlx, suml2);
    for (int v = 0; v < V; v++) {
      const __m256 take = _mm256_and_ps(_mm256_cmp_ps(suml2[v], zero, _CMP_GT_OQ),
                                        _mm256_cmp_ps(_mm256_mul_ps(sumlx[v], sumlx[v]), _mm256_mul_ps(best[v], suml2[v]), _CMP_GT_OQ));
      if (_mm256_movemask_ps(take) == 0) continue;
      const __m256i tm = _mm256_castps_si256(take);
      for (int i = 0; i < n; i++) Lq[i * V + v] = _mm256_blendv_epi8(Lq[i * V + v], La[i * V + v], tm);
      const __m256 new_scale = _mm256_div_ps(sumlx[v], suml2[v]);
      scale[v] = _mm256_blendv_ps(scale[v], new_scale, take);
      best[v] = _mm256_blendv_ps(best[v], _mm256_mul_ps(new_scale, sumlx[v]), take);
    }
  }

  // All-zero groups: the scalar code returned L = 0 and scale 0.
  alignas(32) uint32_t zero_lanes[kLanes * V];
  for (int v = 0; v < V; v++) {
    _mm256_storeu_ps(scales + v * kLanes, _mm256_blendv_ps(scale[v], zero, all_zero[v]));
    _mm256_store_si256(reinterpret_cast<__m256i*>(zero_lanes + v * kLanes), _mm256_castps_si256(all_zero[v]));
  }
  from_lanes<V>(reinterpret_cast<const int32_t*>(Lq), n, nmax, zero_lanes, reinterpret_cast<uint8_t*>(L));
}
#endif

bool lanes_enabled(int n) {
#if defined(__x86_64__)
  return n <= kMaxN && active_simd() == Simd::Avx2;
#else
  (void)n;
  return false;
#endif
}

}  // namespace

void search_qkx(int groups, int n, int nmax, const float* x, const float* weights, uint8_t* L, float* mins,
                float* scales, float rmin, float rdelta, int nstep, bool use_mad, bool x3) {
  int g = 0;
#if defined(__x86_64__)
  if (lanes_enabled(n)) {
    for (; g + 2 * kLanes <= groups; g += 2 * kLanes)
      qkx_lanes<2>(n, nmax, x + g * n, weights + g * n, L + g * n, mins + g, scales + g, rmin, rdelta, nstep, use_mad, x3);
    for (; g + kLanes <= groups; g += kLanes)
      qkx_lanes<1>(n, nmax, x + g * n, weights + g * n, L + g * n, mins + g, scales + g, rmin, rdelta, nstep, use_mad, x3);
  }
#endif
  uint8_t Laux[QK_K];
  for (; g < groups; g++)
    scales[g] = make_qkx_quants(n, nmax, x + g * n, weights + g * n, L + g * n, &mins[g], Laux, rmin, rdelta, nstep,
                                use_mad, x3);
}

void search_qx(int groups, int n, int nmax, const float* x, const float* qw, int8_t* L, float* scales) {
  int g = 0;
#if defined(__x86_64__)
  if (lanes_enabled(n)) {
    for (; g + 2 * kLanes <= groups; g += 2 * kLanes)
      qx_lanes<2>(n, nmax, x + g * n, qw ? qw + g * n : nullptr, L + g * n, scales + g);
    for (; g + kLanes <= groups; g += kLanes) qx_lanes<1>(n, nmax, x + g * n, qw ? qw + g * n : nullptr, L + g * n, scales + g);
  }
#endif
  for (; g < groups; g++) scales[g] = make_qx_quants(n, nmax, x + g * n, L + g * n, qw ? qw + g * n : nullptr);
}

}  // namespace ggml
}  // namespace deepcast
