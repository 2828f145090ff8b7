// Keeps freed heap memory in the process for reuse (glibc only).
//
// V8 allocates every ArrayBuffer with calloc; glibc serves blocks of 128 KiB and more with a fresh
// mmap and returns them with munmap when freed. The forward pass allocates and drops tens of
// megabytes of activations per layer step, so each step paid for page faults (the kernel zeroing
// the pages again) and munmap's TLB flushes: ~20% of imatrix's CPU time on the fixture, as system time.
// Raising the mmap and trim thresholds lets freed blocks go back to the heap and be reused; the
// process's peak stays what it was (the same buffers are live at the peak).
#include <napi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "registry.h"

namespace deepcast {

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
  bool ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, 2 * mmap_threshold) == 1;
  return Napi::Boolean::New(env, ok);
#else
  (void)bytes;
  return Napi::Boolean::New(env, false);
#endif
}

DEEPCAST_EXPORT("keepFreedMemory", KeepFreedMemory);

}  // namespace deepcast
