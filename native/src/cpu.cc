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

static Simd initial_simd() {
  const char* env = std::getenv("DEEPCAST_SIMD");
  if (env && std::strcmp(env, "scalar") == 0) return Simd::Scalar;
  return cpu_has_avx2() ? Simd::Avx2 : Simd::Scalar;
}

static std::atomic<int> g_simd{static_cast<int>(initial_simd())};

Simd active_simd() { return static_cast<Simd>(g_simd.load(std::memory_order_relaxed)); }

bool set_simd(Simd level) {
  if (level == Simd::Avx2 && !cpu_has_avx2()) return false;
  g_simd.store(static_cast<int>(level), std::memory_order_relaxed);
  return true;
}

}  // namespace deepcast
