// Programmatic dependent launch for eplb's per-step kernels (route + count,
// count, window update). Launched with LaunchEarly, a kernel may be put on
// the SMs while the kernel before it on the stream is still finishing; it
// touches no global memory before WaitForPriorGrids, which returns once
// every kernel it depends on has completed and its writes are visible. So
// the stream order the API promises is kept, and the launch latency hides
// behind the previous kernel's tail (a decode step is a chain of short
// kernels, where that latency is most of the cost). Before sm_90 the
// attribute is left off and both device calls compile to nothing.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <utility>

namespace eplb {
namespace kernels {

// Call before the first global-memory access of a kernel launched with
// LaunchEarly (and in every such kernel: a later kernel's wait only covers
// the grids it depends on directly, which covers the rest because each of
// them waited too).
__device__ __forceinline__ void WaitForPriorGrids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream, if launched early too, be scheduled
// now; it still waits for this grid's completion before reading anything.
__device__ __forceinline__ void AllowNextLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether the current device takes the early-launch attribute (compute
// capability 9.0 or newer), looked up once per device.
inline bool EarlyLaunchSupported() {
  static std::atomic<int> known[64];  // 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  int v = known[device].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
      return false;
    v = major >= 9 ? 2 : 1;
    known[device].store(v, std::memory_order_relaxed);
  }
  return v == 2;
}

template <typename... Params, typename... Args>
cudaError_t LaunchEarly(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                        cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = EarlyLaunchSupported() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace kernels
}  // namespace eplb
