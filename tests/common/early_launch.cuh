// Early launch (programmatic dependent launch, compute capability 9.0 and
// up) for the tests, the benchmarks and dev/route_ab: a kernel launched
// with LaunchEarly may start while the kernel before it in the stream ends,
// so it calls WaitForPrevious() before touching global memory; with
// LetNextLaunch() it lets a kernel after it that is launched early start.
// eplb's own launches do this under EPLB_PDL=1 (kernels/enqueue.cuh).
#pragma once

#include <cuda_runtime.h>

namespace eplb_test {

#ifdef __CUDACC__
__device__ __forceinline__ void WaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void LetNextLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#endif  // __CUDACC__

template <typename... Params, typename... Args>
cudaError_t LaunchEarly(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                        Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.stream = stream;
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

}  // namespace eplb_test
