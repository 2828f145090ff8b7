// IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0: rows byte-identical to ggml-base of llama.cpp
// v0.4.0 (80fb11a, ggml/src/ggml-quants.c), under the float rules of ggml_quants.h.
//   ggml_iq3.cc  the 3-bit lattices, their neighbour tables (iq3xs_init_impl) and IQ3_XXS/IQ3_S
//   ggml_iq4.cc  IQ4_NL and IQ4_XS (quantize_row_iq4_nl_impl with ntry = 7, as quantize_iq4_* call it)
//   ggml_tq.cc   TQ1_0 and TQ2_0 (quantize_row_tq*_ref; ggml ignores the imatrix for them)
// qw: n importance weights (ggml's quant_weights for this row) or nullptr.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace deepcast {
namespace ggml {

constexpr int kIQ3_XXS = 18;
constexpr int kIQ4_NL = 20;
constexpr int kIQ3_S = 21;
constexpr int kIQ4_XS = 23;
constexpr int kTQ1_0 = 34;
constexpr int kTQ2_0 = 35;

constexpr size_t kIQ3_XXSBytes = 2 + 3 * 256 / 8;                     // 98
constexpr size_t kIQ3_SBytes = 2 + 256 / 4 + 256 / 32 + 256 / 8 + 4;  // 110
constexpr size_t kIQ4_NLBytes = 2 + 32 / 2;                           // 18 per 32 values
constexpr size_t kIQ4_XSBytes = 2 + 2 + 256 / 64 + 256 / 2;           // 136
constexpr size_t kTQ1_0Bytes = 48 + 4 + 2;                            // 54
constexpr size_t kTQ2_0Bytes = 64 + 2;                                // 66

void quantize_row_iq3_xxs(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq3_s(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq4_nl(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_iq4_xs(const float* x, uint8_t* y, size_t n, const float* qw);
void quantize_row_tq1_0(const float* x, uint8_t* y, size_t n);
void quantize_row_tq2_0(const float* x, uint8_t* y, size_t n);

void dequantize_row_iq3_xxs(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq3_s(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq4_nl(const uint8_t* x, float* y, size_t n);
void dequantize_row_iq4_xs(const uint8_t* x, float* y, size_t n);
void dequantize_row_tq1_0(const uint8_t* x, float* y, size_t n);
void dequantize_row_tq2_0(const uint8_t* x, float* y, size_t n);

// The quantizer's view of a 3-bit lattice (what ggml's iq3xs_init_impl builds), built on first use.
struct Iq3Lattice {
  int size;                      // 256 (IQ3_XXS) or 512 (IQ3_S) points
  std::vector<uint32_t> grid;    // point k: byte i = 2*l_i + 1, l_i in 0..7
  std::vector<int32_t> kmap;     // 4096 slots (4 x 3-bit levels): point index, or -(record offset + 1)
  std::vector<uint16_t> neighbours;  // records [n, j_1 .. j_n] for every slot off the lattice
  // Derived, for the searches: point k's values 2l+1 as floats at coords[4k..4k+3]; `neighbours`
  // carries 8 zeros after the last record so 8 indices can always be loaded at once.
  std::vector<float> coords;
  std::vector<uint32_t> neighbour_points;  // grid[neighbours[i]] for every record entry (0 for counts)
};
const Iq3Lattice& iq3_lattice(int size);

}  // namespace ggml
}  // namespace deepcast
