// The lattices of the 2-bit/1-bit IQ types, their neighbour lists and dequantization codebooks.
// Reproduces iq2xs_init_impl of ggml/src/ggml-quants.c (llama.cpp v0.4.0): same kmap, same
// neighbour records, same record order (slot u ascending), built once per lattice at first use.
#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu.h"
#include "ggml_iq2.h"
#include "napi_util.h"
#include "parallel.h"
#include "registry.h"

namespace deepcast {
namespace ggml {

namespace {

#include "ggml_iq2_lattice.inc"

struct LatticeSpec {
  const uint16_t* levels;
  int size;
  int nwant;  // neighbours: every entry within the nwant smallest distinct distances
  bool iq1;   // codebook: int8 -1/0/+1 (IQ1) instead of the IQ2 magnitudes 8/25/43
};

// gindex as ggml numbers them: 0 IQ2_XXS, 1 IQ2_XS, 2 IQ1_S/IQ1_M, 3 IQ2_S.
const LatticeSpec kSpecs[4] = {
    {kLattice2bit256, 256, 2, false},
    {kLattice2bit512, 512, 2, false},
    {kLattice1bit2048, 2048, 3, true},
    {kLattice2bit1024, 1024, 1, false},
};

int lattice_index(int id) {
  switch (id) {
    case kIQ2_XXS: return 0;
    case kIQ2_XS: return 1;
    case kIQ1_S:
    case kIQ1_M: return 2;
    default: return 3;
  }
}

struct Built {
  std::vector<uint64_t> point, codebook;
  std::vector<int32_t> kmap;
  std::vector<uint16_t> neighbours, record_levels;
  IqLattice view{};
};

// Squared distance between two groups of four 2-bit levels (bits 2k..2k+1 each), in units of
// ggml's: its coordinates are 2*l+1, so its distances are 4x these, in the same order.
int quad_distance(int a, int c) {
  int sum = 0;
  for (int k = 0; k < 4; k++) {
    const int diff = ((a >> (2 * k)) & 3) - ((c >> (2 * k)) & 3);
    sum += diff * diff;
  }
  return sum;
}

// Neighbour record of the off-lattice slot u: the entries j whose squared distance to the point of
// u is among the nwant smallest distinct distances, ordered by (distance, j) -- what ggml's qsort
// with iq2_compare_func (a total order) produces. tlo[j] / thi[j]: entry j's distance to u over
// coordinates 0..3 / 4..7 (at most 36 each), so every loop below is over bytes, and vectorizes.
void neighbour_record(const LatticeSpec& s, const uint8_t* tlo, const uint8_t* thi, uint8_t* d2,
                      std::vector<uint16_t>& out) {
  const int n = s.size;  // a multiple of 8
  uint8_t m = 255;
  for (int j = 0; j < n; j++) {
    d2[j] = static_cast<uint8_t>(tlo[j] + thi[j]);
    m = d2[j] < m ? d2[j] : m;
  }
  // The nwant smallest distinct distances, ascending.
  int best[3] = {m, 0, 0};
  int nbest = 1;
  for (; nbest < s.nwant; nbest++) {
    // d - (floor + 1) in bytes: 0..71 above floor, 184 or more (wrapped) at or below it.
    const uint8_t shift = static_cast<uint8_t>(best[nbest - 1] + 1);
    uint8_t next = 255;
    for (int j = 0; j < n; j++) {
      const uint8_t v = static_cast<uint8_t>(d2[j] - shift);
      next = v < next ? v : next;
    }
    if (next > 72) break;
    best[nbest] = next + shift;
  }
  // One pass over the entries, 8 at a time: a word with no byte <= last is skipped (the byte test
  // of "Bit Twiddling Hacks", valid for bytes and bound below 128); each kept entry goes to the
  // list of its distance, in j order.
  uint16_t kept[3][2048];
  int nkept[3] = {0, 0, 0};
  const int last = best[nbest - 1];
  const uint64_t ones = 0x0101010101010101ull, below = ones * static_cast<uint64_t>(last + 1);
  for (int j0 = 0; j0 < n; j0 += 8) {
    uint64_t w;
    std::memcpy(&w, d2 + j0, 8);
    if (((w - below) & ~w & (ones << 7)) == 0) continue;
    for (int j = j0; j < j0 + 8; j++) {
      const int d = d2[j];
      if (d > last) continue;
      int r = 0;
      while (best[r] != d) r++;  // every distance <= last is a kept one
      kept[r][nkept[r]++] = static_cast<uint16_t>(j);
    }
  }
  out.push_back(static_cast<uint16_t>(nkept[0] + nkept[1] + nkept[2]));
  for (int r = 0; r < nbest; r++) out.insert(out.end(), kept[r], kept[r] + nkept[r]);
}

void build(const LatticeSpec& s, Built& b) {
  b.point.resize(s.size);
  b.codebook.resize(s.size);
  static const uint8_t kIq2Magnitude[3] = {8, 25, 43};
  for (int j = 0; j < s.size; j++) {
    uint64_t p = 0, c = 0;
    for (int k = 0; k < 8; k++) {
      const int l = (s.levels[j] >> (2 * k)) & 3;
      p |= static_cast<uint64_t>(2 * l + 1) << (8 * k);
      const uint8_t v = s.iq1 ? static_cast<uint8_t>(static_cast<int8_t>(l - 1)) : kIq2Magnitude[l];
      c |= static_cast<uint64_t>(v) << (8 * k);
    }
    b.point[j] = p;
    b.codebook[j] = c;
  }
  b.kmap.assign(kIqKmapSize, -1);
  for (int j = 0; j < s.size; j++) b.kmap[s.levels[j]] = j;

  // Records of the off-lattice slots, in slot order; threads fill contiguous slot ranges.
  // Per group value a (four levels) and entry j: the distance over the low / high coordinates.
  const size_t size = static_cast<size_t>(s.size);
  std::vector<uint8_t> tlo(256 * size), thi(256 * size);
  for (int a = 0; a < 256; a++) {
    int q[256];
    for (int c = 0; c < 256; c++) q[c] = quad_distance(a, c);
    for (size_t j = 0; j < size; j++) {
      tlo[a * size + j] = static_cast<uint8_t>(q[s.levels[j] & 255]);
      thi[a * size + j] = static_cast<uint8_t>(q[s.levels[j] >> 8]);
    }
  }
  const int nthreads = static_cast<int>(std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
  const size_t chunk = (kIqKmapSize + nthreads - 1) / nthreads;
  std::vector<std::vector<uint16_t>> parts(static_cast<size_t>(nthreads));
  parallel_for(static_cast<size_t>(nthreads), nthreads, 1, [&](size_t t0, size_t t1) {
    std::vector<uint8_t> d2(size);
    for (size_t t = t0; t < t1; t++) {
      const size_t u1 = std::min<size_t>(kIqKmapSize, (t + 1) * chunk);
      for (size_t u = t * chunk; u < u1; u++)
        if (b.kmap[u] < 0)
          neighbour_record(s, tlo.data() + (u & 255) * size, thi.data() + (u >> 8) * size, d2.data(), parts[t]);
    }
  });
  size_t total = 0;
  for (auto& p : parts) total += p.size();
  b.neighbours.reserve(total);
  for (auto& p : parts) b.neighbours.insert(b.neighbours.end(), p.begin(), p.end());
  size_t off = 0;
  for (int u = 0; u < kIqKmapSize; u++) {
    if (b.kmap[u] >= 0) continue;
    b.kmap[u] = -static_cast<int32_t>(off + 1);
    off += 1 + b.neighbours[off];
  }
  // Record heads (counts) get a meaningless value; they are never read as levels.
  b.record_levels.assign(b.neighbours.size() + 8, 0);
  for (size_t i = 0; i < b.neighbours.size(); i++) b.record_levels[i] = s.levels[b.neighbours[i] % size];
  b.view = {s.size,         b.point.data(),    b.kmap.data(), b.neighbours.data(), b.neighbours.size(),
            b.codebook.data(), b.record_levels.data()};
}

Built g_built[4];
std::once_flag g_once[4];

}  // namespace

namespace {

int nearest_listed_scalar(const IqLattice& g, int u, const float (*term)[3]) {
  const uint16_t* nb = g.neighbours - g.kmap[u] - 1;
  const int count = nb[0];
  float best_d2 = 3.40282347e+38f;
  int best = -1;
  for (int j = 1; j <= count; j++) {
    const uint64_t p = g.point[nb[j]];
    float d2 = 0;
    for (int i = 0; i < 8; i++) d2 += term[i][(p >> (8 * i + 1)) & 3];
    if (d2 < best_d2) {
      best_d2 = d2;
      best = nb[j];
    }
  }
  return best;
}

#if defined(__x86_64__)
// 8 listed entries per step, their levels loaded from record_levels: lane sums add the same terms
// in the same order. A step none of whose lanes is below the best so far changes nothing; otherwise
// its lanes are replayed in list order with the scalar test.
__attribute__((target("avx2"))) int nearest_listed_avx2(const IqLattice& g, int u, const float (*term)[3]) {
  const size_t off = static_cast<size_t>(-g.kmap[u] - 1);
  const uint16_t* nb = g.neighbours + off;
  const uint16_t* lvs = g.record_levels + off;
  const int count = nb[0];
  __m256 tv[8];
  for (int i = 0; i < 8; i++) tv[i] = _mm256_setr_ps(term[i][0], term[i][1], term[i][2], 0, 0, 0, 0, 0);
  const __m256i three = _mm256_set1_epi32(3);
  float best_d2 = 3.40282347e+38f;
  int best = -1;
  for (int j = 1; j <= count; j += 8) {
    const int lanes = count + 1 - j < 8 ? count + 1 - j : 8;
    __m256i lv = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lvs + j)));
    __m256 d2 = _mm256_setzero_ps();
    for (int i = 0; i < 8; i++) {
      d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(tv[i], _mm256_and_si256(lv, three)));
      lv = _mm256_srli_epi32(lv, 2);
    }
    const int below = _mm256_movemask_ps(_mm256_cmp_ps(d2, _mm256_set1_ps(best_d2), _CMP_LT_OQ)) & ((1 << lanes) - 1);
    if (!below) continue;
    alignas(32) float d[8];
    _mm256_store_ps(d, d2);
    for (int k = 0; k < lanes; k++) {
      if (d[k] < best_d2) {
        best_d2 = d[k];
        best = nb[j + k];
      }
    }
  }
  return best;
}
#endif

}  // namespace

