// Window ring: end-of-step fold of the physical counters into the logical
// ring (one launch for all layers), the read-out of the running sum and the
// full-ring reduction that the running sum is tested against.
#include <cuda_runtime.h>

#include "enqueue.cuh"
#include "launch.cuh"

namespace eplb {
namespace kernels {
namespace {

constexpr int kWindowThreads = 256;

// One block per layer. The ring position is read by every block at its
// start; the last block to arrive (arrival counter in ring_state[1]) advances
// it, so no block can see the next step's position.
__global__ void __launch_bounds__(kWindowThreads)
    WindowUpdateKernel(const int32_t* __restrict__ phy2log, int32_t* __restrict__ load_pass,
                       int32_t num_l, int32_t num_e, int32_t num_p, int32_t window_size,
                       int32_t* __restrict__ window, int64_t* __restrict__ window_sum,
                       int32_t* ring_state) {
  extern __shared__ unsigned long long s_load[];  // [E]
  const int32_t layer = blockIdx.x;
  const int32_t pos = *reinterpret_cast<volatile int32_t*>(ring_state);
  for (int e = threadIdx.x; e < num_e; e += blockDim.x) s_load[e] = 0;
  __syncthreads();
  const int64_t lp = int64_t{layer} * num_p;
  for (int p = threadIdx.x; p < num_p; p += blockDim.x) {
    const int32_t c = load_pass[lp + p];
    const int32_t e = phy2log[lp + p];
    if (c != 0) {
      if (e >= 0 && e < num_e)
        atomicAdd(s_load + e, static_cast<unsigned long long>(static_cast<int64_t>(c)));
      load_pass[lp + p] = 0;
    }
  }
  __syncthreads();
  const int64_t le = int64_t{layer} * num_e;
  int32_t* row = window + (int64_t{pos} * num_l) * num_e + le;
  for (int e = threadIdx.x; e < num_e; e += blockDim.x) {
    const int32_t v = static_cast<int32_t>(static_cast<int64_t>(s_load[e]));
    const int32_t old = row[e];
    row[e] = v;
    window_sum[le + e] += static_cast<int64_t>(v) - old;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const int32_t arrived = atomicAdd(ring_state + 1, 1);
    if (arrived == num_l - 1) {
      ring_state[0] = (pos + 1 == window_size) ? 0 : pos + 1;
      ring_state[1] = 0;
      __threadfence();
    }
  }
}

__global__ void ReadoutKernel(const int64_t* __restrict__ sum, int64_t n,
                              int64_t* __restrict__ load) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    load[i] = sum[i];
}

__global__ void ReduceKernel(const int32_t* __restrict__ window, int32_t window_size,
                             int64_t row_items, int64_t* __restrict__ load) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < row_items; i += stride) {
    int64_t s = 0;
    for (int32_t w = 0; w < window_size; ++w) s += window[int64_t{w} * row_items + i];
    load[i] = s;
  }
}

int GridFor(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  if (b > 4096) b = 4096;
  return static_cast<int>(b < 1 ? 1 : b);
}

}  // namespace

cudaError_t LaunchWindowUpdate(const int32_t* phy2log, int32_t* load_pass, int32_t num_layers,
                               int32_t num_logical_experts, int32_t num_physical_experts,
                               int32_t window_size, int32_t* window, int64_t* window_sum,
                               int32_t* ring_state, cudaStream_t stream) {
  const size_t smem = sizeof(unsigned long long) * static_cast<size_t>(num_logical_experts);
  return EnqueueKernel(WindowUpdateKernel, dim3(static_cast<unsigned>(num_layers)),
                       dim3(kWindowThreads), smem, stream, phy2log, load_pass, num_layers,
                       num_logical_experts, num_physical_experts, window_size, window, window_sum,
                       ring_state);
}

cudaError_t LaunchWindowReadout(const int64_t* window_sum, int64_t num_items, int64_t* load,
                                cudaStream_t stream) {
  return EnqueueKernel(ReadoutKernel, dim3(GridFor(num_items, 256)), dim3(256), 0, stream,
                       window_sum, num_items, load);
}

cudaError_t LaunchWindowReduce(const int32_t* window, int32_t window_size, int64_t row_items,
                               int64_t* load, cudaStream_t stream) {
  return EnqueueKernel(ReduceKernel, dim3(GridFor(row_items, 128)), dim3(128), 0, stream, window,
                       window_size, row_items, load);
}

}  // namespace kernels
}  // namespace eplb
