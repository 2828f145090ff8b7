// IQ3_XXS and IQ3_S: the 3-bit lattices and their neighbour tables, the quantizers and the
// dequantizers. Reproduces ggml/src/ggml-quants.c of llama.cpp v0.4.0 (80fb11a):
// iq3xs_init_impl, iq3_find_best_neighbour, quantize_row_iq3_xxs_impl (grid 256),
// quantize_row_iq3_s_impl (block 32) and dequantize_row_iq3_{xxs,s}; float rules of ggml_quants.h.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_iq34_tq.h"
#include "ggml_quants.h"
#include "napi_util.h"
#include "registry.h"

namespace deepcast {
namespace ggml {

namespace {

// The lattice points of each grid (format constants of IQ3_XXS / IQ3_S, ggml's kgrid_256 and
// kgrid_512): point k has four 3-bit levels, level i in bits 3i..3i+2.
const uint16_t kLattice256[256] = {
    0, 2, 4, 9, 11, 15, 16, 18, 25, 34, 59, 61, 65, 67, 72, 74,
    81, 85, 88, 90, 97, 108, 120, 128, 130, 132, 137, 144, 146, 153, 155, 159,
    169, 175, 189, 193, 199, 200, 202, 213, 248, 267, 287, 292, 303, 315, 317, 321,
    327, 346, 362, 413, 436, 456, 460, 462, 483, 497, 513, 515, 520, 522, 529, 531,
    536, 538, 540, 551, 552, 576, 578, 585, 592, 594, 641, 643, 648, 650, 657, 664,
    698, 704, 706, 720, 729, 742, 758, 769, 773, 808, 848, 852, 870, 889, 901, 978,
    992, 1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091, 1093, 1096, 1098, 1105,
    1112, 1139, 1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217, 1224, 1228,
    1272, 1276, 1309, 1323, 1347, 1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553,
    1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625, 1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722,
    1737, 1755, 1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950, 1971, 2011, 2032, 2052, 2063,
    2077, 2079, 2091, 2095, 2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345, 2356, 2389,
    2403, 2424, 2501, 2504, 2506, 2520, 2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746,
    2754, 2795, 2824, 2835, 2839, 2874, 2882, 2905, 2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153,
    3185, 3215, 3252, 3288, 3294, 3364, 3397, 3434, 3483, 3523, 3537, 3587, 3589, 3591, 3592, 3610,
    3626, 3670, 3680, 3722, 3749, 3754, 3776, 3789, 3803, 3824, 3857, 3873, 3904, 3906, 3924, 3992,
};
const uint16_t kLattice512[512] = {
    0, 1, 2, 5, 7, 8, 9, 10, 12, 14, 16, 17, 21, 27, 32, 34,
    37, 39, 41, 43, 48, 50, 57, 60, 63, 64, 65, 66, 68, 72, 73, 77,
    80, 83, 87, 89, 93, 100, 113, 117, 122, 128, 129, 133, 135, 136, 139, 142,
    145, 149, 152, 156, 162, 165, 167, 169, 171, 184, 187, 195, 201, 205, 208, 210,
    217, 219, 222, 228, 232, 234, 247, 249, 253, 256, 267, 271, 273, 276, 282, 288,
    291, 297, 312, 322, 324, 336, 338, 342, 347, 353, 357, 359, 374, 379, 390, 393,
    395, 409, 426, 441, 448, 450, 452, 464, 466, 470, 475, 488, 492, 512, 513, 514,
    516, 520, 521, 523, 525, 527, 528, 530, 537, 540, 542, 556, 558, 561, 570, 576,
    577, 579, 582, 584, 588, 593, 600, 603, 609, 616, 618, 632, 638, 640, 650, 653,
    655, 656, 660, 666, 672, 675, 685, 688, 698, 705, 708, 711, 712, 715, 721, 727,
    728, 732, 737, 754, 760, 771, 773, 778, 780, 793, 795, 802, 806, 808, 812, 833,
    840, 843, 849, 856, 858, 873, 912, 916, 919, 932, 934, 961, 963, 968, 970, 977,
    989, 993, 1010, 1016, 1024, 1025, 1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047,
    1048, 1050, 1057, 1059, 1061, 1064, 1066, 1079, 1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103,
    1106, 1109, 1113, 1116, 1122, 1129, 1153, 1156, 1159, 1169, 1171, 1176, 1183, 1185, 1195, 1199,
    1209, 1212, 1216, 1218, 1221, 1225, 1234, 1236, 1241, 1243, 1250, 1256, 1270, 1281, 1287, 1296,
    1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375, 1376, 1387, 1400, 1408, 1410, 1415,
    1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549, 1551, 1554, 1561,
    1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648,
    1658, 1662, 1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761,
    1763, 1767, 1773, 1787, 1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877,
    1882, 1892, 1902, 1915, 1934, 1953, 1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068,
    2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121, 2123, 2130, 2136, 2141, 2147, 2153, 2157, 2177,
    2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244, 2249, 2251, 2256, 2258, 2265, 2269,
    2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460, 2480, 2504, 2509, 2520,
    2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627, 2629, 2634,
    2641, 2650, 2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805,
    2811, 2817, 2820, 2832, 2842, 2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083,
    3085, 3097, 3099, 3120, 3136, 3152, 3159, 3188, 3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276,
    3281, 3296, 3349, 3363, 3378, 3392, 3395, 3420, 3440, 3461, 3488, 3529, 3531, 3584, 3588, 3591,
    3600, 3602, 3614, 3616, 3628, 3634, 3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720, 3726, 3729,
    3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845, 3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
};

constexpr int kSlots = 4096;  // every combination of four 3-bit levels

// Builds what iq3xs_init_impl builds. For a slot off the lattice, ggml sorts all points by
// (squared distance, index) and keeps those whose distance is among the `nwant` smallest distinct
// distances; listing, for each of those distances in increasing order, the points at that distance
// in increasing index gives the same record without a sort.
void build_lattice(Iq3Lattice& g, int size) {
  const uint16_t* levels = size == 256 ? kLattice256 : kLattice512;
  const int nwant = size == 256 ? 2 : 3;
  g.size = size;
  g.grid.resize(size);
  g.kmap.assign(kSlots, -1);
  for (int k = 0; k < size; k++) {
    uint32_t p = 0, slot = 0;
    for (int i = 0; i < 4; i++) {
      const uint32_t l = (levels[k] >> (3 * i)) & 7;
      p |= (2 * l + 1) << (8 * i);
      slot |= l << (3 * i);
    }
    g.grid[k] = p;
    g.kmap[slot] = k;
  }
  std::vector<int> d2(size);
  for (int s = 0; s < kSlots; s++) {
    if (g.kmap[s] >= 0) continue;
    int lowest[3];
    int nlow = 0;
    for (int j = 0; j < size; j++) {
      int d = 0;
      for (int i = 0; i < 4; i++) {
        const int diff = static_cast<int>((g.grid[j] >> (8 * i)) & 0xff) - (2 * ((s >> (3 * i)) & 7) + 1);
        d += diff * diff;
      }
      d2[j] = d;
      // Keep the nwant smallest distinct distances, ascending.
      int pos = 0;
      while (pos < nlow && lowest[pos] < d) pos++;
      if (pos < nlow && lowest[pos] == d) continue;
      if (pos >= nwant) continue;
      for (int m = (nlow < nwant ? nlow : nwant - 1); m > pos; m--) lowest[m] = lowest[m - 1];
      lowest[pos] = d;
      if (nlow < nwant) nlow++;
    }
    const size_t offset = g.neighbours.size();
    g.kmap[s] = -static_cast<int32_t>(offset + 1);
    g.neighbours.push_back(0);
    for (int m = 0; m < nlow; m++)
      for (int j = 0; j < size; j++)
        if (d2[j] == lowest[m]) g.neighbours.push_back(static_cast<uint16_t>(j));
    g.neighbours[offset] = static_cast<uint16_t>(g.neighbours.size() - offset - 1);
  }
  g.coords.resize(4 * size);
  for (int k = 0; k < size; k++)
    for (int i = 0; i < 4; i++) g.coords[4 * k + i] = static_cast<float>((g.grid[k] >> (8 * i)) & 0xff);
  g.neighbours.insert(g.neighbours.end(), 8, 0);
  g.neighbour_points.assign(g.neighbours.size(), 0);
  for (int slot = 0; slot < kSlots; slot++) {
    if (g.kmap[slot] >= 0) continue;
    const size_t rec = static_cast<size_t>(-g.kmap[slot] - 1);
    for (size_t j = 1; j <= g.neighbours[rec]; j++) g.neighbour_points[rec + j] = g.grid[g.neighbours[rec + j]];
  }
}

// The level (0..7) of coordinate i of lattice point `p`, and its odd value 2l+1.
inline int point_level(uint32_t p, int i) { return static_cast<int>(((p >> (8 * i)) & 0xff) - 1) / 2; }
inline float point_value(uint32_t p, int i) { return static_cast<float>((p >> (8 * i)) & 0xff); }

// iq3_find_best_neighbour: the record's point minimising sum waux*(scale*q - x)^2 (first minimum
// wins); writes its levels to L and returns its index. The distances are computed first (8 at a
// time with AVX2: lane j repeats the scalar sum for neighbour j in the same order), then scanned
// in record order with ggml's strict comparison.
void record_d2_scalar(const Iq3Lattice& g, const uint16_t* rec, int count, const float* xval, const float* waux,
                      float scale, float* d2s) {
  for (int j = 0; j < count; j++) {
    const float* q = g.coords.data() + 4 * rec[1 + j];
    float d2 = 0;
    for (int i = 0; i < 4; i++) {
      const float diff = scale * q[i] - xval[i];
      d2 += waux[i] * diff * diff;
    }
    d2s[j] = d2;
  }
}

#if defined(__x86_64__)
#define DC_IQ3_AVX2 __attribute__((target("avx2")))
DC_IQ3_AVX2 void record_d2_avx2(const Iq3Lattice& g, const uint16_t* rec, int count, const float* xval,
                                const float* waux, float scale, float* d2s) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int j0 = 0; j0 < count; j0 += 8) {
    const __m128i i16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + 1 + j0));
    const __m256i idx = _mm256_slli_epi32(_mm256_cvtepu16_epi32(i16), 2);
    __m256 d2 = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
      const __m256 q = _mm256_i32gather_ps(g.coords.data() + i, idx, 4);
      const __m256 diff = _mm256_sub_ps(_mm256_mul_ps(vscale, q), _mm256_set1_ps(xval[i]));
      d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(waux[i]), diff), diff));
    }
    _mm256_storeu_ps(d2s + j0, d2);
  }
}
#endif

