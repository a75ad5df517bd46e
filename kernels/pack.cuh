// Pack/unpack of expert bundle rows between caller-owned slot arrays and the
// contiguous staging buffer of the packed exchange (stage 6 of DESIGN.md).
// Host-includable: declarations only (the launchers live in pack.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace eplb {
namespace kernels {

// Tensors per layer in the device table (EPLB_EXCHANGE_MAX_TENSORS).
constexpr int32_t kPackMaxTensors = 16;
// Bytes one block copies per step: a multiple of 16 so every step of a
// 16-byte-aligned row starts 16-byte aligned.
constexpr uint64_t kPackTileBytes = 32768;
static_assert(kPackTileBytes % 16 == 0, "tile must keep 16-byte alignment");

// One tensor of one layer's bundle; bytes == 0 marks an absent tensor.
struct PackTensor {
  char* d_slots;            // device; row r at d_slots + r * pitch_bytes
  uint64_t bytes;           // bytes of one row
  uint64_t pitch_bytes;     // distance between rows
  uint64_t staging_offset;  // offset of this tensor inside a padded bundle
};

// One bundle row to move: local slot `slot` of layer `layer` <-> staging at
// staging_offset (the bundle's first byte).
struct PackRow {
  int32_t layer;
  int32_t slot;
  uint64_t staging_offset;
};

enum class PackDirection : int32_t { kSlotsToStaging = 0, kStagingToSlots = 1 };

#if defined(__CUDACC__)
#define EPLB_PACK_HD __host__ __device__
#else
#define EPLB_PACK_HD
#endif

// A layer too large for one staging round is moved in column slices: slice k
// of K covers bytes [lo, hi) of every row of every tensor, so each slice is a
// complete exchange of its own bytes (a byte is read and written only by its
// own slice, which keeps "read before overwrite" per slice). Slice starts
// are multiples of 16 so aligned rows stay aligned.
EPLB_PACK_HD inline void PackSliceRange(uint64_t bytes, int32_t k, int32_t num_slices, uint64_t* lo,
                                        uint64_t* hi) {
  const uint64_t n = static_cast<uint64_t>(num_slices);
  const uint64_t per = ((bytes + n - 1) / n + 15) / 16 * 16;
  uint64_t a = per * static_cast<uint64_t>(k);
  if (a > bytes) a = bytes;
  uint64_t b = a + per;
  if (b > bytes) b = bytes;
  *lo = a;
  *hi = b;
}

EPLB_PACK_HD inline uint64_t PackRoundUp16(uint64_t v) {
  return (v + 15) / 16 * 16;
}

// Copies every tensor of every row between its slot and staging.
//   d_tensors   device table [layers][kPackMaxTensors] (PackRow::layer indexes it).
//   d_rows      device [num_rows]; rows are independent (no two rows of one
//               launch may write the same bytes).
//   max_tensors tensors to visit per row (<= kPackMaxTensors).
//   max_tensor_bytes  the largest tensor row (or slice of one) among them
//               (sizes the grid).
//   d_staging   device staging base.
//   slice, num_slices, slice_bundle_bytes  whole rows when slice_bundle_bytes
//               is 0: PackRow::staging_offset is a byte offset and each
//               tensor sits at PackTensor::staging_offset. Otherwise only
//               slice `slice` of `num_slices` of each row (PackSliceRange)
//               moves, the bundle of a row sits at staging_offset *
//               slice_bundle_bytes (staging_offset is the row's index), and
//               its tensors' slices follow each other, each padded to 16.
// Uses 16-byte vector accesses where the source and destination rows are
// both 16-byte aligned, 4-byte where 4-byte aligned, bytes otherwise.
// max_blocks caps the grid (0 = no cap; the kernel strides over its work).
// Enqueues one kernel on `stream` (none when there is nothing to copy);
// returns the launch status; does not block.
cudaError_t LaunchPackRows(const PackTensor* d_tensors, const PackRow* d_rows, int32_t num_rows,
                           int32_t max_tensors, uint64_t max_tensor_bytes, char* d_staging,
                           PackDirection direction, int32_t slice, int32_t num_slices,
                           uint64_t slice_bundle_bytes, int32_t max_blocks, cudaStream_t stream);

}  // namespace kernels
}  // namespace eplb
