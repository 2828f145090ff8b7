#include "cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace deepcast {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
           __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool has = [] {
    __builtin_cpu_init();
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  }();
  return has;
#else
  return false;
#endif
}

static Simd initial_simd() {
  const char* env = std::getenv("DEEPCAST_SIMD");
  if (env && std::strcmp(env, "scalar") == 0) return Simd::Scalar;
  return cpu_has_avx2() ? Simd::Avx2 : Simd::Scalar;
}

static std::atomic<int> g_simd{static_cast<int>(initial_simd())};

Simd active_simd() { return static_cast<Simd>(g_simd.load(std::memory_order_relaxed)); }

static bool initial_avx512() {
  const char* env = std::getenv("DEEPCAST_SIMD");
  if (env && (std::strcmp(env, "scalar") == 0 || std::strcmp(env, "avx2") == 0)) return false;
  return cpu_has_avx512();
}

static std::atomic<bool> g_avx512{initial_avx512()};

bool use_avx512() { return active_simd() == Simd::Avx2 && g_avx512.load(std::memory_order_relaxed); }

bool set_avx512(bool on) {
  if (on && !cpu_has_avx512()) return false;
  g_avx512.store(on, std::memory_order_relaxed);
  return true;
}

bool set_simd(Simd level) {
  if (level == Simd::Avx2 && !cpu_has_avx2()) return false;
  g_simd.store(static_cast<int>(level), std::memory_order_relaxed);
  return true;
}

}  // namespace deepcast