int best_neighbour(const Iq3Lattice& g, int slot, const float* xval, const float* waux, float scale, int8_t* L) {
  const uint16_t* rec = g.neighbours.data() + (-g.kmap[slot] - 1);
  const int count = rec[0];
  alignas(32) float d2s[64];
#if defined(__x86_64__)
  if (count <= 56 && use_avx2()) record_d2_avx2(g, rec, count, xval, waux, scale, d2s);
  else
#endif
    record_d2_scalar(g, rec, count, xval, waux, scale, d2s);
  float best_d2 = FLT_MAX;
  int index = rec[1];  // ggml asserts that some d2 < FLT_MAX; only NaN/Inf input fails that
  for (int j = 0; j < count; j++) {
    if (d2s[j] < best_d2) {
      best_d2 = d2s[j];
      index = rec[1 + j];
    }
  }
  for (int i = 0; i < 4; i++) L[i] = static_cast<int8_t>(point_level(g.grid[index], i));
  return index;
}

constexpr int kMaxQ = 8;

inline int clamp_level(int l) { return l < 0 ? 0 : (l > kMaxQ - 1 ? kMaxQ - 1 : l); }

// The slot of the levels 0.5*(id*x - 1) rounded, for 4 values (Laux gets the levels when given).
inline int project(float id, const float* xval, int8_t* Laux) {
  int u = 0;
  for (int i = 0; i < 4; i++) {
    const int l = clamp_level(nearest_int(0.5f * (id * xval[i] - 1)));
    if (Laux) Laux[i] = static_cast<int8_t>(l);
    u |= l << (3 * i);
  }
  return u;
}

