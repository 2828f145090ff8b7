// libdeepcast_cuda.so: the CUDA side of the forward pass's matmuls, behind a small C ABI that the
// addon (native/src/cuda_loader.cc) loads with dlopen at run time, so neither the addon's build
// nor machines without CUDA need nvcc, CUDA headers or a driver.
//
// Built by native/cuda/build.sh. The CUDA runtime is linked statically (nvcc's default), so the
// library needs only the driver (libcuda.so.1), which the runtime opens itself; without one,
// dc_cuda_init reports "no CUDA device" instead of failing to load.
//
// Memory: three device buffers (x, W, y) kept between calls and grown on demand; every call
// uploads its x and W (the forward streams one layer's weights at a time, so a weight is used
// by one call and then dropped), runs the kernel, and downloads y into the caller's strided rows.
// Calls are serialized by a mutex.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "gemm_kernel.cuh"

#define DC_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kAbiVersion = 1;

std::mutex g_mutex;
bool g_ready = false;
int g_device = -1;

struct DeviceBuffer {
  float* ptr = nullptr;
  size_t capacity = 0;  // floats
};
DeviceBuffer g_x, g_w, g_y;
// Recorded around the last matmul's upload, kernel and download (dc_cuda_last_times).
cudaEvent_t g_events[4] = {nullptr, nullptr, nullptr, nullptr};
bool g_timed = false;

void set_message(char* buf, size_t len, const char* message) {
  if (buf != nullptr && len > 0) std::snprintf(buf, len, "%s", message);
}

// "what: <cuda error string> (cudaErrorName = code)"
bool check(cudaError_t e, const char* what, char* err, size_t errlen) {
  if (e == cudaSuccess) return true;
  if (err != nullptr && errlen > 0)
    std::snprintf(err, errlen, "%s: %s (%s = %d)", what, cudaGetErrorString(e), cudaGetErrorName(e), static_cast<int>(e));
  return false;
}

bool reserve(DeviceBuffer& b, size_t floats, const char* what, char* err, size_t errlen) {
  if (floats <= b.capacity) return true;
  if (b.ptr != nullptr) {
    cudaFree(b.ptr);
    b.ptr = nullptr;
    b.capacity = 0;
  }
  // Grow by 1/4 beyond the request so a sequence of slightly larger tensors does not reallocate
  // every time.
  const size_t want = floats + floats / 4;
  char label[96];
  std::snprintf(label, sizeof label, "cudaMalloc(%s, %zu bytes)", what, want * sizeof(float));
  if (!check(cudaMalloc(reinterpret_cast<void**>(&b.ptr), want * sizeof(float)), label, err, errlen)) {
    b.ptr = nullptr;
    return false;
  }
  b.capacity = want;
  return true;
}

void release_buffers() {
  for (DeviceBuffer* b : {&g_x, &g_w, &g_y}) {
    if (b->ptr != nullptr) cudaFree(b->ptr);
    b->ptr = nullptr;
    b->capacity = 0;
  }
}

}  // namespace

/** The ABI the loader was written against; it refuses a library with another. */
DC_API int dc_cuda_abi_version(void) { return kAbiVersion; }

/**
 * Selects `device` and makes sure the kernel can run on it. Returns 0 and writes a description
 * ("NVIDIA H200, sm_90, 132 SMs, 143771 MiB") to info; or returns -1 with "no CUDA device: ..."
 * (no driver, no device, device index out of range) or -2 with another reason.
 */
DC_API int dc_cuda_init(int device, char* info, size_t infolen) {
  std::lock_guard<std::mutex> lock(g_mutex);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);  // 0 when no driver (libcuda.so.1) could be loaded
    cudaRuntimeGetVersion(&runtime);
    if (info != nullptr && infolen > 0) {
      if (e == cudaErrorInsufficientDriver && driver == 0)
        std::snprintf(info, infolen, "no CUDA device: no NVIDIA driver found (libcuda.so.1 is not loadable)");
      else if (e == cudaErrorInsufficientDriver)
        std::snprintf(info, infolen,
                      "no CUDA device usable: the driver supports CUDA %d.%d, this library's runtime is CUDA %d.%d "
                      "(rebuild it with that machine's nvcc)",
                      driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
      else
        std::snprintf(info, infolen, "no CUDA device: cudaGetDeviceCount failed: %s (%s = %d)", cudaGetErrorString(e),
                      cudaGetErrorName(e), static_cast<int>(e));
    }
    return -1;
  }
  if (count == 0) {
    set_message(info, infolen, "no CUDA device: cudaGetDeviceCount returned 0");
    return -1;
  }
  if (device < 0 || device >= count) {
    if (info != nullptr && infolen > 0)
      std::snprintf(info, infolen, "no CUDA device: device %d requested, %d present", device, count);
    return -1;
  }
  if (g_ready && g_device != device) release_buffers();
  g_ready = false;
  if (!check(cudaSetDevice(device), "cudaSetDevice", info, infolen)) return -2;
  if (!check(cudaFree(nullptr), "creating the CUDA context", info, infolen)) return -2;
  cudaDeviceProp p;
  if (!check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties", info, infolen)) return -2;
  // Fails with cudaErrorNoKernelImageForDevice when the library has neither SASS nor PTX the
  // device can use (see build.sh's -gencode list).
  cudaFuncAttributes attr;
  if (!check(cudaFuncGetAttributes(&attr, deepcast_cuda::gemm_xwt_f32), "loading the GEMM kernel", info, infolen))
    return -2;
  for (cudaEvent_t& ev : g_events) {
    if (ev == nullptr && !check(cudaEventCreate(&ev), "cudaEventCreate", info, infolen)) return -2;
  }
  g_timed = false;
  if (info != nullptr && infolen > 0)
    std::snprintf(info, infolen, "%s, sm_%d%d, %d SMs, %zu MiB, kernel binary sm_%d (PTX %d)", p.name, p.major, p.minor,
                  p.multiProcessorCount, p.totalGlobalMem >> 20, attr.binaryVersion, attr.ptxVersion);
  g_device = device;
  g_ready = true;
  return 0;
}

