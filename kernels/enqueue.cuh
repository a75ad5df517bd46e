// Kernel launches that return their own status. A launch with <<<>>>
// followed by cudaGetLastError() also returns, and clears, an error left
// by the caller's own earlier runtime calls, so a good launch could report
// the caller's failure as eplb's and lose it for the caller;
// cudaLaunchKernelEx returns the status of this launch alone.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace eplb {

template <typename... Params, typename... Args>
cudaError_t EnqueueKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace eplb