inline int slot_of(const int8_t* L) {
  int u = 0;
  for (int i = 0; i < 4; i++) u |= L[i] << (3 * i);
  return u;
}

// sum w*x*q and sum w*q^2 with q = 2L+1, in index order.
inline void weighted_sums(int n, const float* weight, const float* xval, const int8_t* L, float& sumqx, float& sumq2) {
  sumqx = 0;
  sumq2 = 0;
  for (int i = 0; i < n; i++) {
    const float w = weight[i];
    const float q = static_cast<float>(2 * L[i] + 1);
    sumqx += w * xval[i] * q;
    sumq2 += w * q * q;
  }
}

#if defined(__x86_64__)
constexpr int kTrialLanes = 32;  // up to 31 trials (IQ3_XXS), 19 for IQ3_S

DC_IQ3_AVX2 inline __m256i nearest_int_x8(__m256 f) {
  const __m256i i = _mm256_castps_si256(_mm256_add_ps(f, _mm256_set1_ps(12582912.f)));
  return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

// The trial loop of ggml's search with trial t (of nt) in lane t: per group, the
// projection, the kmap look-up and, for the lanes off the lattice, the neighbour search (each lane
// walks its own record in order, with the scalar distance and strict comparison); then the weighted
// sums in value order. Writes the levels Lt[i*32 + t], off_t[k*32 + t] (group k of trial t was off
// the lattice) and the sums.
DC_IQ3_AVX2 void trials_avx2(const Iq3Lattice& g, int nt, const float* xval, const float* waux, const float* weight,
                             const float* ids, const float* this_scales, int32_t* Lt, int32_t* off_t, float* sumqx,
                             float* sumq2) {
  const __m256i zero = _mm256_setzero_si256(), seven = _mm256_set1_epi32(kMaxQ - 1), low16 = _mm256_set1_epi32(0xffff);
  const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const int* nb16 = reinterpret_cast<const int*>(g.neighbours.data());  // read as 32-bit at 2-byte steps
  for (int v = 0; v < (nt + 7) / 8; v++) {
    const __m256 id = _mm256_load_ps(ids + 8 * v), scale = _mm256_load_ps(this_scales + 8 * v);
    // Spare lanes past the last trial skip the neighbour search (their results are not read).
    const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(nt - 8 * v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int k = 0; k < 8; k++) {
      __m256i l[4], u = zero;
      for (int i = 0; i < 4; i++) {
        const __m256 f = _mm256_mul_ps(half, _mm256_sub_ps(_mm256_mul_ps(id, _mm256_set1_ps(xval[4 * k + i])), one));
        l[i] = _mm256_min_epi32(_mm256_max_epi32(nearest_int_x8(f), zero), seven);
        u = _mm256_or_si256(u, _mm256_sll_epi32(l[i], _mm_cvtsi32_si128(3 * i)));
      }
      const __m256i gi = _mm256_i32gather_epi32(g.kmap.data(), u, 4);
      const __m256i off = _mm256_and_si256(_mm256_cmpgt_epi32(zero, gi), valid);
      _mm256_store_si256(reinterpret_cast<__m256i*>(off_t + k * kTrialLanes + 8 * v), off);
      if (!_mm256_testz_si256(off, off)) {
        // Record offsets (lanes on the lattice: 0, masked), counts, first entries (the fallback).
        const __m256i rec = _mm256_and_si256(_mm256_sub_epi32(_mm256_sub_epi32(zero, gi), _mm256_set1_epi32(1)), off);
        const __m256i count =
            _mm256_and_si256(_mm256_and_si256(_mm256_i32gather_epi32(nb16, rec, 2), low16), off);
        __m256i best_pos = _mm256_add_epi32(rec, _mm256_set1_epi32(1));  // ggml would assert; see best_neighbour
        __m256 best_d2 = _mm256_set1_ps(FLT_MAX);
        alignas(32) int32_t counts[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(counts), count);
        int maxc = 0;
        for (int t = 0; t < 8; t++) maxc = counts[t] > maxc ? counts[t] : maxc;
        __m256 xs[4], ws[4];
        for (int i = 0; i < 4; i++) {
          xs[i] = _mm256_set1_ps(xval[4 * k + i]);
          ws[i] = _mm256_set1_ps(waux[4 * k + i]);
        }
        const int* points = reinterpret_cast<const int*>(g.neighbour_points.data());
        for (int j = 0; j < maxc; j++) {
          const __m256i active = _mm256_cmpgt_epi32(count, _mm256_set1_epi32(j));
          const __m256i pos = _mm256_add_epi32(rec, _mm256_set1_epi32(1 + j));
          const __m256i pt = _mm256_mask_i32gather_epi32(zero, points, pos, active, 4);
          __m256 d2 = _mm256_setzero_ps();
          for (int i = 0; i < 4; i++) {
            const __m256 q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(pt, 8 * i), _mm256_set1_epi32(0xff)));
            const __m256 diff = _mm256_sub_ps(_mm256_mul_ps(scale, q), xs[i]);
            d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(ws[i], diff), diff));
          }
          const __m256 better = _mm256_and_ps(_mm256_cmp_ps(d2, best_d2, _CMP_LT_OQ), _mm256_castsi256_ps(active));
          best_d2 = _mm256_blendv_ps(best_d2, d2, better);
          best_pos = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best_pos), _mm256_castsi256_ps(pos), better));
        }
        // The chosen point's levels replace the projection in the off lanes.
        const __m256i p = _mm256_mask_i32gather_epi32(zero, points, best_pos, off, 4);
        for (int i = 0; i < 4; i++) {
          const __m256i byte = _mm256_and_si256(_mm256_srli_epi32(p, 8 * i), _mm256_set1_epi32(0xff));
          const __m256i lv = _mm256_srli_epi32(_mm256_sub_epi32(byte, _mm256_set1_epi32(1)), 1);
          l[i] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(l[i]), _mm256_castsi256_ps(lv), _mm256_castsi256_ps(off)));
        }
      }
      for (int i = 0; i < 4; i++)
        _mm256_store_si256(reinterpret_cast<__m256i*>(Lt + (4 * k + i) * kTrialLanes + 8 * v), l[i]);
    }
    __m256 sx = _mm256_setzero_ps(), s2 = _mm256_setzero_ps();
    for (int i = 0; i < 32; i++) {
      const __m256i Li = _mm256_load_si256(reinterpret_cast<const __m256i*>(Lt + i * kTrialLanes + 8 * v));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(Li, Li), _mm256_set1_epi32(1)));
      const __m256 w = _mm256_set1_ps(weight[i]);
      sx = _mm256_add_ps(sx, _mm256_mul_ps(_mm256_mul_ps(w, _mm256_set1_ps(xval[i])), q));
      s2 = _mm256_add_ps(s2, _mm256_mul_ps(_mm256_mul_ps(w, q), q));
    }
    _mm256_store_ps(sumqx + 8 * v, sx);
    _mm256_store_ps(sumq2 + 8 * v, s2);
  }
}
#endif