/**
 * y[t * ldy + o] = sum_i x[t * in + i] * w[o * in + i] for t < T, o < out (y = x W^T, W [out, in]),
 * float32 with float32 accumulation. Host pointers; synchronous. Returns 0, or -1 with a reason.
 */
DC_API int dc_cuda_matmul(const float* x, const float* w, float* y, size_t T, size_t in, size_t out, size_t ldy,
                          char* err, size_t errlen) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_ready) {
    set_message(err, errlen, "dc_cuda_matmul: dc_cuda_init has not succeeded");
    return -1;
  }
  g_timed = false;
  if (ldy < out) {
    set_message(err, errlen, "dc_cuda_matmul: ldy < out");
    return -1;
  }
  if (T == 0 || out == 0) return 0;
  if (in == 0) {
    for (size_t t = 0; t < T; t++) std::memset(y + t * ldy, 0, out * sizeof(float));
    return 0;
  }
  constexpr size_t kMaxInt = 0x7fffffff;
  if (T > kMaxInt || in > kMaxInt || out > kMaxInt || (T + deepcast_cuda::kTileM - 1) / deepcast_cuda::kTileM > 65535) {
    set_message(err, errlen, "dc_cuda_matmul: dimensions too large (tokens <= 4194240, in/out < 2^31)");
    return -1;
  }
  if (!reserve(g_x, T * in, "x", err, errlen) || !reserve(g_w, out * in, "w", err, errlen) ||
      !reserve(g_y, T * out, "y", err, errlen))
    return -1;
  cudaEventRecord(g_events[0]);
  if (!check(cudaMemcpy(g_x.ptr, x, T * in * sizeof(float), cudaMemcpyHostToDevice), "upload x", err, errlen) ||
      !check(cudaMemcpy(g_w.ptr, w, out * in * sizeof(float), cudaMemcpyHostToDevice), "upload w", err, errlen))
    return -1;
  cudaEventRecord(g_events[1]);
  const dim3 grid(static_cast<unsigned>((out + deepcast_cuda::kTileN - 1) / deepcast_cuda::kTileN),
                  static_cast<unsigned>((T + deepcast_cuda::kTileM - 1) / deepcast_cuda::kTileM));
  deepcast_cuda::gemm_xwt_f32<<<grid, deepcast_cuda::kThreads>>>(g_x.ptr, g_w.ptr, g_y.ptr, static_cast<int>(T),
                                                                 static_cast<int>(in), static_cast<int>(out));
  if (!check(cudaGetLastError(), "launching the GEMM kernel", err, errlen)) return -1;
  cudaEventRecord(g_events[2]);
  // Waits for the kernel (same stream) and lands each row of y at its stride.
  if (!check(cudaMemcpy2D(y, ldy * sizeof(float), g_y.ptr, out * sizeof(float), out * sizeof(float), T,
                          cudaMemcpyDeviceToHost),
             "download y", err, errlen))
    return -1;
  cudaEventRecord(g_events[3]);
  g_timed = cudaEventSynchronize(g_events[3]) == cudaSuccess;
  return 0;
}

/**
 * Milliseconds of the last successful dc_cuda_matmul that reached the GPU: times[0] uploading x
 * and W, times[1] the kernel, times[2] downloading y (CUDA events). Returns 0, or -1 when there
 * is no such call.
 */
DC_API int dc_cuda_last_times(float* times) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_timed) return -1;
  for (int i = 0; i < 3; i++) {
    if (cudaEventElapsedTime(&times[i], g_events[i], g_events[i + 1]) != cudaSuccess) return -1;
  }
  return 0;
}

/** Frees the device buffers (the next matmul allocates again). */
DC_API void dc_cuda_release(void) {
  std::lock_guard<std::mutex> lock(g_mutex);
  release_buffers();
}
