// Run-time SIMD selection. The shipped build never uses -march; AVX2/F16C code is compiled per
// function with target attributes and chosen here. Every SIMD kernel has a scalar twin that
// must produce identical bytes (tests compare them).
#pragma once

namespace deepcast {

enum class Simd { Scalar = 0, Avx2 = 1 };

bool cpu_has_avx2();
// AVX-512F (with AVX2/FMA): the forward pass's GEMM has a 16-lane micro-kernel for it.
bool cpu_has_avx512();
// The level kernels use now: the best the CPU has, unless lowered by set_simd() or by the
// DEEPCAST_SIMD=scalar environment variable.
Simd active_simd();
// Returns false when the requested level is not supported by this CPU.
bool set_simd(Simd level);

// Whether the kernels that have an AVX-512 path (gemm.cc) take it: the level is Avx2 (not lowered
// to scalar), the CPU has AVX-512F, and neither set_avx512(false) nor DEEPCAST_SIMD=avx2 turned it
// off. Like every SIMD path it gives the bytes of its scalar twin.
bool use_avx512();
// Returns false when turning it on and the CPU lacks AVX-512F.
bool set_avx512(bool on);

// Whether kernels should take their AVX2 path now (always false off x86-64).
inline bool use_avx2() {
#if defined(__x86_64__)
  return active_simd() == Simd::Avx2;
#else
  return false;
#endif
}

}  // namespace deepcast