// The per-32-value search shared by both types (the body of ggml's ib loop from the weights to the
// final L): false for a zero block (ggml's `continue`, which writes nothing for it); otherwise
// *scale_out gets the scale, L the levels (on the lattice) and signs the sign bytes of the 4 groups
// of 8 (7-bit parity-completed for IQ3_XXS, 8-bit for IQ3_S).
struct Iq3Params {
  bool parity;      // IQ3_XXS: an even number of negatives per 8 (flip the cheapest one)
  float eps;        // IQ3_XXS's zero test is max < eps; IQ3_S's is !max (eps unused)
  int nsteps;       // is = -nsteps..nsteps
  bool start_on_grid;  // IQ3_XXS starts is_on_grid true, IQ3_S false
  bool refine_all;  // IQ3_S recomputes every group in the refinement, IQ3_XXS only the off-grid ones
};

bool search_block(const Iq3Lattice& g, const Iq3Params& p, const float* xb, const float* qw, float sigma2,
                  int8_t* L, uint8_t* signs, float* scale_out) {
  float weight[32], waux[32], xval[32];
  int8_t Laux[32];
  bool on_grid[8], on_grid_aux[8];
  if (qw) {
    for (int i = 0; i < 32; i++) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
  } else {
    for (int i = 0; i < 32; i++) weight[i] = xb[i] * xb[i];
  }
  for (int i = 0; i < 32; i++) waux[i] = std::sqrt(weight[i]);
  for (int k = 0; k < 4; k++) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; i++) {
      const float v = xb[8 * k + i];
      if (v >= 0) {
        xval[8 * k + i] = v;
      } else {
        xval[8 * k + i] = -v;
        nflip++;
        s |= static_cast<uint8_t>(1 << i);
      }
    }
    if (p.parity) {
      if (nflip % 2) {
        int imin = 0;
        float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
        for (int i = 1; i < 8; i++) {
          const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
          if (ax < min) {
            min = ax;
            imin = i;
          }
        }
        xval[8 * k + imin] = -xval[8 * k + imin];
        s ^= static_cast<uint8_t>(1 << imin);
      }
      s &= 127;
    }
    signs[k] = s;
  }
  float max = xval[0];
  for (int i = 1; i < 32; i++) max = max > xval[i] ? max : xval[i];
  std::memset(L, 0, 32);
  if (p.parity ? max < p.eps : !max) return false;

  float best = 0;
  float scale = max / static_cast<float>(2 * kMaxQ - 1);
  for (int k = 0; k < 8; k++) on_grid[k] = p.start_on_grid;
