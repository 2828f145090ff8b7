// Each kernel file registers its exports at static-initialisation time, so adding a kernel
// file never touches addon.cc.
#pragma once
#include <napi.h>
#include <vector>

namespace deepcast {

using ExportFn = Napi::Value (*)(const Napi::CallbackInfo&);

struct ExportEntry {
  const char* name;
  ExportFn fn;
};

std::vector<ExportEntry>& exports_registry();

struct Registrar {
  Registrar(const char* name, ExportFn fn) { exports_registry().push_back({name, fn}); }
};

#define DEEPCAST_CONCAT_(a, b) a##b
#define DEEPCAST_CONCAT(a, b) DEEPCAST_CONCAT_(a, b)
#define DEEPCAST_EXPORT(name, fn) \
  static ::deepcast::Registrar DEEPCAST_CONCAT(deepcast_registrar_, __LINE__)(name, fn)

}  // namespace deepcast
