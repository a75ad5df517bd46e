// A route+count kernel written only from the public device functions of
// eplb/eplb_device.cuh, the way an engine fuses them into its own kernel
// (that header's recipe): one warp per segment of eplbRouteCount's contract,
// walking it in slices of 32 items, ranks restarting at each segment and
// offset by the segment's index; on the hash path, EplbHashedSlot per item.
// The GPU test checks that it makes eplbRouteCount's choices; bench_kernels
// times it inside a stand-in engine kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "eplb/eplb.h"
#include "eplb/eplb_device.cuh"

namespace eplb_test {

// Segments of a route+count launch over cap = T*K items, as eplb.h states
// the contract: S = max(1, min(ceil(cap / EPLB_ROUTE_TILE_ITEMS),
// EPLB_ROUTE_MAX_SEGMENTS)), Z = ceil(cap / S) rounded up to 32.
inline void RecipeSegments(int64_t cap, int32_t* segments, int64_t* segment_items) {
  int64_t s = (cap + EPLB_ROUTE_TILE_ITEMS - 1) / EPLB_ROUTE_TILE_ITEMS;
  if (s > EPLB_ROUTE_MAX_SEGMENTS) s = EPLB_ROUTE_MAX_SEGMENTS;
  if (s < 1) s = 1;
  const int64_t z = ((cap + s - 1) / s + 31) / 32 * 32;
  *segments = static_cast<int32_t>(s);
  *segment_items = z;
}

// Block b (32 threads) routes segment b: items [b*Z, min((b+1)*Z, T*K)).
// Dynamic shared memory: E int32 (the warp's rank counters).
template <typename IdT>
__global__ void RecipeRouteKernel(const IdT* ids, int64_t num_tokens, const int32_t* d_num_tokens,
                                  int32_t top_k, const int32_t* log2phy, const int32_t* logcnt,
                                  int32_t num_e, int32_t num_p, const int32_t* d_record,
                                  int32_t* out, int32_t* load_pass, unsigned long long* d_invalid,
                                  int64_t segment_items) {
  extern __shared__ int32_t hist[];
  const int32_t max_rep = num_p - num_e + 1;
  const int64_t cap = num_tokens * top_k;
  const bool hashed = cap >= EPLB_ROUTE_HASH_MIN_ITEMS;
  int64_t valid_tokens = num_tokens;
  if (d_num_tokens != nullptr)
    valid_tokens =
        *d_num_tokens < 0 ? 0 : (*d_num_tokens > num_tokens ? num_tokens : *d_num_tokens);
  const int64_t n_valid = valid_tokens * top_k;
  const bool record = d_record == nullptr || *d_record != 0;
  const int32_t bits = EplbKeyBits(num_e);
  const unsigned lane = threadIdx.x;
  for (int32_t e = lane; e < num_e; e += 32) hist[e] = 0;
  __syncwarp();
  const int64_t begin = int64_t{blockIdx.x} * segment_items;
  const int64_t end = begin + segment_items < cap ? begin + segment_items : cap;
  unsigned long long invalid = 0;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    const int32_t key = (i < end && i < n_valid)
                            ? EplbItemKey(static_cast<int64_t>(ids[i]), num_e, logcnt, max_rep)
                            : -1;
    int32_t slot;
    if (hashed) {
      slot = EplbHashedSlot(key, EplbItemHash(static_cast<uint32_t>(i)), log2phy, logcnt, max_rep,
                            num_p);
    } else {
      const int32_t rank = EplbWarpRank(key, hist, bits);
      slot = EplbReplicaSlot(key, static_cast<uint32_t>(rank) + blockIdx.x, log2phy, logcnt,
                             max_rep, num_p);
    }
    if (i < end) out[i] = slot;
    if (i < end && i < n_valid && slot < 0) ++invalid;
    if (record) EplbCountAdd(load_pass, slot, 1, num_p);
  }
  if (d_invalid != nullptr && invalid != 0) atomicAdd(d_invalid, invalid);
}

// Launches RecipeRouteKernel over T*K items (T*K < 2^31) on `stream`.
inline cudaError_t LaunchRecipeRoute(const void* ids, bool ids64, int64_t num_tokens,
                                     const int32_t* d_num_tokens, int32_t top_k,
                                     const int32_t* log2phy, const int32_t* logcnt, int32_t num_e,
                                     int32_t num_p, const int32_t* d_record, int32_t* out,
                                     int32_t* load_pass, unsigned long long* d_invalid,
                                     cudaStream_t stream) {
  const int64_t cap = num_tokens * top_k;
  if (cap == 0) return cudaSuccess;
  int32_t segs = 0;
  int64_t z = 0;
  RecipeSegments(cap, &segs, &z);
  const size_t smem = sizeof(int32_t) * static_cast<size_t>(num_e);
  if (ids64)
    RecipeRouteKernel<<<segs, 32, smem, stream>>>(static_cast<const int64_t*>(ids), num_tokens,
                                                  d_num_tokens, top_k, log2phy, logcnt, num_e,
                                                  num_p, d_record, out, load_pass, d_invalid, z);
  else
    RecipeRouteKernel<<<segs, 32, smem, stream>>>(static_cast<const int32_t*>(ids), num_tokens,
                                                  d_num_tokens, top_k, log2phy, logcnt, num_e,
                                                  num_p, d_record, out, load_pass, d_invalid, z);
  return cudaGetLastError();
}

}  // namespace eplb_test