#if defined(__x86_64__)
  if (use_avx2()) {
    // All trials first (lane t of the vectors = trial t), then ggml's acceptance in trial order.
    const int nt = 2 * p.nsteps + 1;
    alignas(32) float ids[kTrialLanes], this_scales[kTrialLanes], sumqx[kTrialLanes], sumq2[kTrialLanes];
    alignas(32) int32_t Lt[32 * kTrialLanes];
    alignas(32) int32_t off_t[8 * kTrialLanes];
    for (int t = 0; t < kTrialLanes; t++) {
      const int is = -p.nsteps + (t < nt ? t : nt - 1);  // spare lanes repeat the last trial
      ids[t] = (static_cast<float>(2 * kMaxQ - 1) + static_cast<float>(is) * 0.2f) / max;
      this_scales[t] = 1 / ids[t];
    }
    trials_avx2(g, nt, xval, waux, weight, ids, this_scales, Lt, off_t, sumqx, sumq2);
    for (int t = 0; t < nt; t++) {
      if (sumq2[t] > 0 && sumqx[t] * sumqx[t] > best * sumq2[t]) {
        scale = sumqx[t] / sumq2[t];
        best = scale * sumqx[t];
        for (int i = 0; i < 32; i++) L[i] = static_cast<int8_t>(Lt[i * kTrialLanes + t]);
        for (int k = 0; k < 8; k++) on_grid[k] = !off_t[k * kTrialLanes + t];
      }
    }
  } else
