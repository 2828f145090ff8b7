// Argument helpers for kernel exports: typed views over JS buffers, checked sizes.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace deepcast {

struct Bytes {
  uint8_t* data = nullptr;
  size_t size = 0;
};

// Any ArrayBufferView (Buffer, Uint8Array, Float32Array, ...) as raw bytes.
inline bool get_bytes(const Napi::CallbackInfo& info, size_t i, const char* what, Bytes& out) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsTypedArray()) {
    Napi::TypeError::New(env, std::string(what) + ": expected a TypedArray or Buffer")
        .ThrowAsJavaScriptException();
    return false;
  }
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  out.data = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset();
  out.size = ta.ByteLength();
  return true;
}

inline bool get_size(const Napi::CallbackInfo& info, size_t i, const char* what, size_t& out) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(env, std::string(what) + ": expected a number").ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != static_cast<double>(static_cast<size_t>(v))) {
    Napi::RangeError::New(env, std::string(what) + ": expected a non-negative integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  out = static_cast<size_t>(v);
  return true;
}

inline int get_threads(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) return 1;
  int t = info[i].As<Napi::Number>().Int32Value();
  return t < 1 ? 1 : t;
}

inline bool require(Napi::Env env, bool ok, const std::string& message) {
  if (!ok) Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
  return ok;
}

}  // namespace deepcast
