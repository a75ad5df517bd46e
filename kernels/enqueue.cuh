// Kernel launches that return their own status. A launch with <<<>>>
// followed by cudaGetLastError() also returns, and clears, an error left
// by the caller's own earlier runtime calls, so a good launch could report
// the caller's failure as eplb's and lose it for the caller;
// cudaLaunchKernelEx returns the status of this launch alone.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <utility>

#include "early_launch_setting.h"

namespace eplb {

// Programmatic dependent launch (PDL, compute capability 9.0 and up): a
// kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization
// may start before the kernel ahead of it in the stream (or graph) has
// finished. Its blocks run up to GridDependencyWait() while that kernel
// ends, and that call returns once it has completed and its writes are
// visible. So such a kernel must call GridDependencyWait() before its first
// access to global memory (every input, even the tables, may be the
// previous kernel's output; every output may still be read by it): before
// it only parameters, registers and shared memory, and no pointer it reads
// may be __restrict__ (a load on the read-only path, ld.global.nc, may be
// moved above the wait). eplb's route+count sub-block kernels (launches of
// up to 132 segments of 4096 items) and its count kernel for launches of at
// most 65536 items are launched so where EnqueueKernelEarly (below) says;
// they are written so (test gpu_pdl_sass checks their SASS), zero their
// shared memory before the wait where that measured faster, and call
// GridDependentsLaunch() right after the wait, so that a kernel after them
// that is launched early starts early too. That call pays even where
// eplb's own launch is normal (kernels/route_count.cu, SubShape).
//
// It pays only where the kernel before eplb's lets it start, so by default
// (auto) eplb launches early only where it can see that kernel: in a graph
// being captured, behind its own kernels that do. Measured
// with early launch off and on for every launch (EPLB_PDL=0 / 1; before the
// auto mode, EPLB_PDL unset meant off), bench_kernels on one H200 of a
// 2-GPU machine (2026-11-29, e0c046f, the same binary; us per launch over an
// empty kernel, at 64 / 512 / 1024 / 8192 tokens x top-8; 8192 tokens
// launch normally either way):
//  - graphs of eplb's kernels alone: route+count 0.87 / 1.49 / 1.54 / 2.84
//    -> 0.32 / 0.85 / 0.85 / 2.84, count-only 0.73 / 0.84 / 0.86 / 1.02 ->
//    0.16 / 0.23 / 0.25 / 0.44; 58 route+count + window update 98 / 136
//    -> 67 / 96 us per graph;
//  - eplbRouteCount after an engine kernel launched early (it waits first
//    thing, then lets the next kernel launch), over that kernel alone:
//    1.54 / 2.24 -> 1.04 / 1.54 at 64 / 512 tokens;
//  - after an engine kernel launched normally: 1.56 / 2.26 -> 1.74 / 2.43.
//    Why a kernel launched early after one that was not is slower, we do
//    not know; an earlier version of this early launch measured the same.
// bench_state StepOverhead (an engine kernel and route+count per layer,
// 58 layers, then eplbStateStep; one H200), eplb's overhead per pass at
// 64 / 512 tokens: engine kernel launched normally 95 / 134 -> 106 / 145
// us; launched early 93 / 134 -> 68 / 106 us.
// The auto mode (session 16, bench_kernels' per-mode counters, same run,
// one H200): graphs of route+count off -> auto 0.85 / 1.50 / 1.53 / 2.74
// -> 0.30 / 0.82 / 0.84 / 2.19 (8192 tokens: the 16-warp blocks now launch
// early behind eplb's own kernels), the 58-layer decode step 95.7 / 133.0
// -> 64.9 / 95.1 us; behind an engine kernel the same as off.
//
// DeviceRunsEarly(kernel): the current device has compute capability 9.0
// or more, and the code it runs for `kernel` was compiled for 9.0 or more
// (cudaFuncGetAttributes' ptxVersion): in a build for older architectures
// only, JIT-compiled for a newer device, GridDependencyWait() is empty, and
// an early launch would race. eplb's kernels are all built for the same
// architectures, so the answer is cached per device, from the first kernel
// asked about.
inline bool DeviceRunsEarly(const void* kernel) {
  constexpr int kDevices = 64;
  static std::atomic<signed char> cache[kDevices];  // 0 unknown, 1 yes, -1 no
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device >= 0 && device < kDevices) {
    const signed char c = cache[device].load(std::memory_order_relaxed);
    if (c != 0) return c > 0;
  }
  int major = 0;
  cudaFuncAttributes attr = {};
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaFuncGetAttributes(&attr, kernel) != cudaSuccess)
    return false;
  const bool on = major >= 9 && attr.ptxVersion >= 90;
  if (device >= 0 && device < kDevices) cache[device].store(on ? 1 : -1, std::memory_order_relaxed);
  return on;
}

// When a launch shape of eplb's may be launched early. The kernels of
// every shape but kNever call GridDependentsLaunch() right after their wait.
enum class EarlyShape {
  kNever,
  // Per the mode (EnqueueKernelEarly): where the mode is on, or auto and
  // behind eplb's own kernels that let it start.
  kByMode,
  // Only behind eplb's own kernels that let it start, whatever the mode
  // (off aside): the shape that lost by an early launch behind a kernel of
  // the caller's (the 16-warp route blocks; kernels/route_count.cu).
  kBehindEplb,
};