#endif
  for (int is = -p.nsteps; is <= p.nsteps; is++) {
    const float id = (static_cast<float>(2 * kMaxQ - 1) + static_cast<float>(is) * 0.2f) / max;
    const float this_scale = 1 / id;
    for (int k = 0; k < 8; k++) {
      const int u = project(id, xval + 4 * k, Laux + 4 * k);
      on_grid_aux[k] = g.kmap[u] >= 0;
      if (!on_grid_aux[k]) best_neighbour(g, u, xval + 4 * k, waux + 4 * k, this_scale, Laux + 4 * k);
    }
    float sumqx, sumq2;
    weighted_sums(32, weight, xval, Laux, sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      scale = sumqx / sumq2;
      best = scale * sumqx;
      std::memcpy(L, Laux, 32);
      std::memcpy(on_grid, on_grid_aux, sizeof on_grid);
    }
  }
  int n_off = 0;
  for (int k = 0; k < 8; k++) n_off += on_grid[k] ? 0 : 1;
  if (n_off > 0 && scale > 0) {
    const float id = 1 / scale;
    for (int k = 0; k < 8; k++) {
      if (!p.refine_all && on_grid[k]) continue;
      const int u = project(id, xval + 4 * k, nullptr);
      int index = g.kmap[u];
      if (index < 0) index = best_neighbour(g, u, xval + 4 * k, waux + 4 * k, scale, L + 4 * k);
      for (int i = 0; i < 4; i++) L[4 * k + i] = static_cast<int8_t>(point_level(g.grid[index], i));
    }
    float sumqx, sumq2;
    weighted_sums(32, weight, xval, L, sumqx, sumq2);
    if (sumq2 > 0) scale = sumqx / sumq2;
  }
  if (scale < 0) {
    // ggml: "should never happen"; flip the scale positive and the signs with it.
    scale = -scale;
    for (int k = 0; k < 4; k++) signs[k] = static_cast<uint8_t>(p.parity ? (~signs[k]) & 127 : ~signs[k]);
  }
  *scale_out = scale;
  return true;
}

