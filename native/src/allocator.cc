// Keeps freed heap memory in the process for reuse (glibc only).
//
// V8 allocates every ArrayBuffer with calloc; glibc serves blocks of 128 KiB and more with a fresh
// mmap and returns them with munmap when freed. The forward pass allocates and drops tens of
// megabytes of activations per layer step, so each step paid for page faults (the kernel zeroing
// the pages again) and munmap's TLB flushes: ~20% of imatrix's CPU time on the fixture, as system time.
// Raising the mmap and trim thresholds lets freed blocks go back to the heap and be reused; the
// process's peak stays what it was (the same buffers are live at the peak).
//
// The heap is also given huge pages where the kernel has transparent huge pages ("madvise" or
// "always"): it is grown once by HUGE_HEAP bytes of address space (untouched, so not resident) and that
// mapping is marked MADV_HUGEPAGE, so later allocations in it fault 2 MiB at a time instead of one fault
// per 4 KiB page, which on a VM costs microseconds each (`node bench/page-touch.mjs` on the 2-vCPU
// machine of bench/README.md: 12-15 us per 4 KiB page, 1-7 us per page's worth in huge pages). Growth past it (brk
// makes a new, unmarked mapping) gets 4 KiB pages as before. Not done under an address-space limit
// (ulimit -v, prlimit --as), where the reservation would count against it.
#include <napi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#endif

#include "registry.h"

namespace deepcast {

#if defined(__GLIBC__)
constexpr size_t HUGE_HEAP = size_t(1) << 30;

// Marks the process's [heap] mappings MADV_HUGEPAGE; false where there is none or the kernel refuses.
static bool AdviseHugeHeap() {
#if defined(MADV_HUGEPAGE)
  FILE* maps = std::fopen("/proc/self/maps", "r");
  if (!maps) return false;
  char line[512];
  bool ok = false;
  while (std::fgets(line, sizeof line, maps)) {
    if (!std::strstr(line, "[heap]")) continue;
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi > lo) {
      ok = madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0 || ok;
    }
  }
  std::fclose(maps);
  return ok;
#else
  return false;
#endif
}
#endif

static Napi::Value KeepFreedMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "keepFreedMemory: expected the largest block (bytes) to serve from the heap").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  double bytes = info[0].As<Napi::Number>().DoubleValue();
#if defined(__GLIBC__)
  // glibc caps the mmap threshold at HEAP_MAX (32 MiB on 64-bit without a tunable); mallopt refuses more.
  int mmap_threshold = static_cast<int>(bytes > 32.0 * 1024 * 1024 ? 32.0 * 1024 * 1024 : bytes);
  static bool reserved = false;
  struct rlimit as {};
  bool unlimited = getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur == RLIM_INFINITY;
  bool ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1;
  if (ok && unlimited && !reserved && mallopt(M_TRIM_THRESHOLD, HUGE_HEAP + 2 * mmap_threshold) == 1 &&
      mallopt(M_TOP_PAD, HUGE_HEAP) == 1) {
    // one heap block larger than the free top forces a single brk of HUGE_HEAP more (the top pad)
    void* volatile grow = malloc(mmap_threshold - 4096);  // volatile: the compiler may not elide the pair
    free(grow);
    mallopt(M_TOP_PAD, 128 * 1024);  // glibc's default
    reserved = true;
    AdviseHugeHeap();  // an optimization only: a kernel without THP keeps 4 KiB pages
  }
  if (!reserved) ok = ok && mallopt(M_TRIM_THRESHOLD, 2 * mmap_threshold) == 1;
  return Napi::Boolean::New(env, ok);
#else
  (void)bytes;
  return Napi::Boolean::New(env, false);
#endif
}

DEEPCAST_EXPORT("keepFreedMemory", KeepFreedMemory);

}  // namespace deepcast
