#include "pack.cuh"

#include <algorithm>

#include "enqueue.cuh"

namespace eplb {
namespace kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVecPerThread = static_cast<int>(kPackTileBytes / 16 / kThreads);
static_assert(kVecPerThread * kThreads * 16 == static_cast<int>(kPackTileBytes),
              "a full tile is kVecPerThread vectors per thread");
// Blocks in flight per launch: enough to fill an H100 several times over.
constexpr int64_t kTargetBlocks = 16384;

// Copies bytes [off, end) of one row; off is a multiple of kPackTileBytes.
__device__ __forceinline__ void CopyRange(const char* __restrict__ src, char* __restrict__ dst,
                                          uint64_t off, uint64_t end) {
  const uint64_t n = end - off;
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst);
  if ((align & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src + off);
    uint4* d = reinterpret_cast<uint4*>(dst + off);
    const uint64_t nv = n / 16;
    if (nv == static_cast<uint64_t>(kVecPerThread) * kThreads) {
      // Full tile: all loads in flight before the stores.
      uint4 v[kVecPerThread];
#pragma unroll
      for (int k = 0; k < kVecPerThread; ++k) v[k] = s[threadIdx.x + k * kThreads];
#pragma unroll
      for (int k = 0; k < kVecPerThread; ++k) d[threadIdx.x + k * kThreads] = v[k];
      return;
    }
    for (uint64_t i = threadIdx.x; i < nv; i += kThreads) d[i] = s[i];
    for (uint64_t i = nv * 16 + threadIdx.x; i < n; i += kThreads) dst[off + i] = src[off + i];
  } else if ((align & 3) == 0) {
    const uint32_t* s = reinterpret_cast<const uint32_t*>(src + off);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst + off);
    const uint64_t nw = n / 4;
    for (uint64_t i = threadIdx.x; i < nw; i += kThreads) d[i] = s[i];
    for (uint64_t i = nw * 4 + threadIdx.x; i < n; i += kThreads) dst[off + i] = src[off + i];
  } else {
    for (uint64_t i = threadIdx.x; i < n; i += kThreads) dst[off + i] = src[off + i];
  }
}

template <bool kToStaging>
__global__ void __launch_bounds__(kThreads)
    PackRowsKernel(const PackTensor* __restrict__ tensors, const PackRow* __restrict__ rows,
                   int64_t num_items, int32_t max_tensors, char* __restrict__ staging,
                   int32_t slice, int32_t num_slices, uint64_t slice_bundle_bytes) {
  for (int64_t w = blockIdx.y; w < num_items; w += gridDim.y) {
    const PackRow row = rows[w / max_tensors];
    const int32_t ti = static_cast<int32_t>(w % max_tensors);
    const PackTensor* layer = tensors + static_cast<int64_t>(row.layer) * kPackMaxTensors;
    const PackTensor t = layer[ti];
    if (t.bytes == 0) continue;
    uint64_t lo = 0, hi = t.bytes, stage_off = row.staging_offset + t.staging_offset;
    if (slice_bundle_bytes != 0) {
      PackSliceRange(t.bytes, slice, num_slices, &lo, &hi);
      stage_off = row.staging_offset * slice_bundle_bytes;
      for (int32_t u = 0; u < ti; ++u) {
        uint64_t ulo, uhi;
        PackSliceRange(layer[u].bytes, slice, num_slices, &ulo, &uhi);
        stage_off += PackRoundUp16(uhi - ulo);
      }
    }
    const uint64_t n = hi - lo;
    char* slot = t.d_slots + static_cast<uint64_t>(row.slot) * t.pitch_bytes + lo;
    char* stage = staging + stage_off;
    const char* src = kToStaging ? slot : stage;
    char* dst = kToStaging ? stage : slot;
    for (uint64_t off = static_cast<uint64_t>(blockIdx.x) * kPackTileBytes; off < n;
         off += static_cast<uint64_t>(gridDim.x) * kPackTileBytes) {
      CopyRange(src, dst, off, min(off + kPackTileBytes, n));
    }
  }
}

}  // namespace

cudaError_t LaunchPackRows(const PackTensor* d_tensors, const PackRow* d_rows, int32_t num_rows,
                           int32_t max_tensors, uint64_t max_tensor_bytes, char* d_staging,
                           PackDirection direction, int32_t slice, int32_t num_slices,
                           uint64_t slice_bundle_bytes, int32_t max_blocks, cudaStream_t stream) {
  if (num_rows <= 0 || max_tensors <= 0 || max_tensor_bytes == 0) return cudaSuccess;
  if (max_tensors > kPackMaxTensors || num_slices < 1 || slice < 0 || slice >= num_slices)
    return cudaErrorInvalidValue;
  const int64_t items = static_cast<int64_t>(num_rows) * max_tensors;
  const int64_t gy = std::min<int64_t>(items, 65535);
  const int64_t tiles =
      static_cast<int64_t>((max_tensor_bytes + kPackTileBytes - 1) / kPackTileBytes);
  const int64_t gx =
      std::max<int64_t>(1, std::min<int64_t>(tiles, std::max<int64_t>(1, kTargetBlocks / gy)));
  int64_t gy_capped = gy, gx_capped = gx;
  if (max_blocks > 0) {
    gy_capped = std::min<int64_t>(gy, max_blocks);
    gx_capped = std::max<int64_t>(1, std::min<int64_t>(gx, max_blocks / gy_capped));
  }
  dim3 grid(static_cast<unsigned>(gx_capped), static_cast<unsigned>(gy_capped));
  return EnqueueKernel(
      direction == PackDirection::kSlotsToStaging ? PackRowsKernel<true> : PackRowsKernel<false>,
      grid, dim3(kThreads), 0, stream, d_tensors, d_rows, items, max_tensors, d_staging, slice,
      num_slices, slice_bundle_bytes);
}

}  // namespace kernels
}  // namespace eplb