// The lattice index of the levels of group k of L (always on the lattice after search_block).
inline int lattice_index(const Iq3Lattice& g, const int8_t* L) {
  const int index = g.kmap[slot_of(L)];
  return index >= 0 ? index : 0;  // ggml aborts ("point not on grid"); unreachable
}

inline int scale_nibble(float id, float s) {
  const int l = nearest_int(0.5f * (id * s - 1));
  return l < 0 ? 0 : (l > 15 ? 15 : l);
}

constexpr Iq3Params kXxsParams{true, 1e-8f, 15, true, false};
constexpr Iq3Params kSParams{false, 0.f, 9, false, true};

}  // namespace

const Iq3Lattice& iq3_lattice(int size) {
  static Iq3Lattice lattices[2];
  static std::once_flag once[2];
  const int gi = size == 256 ? 0 : 1;
  std::call_once(once[gi], [gi] { build_lattice(lattices[gi], gi == 0 ? 256 : 512); });
  return lattices[gi];
}

// ---- IQ3_XXS: { f16 d; u8 grid index[64]; u32 scale_and_signs[8] } ----------------------------

void quantize_row_iq3_xxs(const float* x, uint8_t* y, size_t n, const float* qw) {
  const Iq3Lattice& g = iq3_lattice(256);
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ3_XXSBytes) {
    const float* xbl = x + QK_K * ibl;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; i++) sumx2 += xbl[i] * xbl[i];
    const float sigma2 = 2 * sumx2 / QK_K;
    uint8_t index[64] = {0};
    uint32_t scales_and_signs[8] = {0};
    float scales[8];
    float max_scale = 0;
    for (int ib = 0; ib < 8; ib++) {
      int8_t L[32];
      uint8_t signs[4];
      float scale = 0;
      scales[ib] = 0;
      if (!search_block(g, kXxsParams, xbl + 32 * ib, qw ? qw + QK_K * ibl + 32 * ib : nullptr, sigma2, L, signs,
                        &scale))
        continue;  // indices and signs stay 0
      scales[ib] = scale;
      for (int k = 0; k < 8; k++) index[8 * ib + k] = static_cast<uint8_t>(lattice_index(g, L + 4 * k));
      scales_and_signs[ib] = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (static_cast<uint32_t>(signs[3]) << 21);
      max_scale = max_scale > scale ? max_scale : scale;
    }
    std::memset(y, 0, kIQ3_XXSBytes);
    if (!max_scale) continue;
    const float d = max_scale / 31;
    store_u16(y, f32_to_f16(d * 1.0125f));
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib++) scales_and_signs[ib] |= static_cast<uint32_t>(scale_nibble(id, scales[ib])) << 28;
    std::memcpy(y + 2, index, 64);
    std::memcpy(y + 66, scales_and_signs, 32);
  }
}

void dequantize_row_iq3_xxs(const uint8_t* x, float* y, size_t n) {
  // iq3xxs_grid: the same points with levels 0..7 stored as these magnitudes.
  static const uint8_t kMagnitude[8] = {4, 12, 20, 28, 36, 44, 52, 62};
  const Iq3Lattice& g = iq3_lattice(256);
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, x += kIQ3_XXSBytes) {
    const float d = load_f16(x);
    const uint8_t* index = x + 2;
    for (int ib = 0; ib < 8; ib++) {
      uint32_t aux;
      std::memcpy(&aux, x + 66 + 4 * ib, 4);
      const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
      for (int l = 0; l < 4; l++) {
        uint32_t s = (aux >> (7 * l)) & 127;
        s |= static_cast<uint32_t>(__builtin_parity(s)) << 7;  // ksigns_iq2xs: even parity
        for (int half = 0; half < 2; half++) {
          const uint32_t p = g.grid[index[8 * ib + 2 * l + half]];
          for (int j = 0; j < 4; j++) {
            const float m = static_cast<float>(kMagnitude[point_level(p, j)]);
            *y++ = db * m * ((s >> (4 * half + j)) & 1 ? -1.f : 1.f);
          }
        }
      }
    }
  }
}

// ---- IQ3_S: { f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4] } -----------------------