int nearest_listed(const IqLattice& g, int u, const float (*term)[3]) {
#if defined(__x86_64__)
  if (use_avx2()) return nearest_listed_avx2(g, u, term);
#endif
  return nearest_listed_scalar(g, u, term);
}

const IqLattice& iq2_lattice(int id) {
  const int g = lattice_index(id);
  std::call_once(g_once[g], [g] { build(kSpecs[g], g_built[g]); });
  return g_built[g].view;
}

}  // namespace ggml

namespace {

template <typename T>
Napi::Value copy_out(Napi::Env env, const T* data, size_t count) {
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, count * sizeof(T));
  std::copy(data, data + count, static_cast<T*>(ab.Data()));
  return Napi::Uint8Array::New(env, count * sizeof(T), ab, 0);
}

// ggmlIqLattice(type) -> { kmap, neighbours, codebook } as little-endian bytes (int32, uint16,
// 8 bytes per entry): what the quantizer searches and dequantization reads, for checking against ggml.
Napi::Value GgmlIqLattice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int id = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : -1;
  if (!require(env, id == ggml::kIQ2_XXS || id == ggml::kIQ2_XS || id == ggml::kIQ2_S || id == ggml::kIQ1_S ||
                        id == ggml::kIQ1_M,
               "ggmlIqLattice: ggml type id " + std::to_string(id) + " has no 2-bit lattice"))
    return env.Undefined();
  const ggml::IqLattice& l = ggml::iq2_lattice(id);
  Napi::Object o = Napi::Object::New(env);
  o.Set("kmap", copy_out(env, l.kmap, ggml::kIqKmapSize));
  o.Set("neighbours", copy_out(env, l.neighbours, l.neighbours_len));
  o.Set("codebook", copy_out(env, l.codebook, static_cast<size_t>(l.size)));
  return o;
}

}  // namespace

DEEPCAST_EXPORT("ggmlIqLattice", GgmlIqLattice);

}  // namespace deepcast
