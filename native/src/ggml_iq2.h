// IQ types on the 8-dimensional 2-bit lattice: IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, byte-identical
// to ggml-base of llama.cpp v0.4.0 (ggml/src/ggml-quants.c: iq2xs_init_impl, quantize_row_iq2_*_impl,
// quantize_row_iq1_*_impl, dequantize_row_iq2_* / iq1_*). Float rules as in ggml_quants.h.
//
// Files: ggml_iq2_grid.cc (the lattices, the neighbour lists built at first use, the dequantization
// codebooks), ggml_iq2.cc (IQ2_XXS, IQ2_XS, IQ2_S), ggml_iq1.cc (IQ1_S, IQ1_M).
#pragma once
#include <cstddef>
#include <cstdint>

namespace deepcast {
namespace ggml {

// ggml type ids (enum ggml_type) and block sizes (sizeof(block_*), 256 values per block).
constexpr int kIQ2_XXS = 16, kIQ2_XS = 17, kIQ1_S = 19, kIQ2_S = 22, kIQ1_M = 29;
constexpr size_t kIQ2_XXSBytes = 2 + 64;         // d, qs[32] (u16)
constexpr size_t kIQ2_XSBytes = 2 + 64 + 8;      // d, qs[32] (u16), scales[8]
constexpr size_t kIQ2_SBytes = 2 + 64 + 8 + 8;   // d, qs[64], qh[8], scales[8]
constexpr size_t kIQ1_SBytes = 2 + 32 + 16;      // d, qs[32], qh[8] (u16)
constexpr size_t kIQ1_MBytes = 32 + 16 + 8;      // qs[32], qh[16], scales[8] (d split over scales)

// ggml asserts quant_weights for these (ggml_quantize_requires_imatrix).
inline bool iq2_requires_imatrix(int id) { return id == kIQ2_XXS || id == kIQ2_XS || id == kIQ1_S; }

// One lattice as iq2xs_init_impl builds it for the quantizer.
//   point[j]: byte k = 2*l_k + 1, l_k the k-th 2-bit level of lattice entry j (the search space).
//   kmap[u]:  u = sum l_k << 2k; the entry index when u is a lattice point, else -(offset+1) of its
//             neighbour record in `neighbours`: [count, j_1 .. j_count], entries with the nwant
//             smallest distinct squared distances, ordered by (distance, index).
//   codebook[j]: the 8 bytes dequantization reads for entry j (ggml-common.h's iq2xxs_grid,
//             iq2xs_grid, iq2s_grid, iq1s_grid): tuned magnitudes 8/25/43 for IQ2, int8 -1/0/+1 for IQ1.
//   record_levels[i]: the 2-bit levels (bits 2k..2k+1) of entry neighbours[i], at the same offsets,
//             plus 8 entries of padding (what the AVX2 search loads, 8 listed entries at a time).
struct IqLattice {
  int size;
  const uint64_t* point;
  const int32_t* kmap;  // kIqKmapSize entries
  const uint16_t* neighbours;
  size_t neighbours_len;
  const uint64_t* codebook;
  const uint16_t* record_levels;
};
constexpr int kIqKmapSize = 43692;

// The lattice a type uses (IQ1_S and IQ1_M share one), built once per process, thread-safe.
const IqLattice& iq2_lattice(int id);

// The loop of ggml's iq2_find_best_neighbour / iq1_find_best_neighbour2 over the record of the
// off-lattice slot u: the first listed entry minimising d2 = sum over i of term[i][level i of the
// entry] (added in i order from 0), or -1 when no d2 is below FLT_MAX (NaN terms). Lanes of AVX2
// when active (cpu.h), with the same result as the scalar loop.
int nearest_listed(const IqLattice& g, int u, const float (*term)[3]);

// ggml's ksigns_iq2xs: 7 sign bits completed to even parity by bit 7.
inline uint8_t iq2_signs8(uint32_t s7) {
  uint32_t p = s7 ^ (s7 >> 4);
  p ^= p >> 2;
  p ^= p >> 1;
  return static_cast<uint8_t>(s7 | ((p & 1) << 7));
}

void quantize_row_iq2_xxs(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq2_xs(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq2_s(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq1_s(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq1_m(const float* x, uint8_t* y, size_t n, const float* qw);

void dequantize_row_iq2_xxs(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq2_xs(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq2_s(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq1_s(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq1_m(const uint8_t* x, float* y, size_t n);

}  // namespace ggml
}  // namespace deepcast
