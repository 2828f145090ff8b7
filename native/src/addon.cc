#include <napi.h>

#include "cpu.h"
#include "registry.h"

namespace deepcast {

std::vector<ExportEntry>& exports_registry() {
  static std::vector<ExportEntry> entries;
  return entries;
}

static Napi::Value SimdLevel(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), active_simd() == Simd::Avx2 ? "avx2" : "scalar");
}

static Napi::Value SetSimd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string level = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  bool ok;
  // "avx2" also turns the GEMM's AVX-512 kernel off, "avx512" on (cpu.h use_avx512); the level
  // of every other kernel is then AVX2.
  if (level == "scalar") ok = set_simd(Simd::Scalar);
  else if (level == "avx2") ok = set_simd(Simd::Avx2) && set_avx512(false);
  else if (level == "avx512") ok = cpu_has_avx512() && set_simd(Simd::Avx2) && set_avx512(true);
  else if (level == "auto") ok = set_simd(cpu_has_avx2() ? Simd::Avx2 : Simd::Scalar) && set_avx512(cpu_has_avx512());
  else {
    Napi::TypeError::New(env, "setSimd: expected 'scalar', 'avx2', 'avx512' or 'auto'").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Boolean::New(env, ok);
}

// The package version this addon was built from (binding.gyp passes package.json's); the loader
// refuses an addon built from another version, whose entry points may differ.
#define DEEPCAST_STR_(x) #x
#define DEEPCAST_STR(x) DEEPCAST_STR_(x)
static Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), DEEPCAST_STR(DEEPCAST_VERSION));
}

static Napi::Value HasAvx2(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), cpu_has_avx2());
}

DEEPCAST_EXPORT("simdLevel", SimdLevel);
DEEPCAST_EXPORT("setSimd", SetSimd);
static Napi::Value HasAvx512(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), cpu_has_avx512());
}

DEEPCAST_EXPORT("hasAvx2", HasAvx2);
DEEPCAST_EXPORT("hasAvx512", HasAvx512);
DEEPCAST_EXPORT("version", Version);

}  // namespace deepcast

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  for (const auto& e : deepcast::exports_registry()) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  return exports;
}

NODE_API_MODULE(deepcast_native, InitAddon)