void quantize_row_iq3_s(const float* x, uint8_t* y, size_t n, const float* qw) {
  const Iq3Lattice& g = iq3_lattice(512);
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, y += kIQ3_SBytes) {
    std::memset(y, 0, kIQ3_SBytes);
    uint8_t* qs = y + 2;
    uint8_t* qh = y + 66;
    uint8_t* signs = y + 74;
    uint8_t* scale_bytes = y + 106;
    const float* xbl = x + QK_K * ibl;
    float sumx2 = 0;
    for (int i = 0; i < QK_K; i++) sumx2 += xbl[i] * xbl[i];
    const float sigma2 = 2 * sumx2 / QK_K;
    float scales[8];
    float max_scale = 0;
    for (int ib = 0; ib < 8; ib++) {
      int8_t L[32];
      uint8_t block_signs[4];
      float scale = 0;
      scales[ib] = 0;
      // A zero block writes nothing and, as in ggml, does not advance qs/signs: the next block's
      // indices and signs land in its place (qh is addressed by block and stays put).
      if (!search_block(g, kSParams, xbl + 32 * ib, qw ? qw + QK_K * ibl + 32 * ib : nullptr, sigma2, L,
                        block_signs, &scale))
        continue;
      for (int k = 0; k < 8; k++) {
        const int index = lattice_index(g, L + 4 * k);
        qs[k] = static_cast<uint8_t>(index & 255);
        qh[ib] |= static_cast<uint8_t>((index >> 8) << k);
      }
      qs += 8;
      std::memcpy(signs, block_signs, 4);
      signs += 4;
      scales[ib] = scale;
      max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) continue;
    const float d = max_scale / 31;
    store_u16(y, f32_to_f16(d * 1.033f));
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ib += 2)
      scale_bytes[ib / 2] = static_cast<uint8_t>(scale_nibble(id, scales[ib]) | (scale_nibble(id, scales[ib + 1]) << 4));
  }
}

void dequantize_row_iq3_s(const uint8_t* x, float* y, size_t n) {
  const Iq3Lattice& g = iq3_lattice(512);  // iq3s_grid stores the lattice values themselves
  for (size_t ibl = 0; ibl < n / QK_K; ibl++, x += kIQ3_SBytes) {
    const float d = load_f16(x);
    const uint8_t* qs = x + 2;
    const uint8_t* qh = x + 66;
    const uint8_t* signs = x + 74;
    const uint8_t* scale_bytes = x + 106;
    for (int ib = 0; ib < 8; ib++) {
      const int ls = ib % 2 == 0 ? scale_bytes[ib / 2] & 0xf : scale_bytes[ib / 2] >> 4;
      const float db = d * static_cast<float>(1 + 2 * ls);
      for (int k = 0; k < 8; k++) {
        const uint32_t p = g.grid[qs[8 * ib + k] | (((qh[ib] >> k) & 1) << 8)];
        const uint8_t s = signs[4 * ib + k / 2];
        for (int j = 0; j < 4; j++) *y++ = db * point_value(p, j) * ((s >> (4 * (k % 2) + j)) & 1 ? -1.f : 1.f);
      }
    }
  }
}

}  // namespace ggml

// ---- N-API: the lattice tables, so tests can compare them with ggml's ------------------------
namespace {

// ggmlIq3Lattice(size: 256 | 512) -> { grid: Uint32Array, kmap: Int32Array, neighbours: Uint16Array }
Napi::Value GgmlIq3Lattice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t size;
  if (!get_size(info, 0, "size", size) || !require(env, size == 256 || size == 512, "size must be 256 or 512"))
    return env.Undefined();
  const ggml::Iq3Lattice& g = ggml::iq3_lattice(static_cast<int>(size));
  auto copy = [&](const void* data, size_t bytes) {
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes);
    std::memcpy(ab.Data(), data, bytes);
    return ab;
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("grid", Napi::Uint32Array::New(env, g.grid.size(), copy(g.grid.data(), g.grid.size() * 4), 0));
  out.Set("kmap", Napi::Int32Array::New(env, g.kmap.size(), copy(g.kmap.data(), g.kmap.size() * 4), 0));
  const size_t nn = g.neighbours.size() - 8;  // without the load padding
  out.Set("neighbours", Napi::Uint16Array::New(env, nn, copy(g.neighbours.data(), nn * 2), 0));
  return out;
}

}  // namespace

DEEPCAST_EXPORT("ggmlIq3Lattice", GgmlIq3Lattice);

}  // namespace deepcast