// What the next node captured on a stream will depend on
// (cudaStreamGetCaptureInfo); `active` false where the stream is not being
// captured or the query fails. The query never touches a node: one of a
// node that the caller captured (a driver-API kernel, say) may fail, and
// its error would be left for the caller's next cudaGetLastError. The edge
// data is asked for too: without it the query fails (cudaErrorLossyQuery,
// left for the caller likewise) where a dependency's edge is not a default
// one (the caller's programmatic event, say).
struct CaptureDeps {
  bool active = false;
  unsigned long long id = 0;
  const cudaGraphNode_t* nodes = nullptr;
  const cudaGraphEdgeData* edges = nullptr;
  size_t count = 0;
};
inline CaptureDeps QueryCaptureDeps(cudaStream_t stream) {
  CaptureDeps c;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  c.active = cudaStreamGetCaptureInfo(stream, &status, &c.id, nullptr, &c.nodes, &c.edges,
                                      &c.count) == cudaSuccess &&
             status == cudaStreamCaptureStatusActive && (c.count == 0 || c.nodes != nullptr);
  return c;
}

// Whether every node of `c` is one of eplb's kernels that let the next
// launch start (noted by EnqueueKernelEarly as it captured them), each
// behind a default edge.
inline bool FollowsTriggeringNodes(const CaptureDeps& c) {
  if (!c.active || c.count == 0) return false;
  for (size_t i = 0; i < c.count; ++i) {
    if (c.edges != nullptr && (c.edges[i].type != cudaGraphDependencyTypeDefault ||
                               c.edges[i].from_port != 0 || c.edges[i].to_port != 0))
      return false;
    if (!kernels::IsTriggeringNode(c.id, c.nodes[i])) return false;
  }
  return true;
}

// A launch that returns its own status (cudaLaunchKernelEx), with
// programmatic dependent launch when `pdl` (whatever the setting: the tests
// and benchmarks launch their own kernels so with it).
template <typename... Params, typename... Args>
cudaError_t EnqueueKernelPdl(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block,
                             size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  if (pdl) {
    config.attrs = attr;
    config.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

// eplb's launches of the kernels written for early launch (GridDependencyWait()
// before any global memory access). Early never for kNever shapes, with the
// mode off (EPLB_PDL=0, eplbSetEarlyLaunch(0)) or where the device or the
// code is below 9.0 (DeviceRunsEarly); with it on (EPLB_PDL=1), always for
// kByMode shapes; in the default auto mode (and for kBehindEplb shapes),
// only while `stream` is being captured right behind eplb kernels that let
// it start (FollowsTriggeringNodes), e.g. route+count after route+count in
// a decode step's graph. After any other kernel, whose end a kernel
// launched early can only wait for, an early launch was 0.1-0.2 us slower
// than a normal one (figures above); outside capture eplb cannot see what
// the kernel before it is. A captured launch of a shape other than kNever
// has its node noted (kernels::NoteTriggeringNode).
template <typename... Params, typename... Args>
cudaError_t EnqueueKernelEarly(EarlyShape shape, void (*kernel)(Params...), dim3 grid, dim3 block,
                               size_t smem_bytes, cudaStream_t stream, Args&&... args) {
  const int mode = kernels::EarlyLaunchMode();
  if (shape == EarlyShape::kNever || mode == kernels::kEarlyLaunchOff ||
      !DeviceRunsEarly(reinterpret_cast<const void*>(kernel)))
    return EnqueueKernelPdl(false, kernel, grid, block, smem_bytes, stream,
                            std::forward<Args>(args)...);
  const CaptureDeps before = QueryCaptureDeps(stream);
  const bool early = (mode == kernels::kEarlyLaunchOn && shape == EarlyShape::kByMode) ||
                     FollowsTriggeringNodes(before);
  const cudaError_t err =
      EnqueueKernelPdl(early, kernel, grid, block, smem_bytes, stream, std::forward<Args>(args)...);
  if (err == cudaSuccess && before.active) {
    const CaptureDeps after = QueryCaptureDeps(stream);
    if (after.active && after.count == 1)
      kernels::NoteTriggeringNode(after.id, after.nodes[0]);  // the node this launch added
  }
  return err;
}

template <typename... Params, typename... Args>
cudaError_t EnqueueKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  return EnqueueKernelPdl(false, kernel, grid, block, smem_bytes, stream,
                          std::forward<Args>(args)...);
}

#ifdef __CUDACC__
// Returns once the kernel ahead of this one in its stream has completed and
// its memory is visible (griddepcontrol.wait); at once when this kernel was
// not launched with PDL.
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets a PDL-launched kernel after this one start once every block of this
// one has called it (griddepcontrol.launch_dependents). Says nothing about
// memory: that kernel still waits for this one's completion before reading.
__device__ __forceinline__ void GridDependentsLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#endif  // __CUDACC__

}  // namespace eplb
