// Run-time loader of the CUDA backend (build/cuda/libdeepcast_cuda.so, built by
// native/cuda/build.sh with nvcc). Plain C++: the addon's build needs no CUDA, and the library is
// opened with dlopen only when JS asks for it, so machines without CUDA never touch it.
//
//   cudaInit(libPath, device = 0) -> null on success, else the reason (string)
//   cudaAvailable()               -> whether cudaInit succeeded
//   cudaDeviceInfo()              -> "NVIDIA H200, sm_90, ..." after a successful cudaInit, else null
//   cudaMatmul(x, w, y, T, in, out, ldy = out)   y = x W^T on the GPU (throws on a CUDA error)
//   cudaLastTimes()               -> {uploadMs, kernelMs, downloadMs} of the last matmul, or null
//   cudaRelease()                 -> frees the library's device buffers
#include <dlfcn.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "napi_util.h"
#include "registry.h"

namespace deepcast {
namespace {

// The C ABI of native/cuda/deepcast_cuda.cu (version 1).
constexpr int kCudaAbi = 1;
using AbiVersionFn = int (*)();
using InitFn = int (*)(int device, char* info, size_t infolen);
using MatmulFn = int (*)(const float* x, const float* w, float* y, size_t T, size_t in, size_t out, size_t ldy,
                         char* err, size_t errlen);
using ReleaseFn = void (*)();
using LastTimesFn = int (*)(float* times);

struct CudaLib {
  std::string path;
  void* handle = nullptr;
  InitFn init = nullptr;
  MatmulFn matmul = nullptr;
  ReleaseFn release = nullptr;
  LastTimesFn last_times = nullptr;
};

std::mutex g_mutex;
CudaLib g_lib;
bool g_ready = false;
std::string g_device_info;

template <typename Fn>
bool symbol(void* handle, const char* name, Fn& out, std::string& reason) {
  dlerror();
  void* p = dlsym(handle, name);
  if (p == nullptr) {
    const char* e = dlerror();
    reason = std::string("missing symbol ") + name + (e ? std::string(": ") + e : std::string());
    return false;
  }
  out = reinterpret_cast<Fn>(p);
  return true;
}

// Opens the library (once per path; a handle is never closed, since the CUDA runtime inside it
// registers exit handlers) and resolves its entry points. Empty string on success.
std::string open_library(const std::string& path) {
  if (g_lib.handle != nullptr && g_lib.path == path) return "";
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char* e = dlerror();
    return "cannot load " + path + ": " + (e ? e : "dlopen failed") + " (build it with: bash native/cuda/build.sh)";
  }
  std::string reason;
  AbiVersionFn abi = nullptr;
  CudaLib lib;
  lib.path = path;
  lib.handle = h;
  if (!symbol(h, "dc_cuda_abi_version", abi, reason) || !symbol(h, "dc_cuda_init", lib.init, reason) ||
      !symbol(h, "dc_cuda_matmul", lib.matmul, reason) || !symbol(h, "dc_cuda_release", lib.release, reason) ||
      !symbol(h, "dc_cuda_last_times", lib.last_times, reason))
    return path + ": " + reason;
  const int v = abi();
  if (v != kCudaAbi)
    return path + ": ABI version " + std::to_string(v) + ", the addon expects " + std::to_string(kCudaAbi) +
           " (rebuild with: bash native/cuda/build.sh --force)";
  g_lib = lib;
  return "";
}

Napi::Value CudaInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "cudaInit: expected the path of libdeepcast_cuda.so").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  int device = 0;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber() || info[1].As<Napi::Number>().DoubleValue() < 0) {
      Napi::TypeError::New(env, "cudaInit: device must be a non-negative number").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    device = info[1].As<Napi::Number>().Int32Value();
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  g_ready = false;
  g_device_info.clear();
  std::string reason = open_library(path);
  if (!reason.empty()) return Napi::String::New(env, reason);
  char buf[512] = {0};
  const int rc = g_lib.init(device, buf, sizeof buf);
  if (rc != 0) return Napi::String::New(env, buf[0] ? std::string(buf) : "dc_cuda_init failed (" + std::to_string(rc) + ")");
  g_ready = true;
  g_device_info = buf;
  return env.Null();
}

Napi::Value CudaAvailable(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return Napi::Boolean::New(info.Env(), g_ready);
}

Napi::Value CudaDeviceInfo(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_ready) return info.Env().Null();
  return Napi::String::New(info.Env(), g_device_info);
}

bool get_f32_view(const Napi::CallbackInfo& info, size_t i, const char* what, Bytes& b) {
  if (!get_bytes(info, i, what, b)) return false;
  return require(info.Env(), reinterpret_cast<uintptr_t>(b.data) % 4 == 0 && b.size % 4 == 0,
                 std::string(what) + " must be 4-byte aligned float32 data");
}

// cudaMatmul(x f32[T*in], w f32[out*in], y f32[(T-1)*ldy + out], T, in, out, ldy = out)
Napi::Value CudaMatmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes xb, wb, yb;
  size_t T = 0, in = 0, out = 0;
  if (!get_f32_view(info, 0, "x", xb) || !get_f32_view(info, 1, "w", wb) || !get_f32_view(info, 2, "y", yb) ||
      !get_size(info, 3, "tokens", T) || !get_size(info, 4, "in", in) || !get_size(info, 5, "out", out))
    return env.Undefined();
  size_t ldy = out;
  if (info.Length() > 6 && !info[6].IsUndefined() && !get_size(info, 6, "ldy", ldy)) return env.Undefined();
  if (!require(env, xb.size / 4 == T * in, "x has " + std::to_string(xb.size / 4) + " values, expected " + std::to_string(T * in)) ||
      !require(env, wb.size / 4 == out * in, "w has " + std::to_string(wb.size / 4) + " values, expected " + std::to_string(out * in)) ||
      !require(env, ldy >= out, "ldy must be >= out") ||
      !require(env, T == 0 || yb.size / 4 >= (T - 1) * ldy + out, "y is too small"))
    return env.Undefined();
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_ready) {
    Napi::Error::New(env, "cudaMatmul: CUDA is not initialised (call cudaInit first)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  char err[512] = {0};
  const int rc = g_lib.matmul(reinterpret_cast<const float*>(xb.data), reinterpret_cast<const float*>(wb.data),
                              reinterpret_cast<float*>(yb.data), T, in, out, ldy, err, sizeof err);
  if (rc != 0) {
    Napi::Error::New(env, std::string("cudaMatmul: ") + (err[0] ? err : "failed")).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

Napi::Value CudaLastTimes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_mutex);
  float t[3] = {0, 0, 0};
  if (!g_ready || g_lib.last_times == nullptr || g_lib.last_times(t) != 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("uploadMs", Napi::Number::New(env, t[0]));
  o.Set("kernelMs", Napi::Number::New(env, t[1]));
  o.Set("downloadMs", Napi::Number::New(env, t[2]));
  return o;
}

Napi::Value CudaRelease(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_lib.release != nullptr) g_lib.release();
  return info.Env().Undefined();
}

}  // namespace

DEEPCAST_EXPORT("cudaInit", CudaInit);
DEEPCAST_EXPORT("cudaAvailable", CudaAvailable);
DEEPCAST_EXPORT("cudaDeviceInfo", CudaDeviceInfo);
DEEPCAST_EXPORT("cudaMatmul", CudaMatmul);
DEEPCAST_EXPORT("cudaLastTimes", CudaLastTimes);
DEEPCAST_EXPORT("cudaRelease", CudaRelease);

}  // namespace deepcast
