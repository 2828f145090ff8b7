#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu.h"
#include "ggml_quants.h"
#include "parallel.h"

namespace deepcast {
namespace {

constexpr size_t kNr = 16;   // weight rows per panel (two 8-lane vectors)
constexpr size_t kMr = 6;    // tokens per micro-tile (AVX2 and scalar)
constexpr size_t kMr512 = 12;  // tokens per micro-tile of the AVX-512 kernel
constexpr size_t kKc = 256;  // columns per panel: a multiple of every ggml block size
constexpr size_t kTb = 480;  // tokens per block (kTb x kKc floats stay in L2; a panel serves them all)

// panel[k*16 + j] = W[o0 + j][k0 + k] for j < nr, 0 for nr <= j < 16.
void pack(const GemmWeight& w, size_t o0, size_t nr, size_t k0, size_t kc, float* panel, float* rows) {
  if (w.type == ggml::kF32) {
    for (size_t j = 0; j < nr; j++) {
      const float* src = reinterpret_cast<const float*>(w.data + (o0 + j) * w.row_bytes) + k0;
      for (size_t k = 0; k < kc; k++) panel[k * kNr + j] = src[k];
    }
  } else {
    for (size_t j = 0; j < nr; j++)
      ggml::dequantize_row(w.type, w.data + (o0 + j) * w.row_bytes + (k0 / w.block) * w.type_size, rows + j * kc, kc);
    for (size_t k = 0; k < kc; k++)
      for (size_t j = 0; j < nr; j++) panel[k * kNr + j] = rows[j * kc + k];
  }
  if (nr < kNr)
    for (size_t k = 0; k < kc; k++)
      for (size_t j = nr; j < kNr; j++) panel[k * kNr + j] = 0.0f;
}

// y[m*ldy + j] (m < M, j < nr) continues its sum over the panel's kc columns (starts at 0 when first).
template <size_t M>
void tile_scalar(const float* panel, size_t kc, const float* x, size_t ldx, float* y, size_t ldy, size_t nr, bool first) {
  for (size_t m = 0; m < M; m++) {
    for (size_t j = 0; j < nr; j++) {
      float s = first ? 0.0f : y[m * ldy + j];
      const float* xm = x + m * ldx;
      for (size_t k = 0; k < kc; k++) s = std::fma(panel[k * kNr + j], xm[k], s);
      y[m * ldy + j] = s;
    }
  }
}

#if defined(__x86_64__)
#define DC_AVX2 __attribute__((target("avx2,fma")))

template <size_t M>
DC_AVX2 void tile_avx2(const float* panel, size_t kc, const float* x, size_t ldx, float* y, size_t ldy, size_t nr, bool first) {
  __m256 acc[M][2];
  if (first) {
    for (size_t m = 0; m < M; m++) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  } else if (nr == kNr) {
    for (size_t m = 0; m < M; m++) {
      acc[m][0] = _mm256_loadu_ps(y + m * ldy);
      acc[m][1] = _mm256_loadu_ps(y + m * ldy + 8);
    }
  } else {
    alignas(32) float tmp[kNr] = {};
    for (size_t m = 0; m < M; m++) {
      std::memcpy(tmp, y + m * ldy, nr * sizeof(float));
      acc[m][0] = _mm256_load_ps(tmp);
      acc[m][1] = _mm256_load_ps(tmp + 8);
    }
  }
  for (size_t k = 0; k < kc; k++) {
    const __m256 w0 = _mm256_loadu_ps(panel + k * kNr);
    const __m256 w1 = _mm256_loadu_ps(panel + k * kNr + 8);
    for (size_t m = 0; m < M; m++) {
      const __m256 xb = _mm256_broadcast_ss(x + m * ldx + k);
      acc[m][0] = _mm256_fmadd_ps(w0, xb, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(w1, xb, acc[m][1]);
    }
  }
  if (nr == kNr) {
    for (size_t m = 0; m < M; m++) {
      _mm256_storeu_ps(y + m * ldy, acc[m][0]);
      _mm256_storeu_ps(y + m * ldy + 8, acc[m][1]);
    }
  } else {
    alignas(32) float tmp[kNr];
    for (size_t m = 0; m < M; m++) {
      _mm256_store_ps(tmp, acc[m][0]);
      _mm256_store_ps(tmp + 8, acc[m][1]);
      std::memcpy(y + m * ldy, tmp, nr * sizeof(float));
    }
  }
}

// The same tile with one 16-lane vector per panel row of k: 12 tokens x 16 rows in 12 zmm
// accumulators, one panel load and twelve broadcast FMAs per k. Each lane is still one fma chain
// over k in increasing order, so the bytes are the AVX2 kernel's and the scalar twin's.
#define DC_AVX512 __attribute__((target("avx512f,avx2,fma")))

template <size_t M>
DC_AVX512 void tile_avx512(const float* panel, size_t kc, const float* x, size_t ldx, float* y, size_t ldy, size_t nr, bool first) {
  static_assert(kNr == 16, "one zmm per panel row");
  __m512 acc[M];
  const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
  if (first) {
    for (size_t m = 0; m < M; m++) acc[m] = _mm512_setzero_ps();
  } else {
    for (size_t m = 0; m < M; m++) acc[m] = _mm512_maskz_loadu_ps(mask, y + m * ldy);
  }
  for (size_t k = 0; k < kc; k++) {
    const __m512 w0 = _mm512_loadu_ps(panel + k * kNr);
    for (size_t m = 0; m < M; m++) acc[m] = _mm512_fmadd_ps(w0, _mm512_set1_ps(x[m * ldx + k]), acc[m]);
  }
  for (size_t m = 0; m < M; m++) _mm512_mask_storeu_ps(y + m * ldy, mask, acc[m]);
}
#endif

using TileFn = void (*)(const float*, size_t, const float*, size_t, float*, size_t, size_t, bool);

enum class Level { Scalar, Avx2, Avx512 };

Level level_now() {
  if (use_avx512()) return Level::Avx512;
  return use_avx2() ? Level::Avx2 : Level::Scalar;
}

size_t mr_of(Level level) { return level == Level::Avx512 ? kMr512 : kMr; }

TileFn tile_for(size_t m, Level level) {
#if defined(__x86_64__)
  if (level == Level::Avx512) {
    switch (m) {
      case 1: return tile_avx512<1>;
      case 2: return tile_avx512<2>;
      case 3: return tile_avx512<3>;
      case 4: return tile_avx512<4>;
      case 5: return tile_avx512<5>;
      case 6: return tile_avx512<6>;
      case 7: return tile_avx512<7>;
      case 8: return tile_avx512<8>;
      case 9: return tile_avx512<9>;
      case 10: return tile_avx512<10>;
      case 11: return tile_avx512<11>;
      default: return tile_avx512<12>;
    }
  }
  if (level == Level::Avx2) {
    switch (m) {
      case 1: return tile_avx2<1>;
      case 2: return tile_avx2<2>;
      case 3: return tile_avx2<3>;
      case 4: return tile_avx2<4>;
      case 5: return tile_avx2<5>;
      default: return tile_avx2<6>;
    }
  }
#endif
  switch (m) {
    case 1: return tile_scalar<1>;
    case 2: return tile_scalar<2>;
    case 3: return tile_scalar<3>;
    case 4: return tile_scalar<4>;
    case 5: return tile_scalar<5>;
    default: return tile_scalar<6>;
  }
}

// Per-thread panel buffers.
struct Scratch {
  std::vector<float> panel, rows;
  Scratch(const GemmWeight& w, size_t in) : panel(std::min(kKc, in) * kNr), rows(w.type == ggml::kF32 ? 0 : std::min(kKc, in) * kNr) {}
};

// Panels [p0, p1) x tokens [t0, t1).
void gemm_block(const GemmWeight& w, const float* x, float* y, size_t in, size_t out, size_t ldy, size_t p0, size_t p1,
                size_t t0, size_t t1, Level level, Scratch& s) {
  float* panel = s.panel.data();
  const size_t mr = mr_of(level);
  const TileFn full = tile_for(mr, level);
  for (size_t tb0 = t0; tb0 < t1; tb0 += kTb) {
    const size_t tb1 = std::min(t1, tb0 + kTb);
    const TileFn tail = tile_for((tb1 - tb0) % mr, level);
    for (size_t p = p0; p < p1; p++) {
      const size_t o0 = p * kNr, nr = std::min(kNr, out - o0);
      for (size_t k0 = 0; k0 < in; k0 += kKc) {
        const size_t kc = std::min(kKc, in - k0);
        pack(w, o0, nr, k0, kc, panel, s.rows.data());
        size_t t = tb0;
        for (; t + mr <= tb1; t += mr) full(panel, kc, x + t * in + k0, in, y + t * ldy + o0, ldy, nr, k0 == 0);
        if (t < tb1) tail(panel, kc, x + t * in + k0, in, y + t * ldy + o0, ldy, nr, k0 == 0);
      }
    }
  }
}

}  // namespace

void gemm(const GemmWeight& w, const float* x, float* y, size_t T, size_t in, size_t out, size_t ldy, int threads) {
  if (T == 0 || out == 0) return;
  if (in == 0) {
    for (size_t t = 0; t < T; t++) std::fill(y + t * ldy, y + t * ldy + out, 0.0f);
    return;
  }
  const Level level = level_now();
  const size_t mr = mr_of(level);
  const size_t panels = (out + kNr - 1) / kNr;
  // Below ~1M multiply-adds starting a thread costs more than it saves.
  const size_t t = T * out * in < (size_t{1} << 20) ? 1 : static_cast<size_t>(std::max(1, threads));
  if (t == 1) {
    Scratch s(w, in);
    gemm_block(w, x, y, in, out, ldy, 0, panels, 0, T, level, s);
    return;
  }
  // Work units of a few panels x a token range, handed out from a counter so a thread that the
  // system delays leaves its share to the others (each element is computed the same way whichever
  // thread takes it). Few weight rows and many tokens: the tokens are split too.
  const size_t pchunk = std::max<size_t>(1, panels / (t * 4));
  const size_t np = (panels + pchunk - 1) / pchunk;
  size_t tchunk = T;
  if (np < t * 4) tchunk = std::max<size_t>(mr * 4, ((T + t * 4 - 1) / (t * 4) + mr - 1) / mr * mr);
  const size_t nt = (T + tchunk - 1) / tchunk;
  const size_t units = np * nt;
  std::atomic<size_t> next{0};
  parallel_for(std::min(t, units), static_cast<int>(std::min(t, units)), 1, [&](size_t, size_t) {
    Scratch s(w, in);
    for (size_t u; (u = next.fetch_add(1)) < units;) {
      const size_t pi = u % np, ti = u / np;
      gemm_block(w, x, y, in, out, ldy, pi * pchunk, std::min(panels, (pi + 1) * pchunk), ti * tchunk,
                 std::min(T, (ti + 1) * tchunk), level, s);
    }
  });
}

}  // namespace deepcast
