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
  if (level == "scalar") ok = set_simd(Simd::Scalar);
  else if (level == "avx2") ok = set_simd(Simd::Avx2);
  else if (level == "auto") ok = set_simd(cpu_has_avx2() ? Simd::Avx2 : Simd::Scalar);
  else {
    Napi::TypeError::New(env, "setSimd: expected 'scalar', 'avx2' or 'auto'").ThrowAsJavaScriptException();
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
DEEPCAST_EXPORT("hasAvx2", HasAvx2);
DEEPCAST_EXPORT("version", Version);

}  // namespace deepcast

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  for (const auto& e : deepcast::exports_registry()) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  return exports;
}

NODE_API_MODULE(deepcast_native, InitAddon)
