// A route+count kernel written only from the public device functions of
// eplb/eplb_device.cuh, the way an engine fuses them into its own kernel
// (that header's recipe): one warp per segment of eplbRouteCount's contract,
// walking it in slices of 32 items, ranks restarting at each segment and
// offset by the segment's index; on the hash path, EplbHashedSlot per item.
// Also the block-wide form, EplbBlockRoute. The GPU test checks that both
// make eplbRouteCount's choices; bench_kernels times them inside a stand-in
// engine kernel.
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

// Items of valid tokens: the device count clamped to [0, T] (all T when
// d_num_tokens is null), times K.
__device__ inline int64_t RecipeValidItems(int64_t num_tokens, const int32_t* d_num_tokens,
                                           int32_t top_k) {
  int64_t t = num_tokens;
  if (d_num_tokens != nullptr) t = *d_num_tokens < 0 ? 0 : (*d_num_tokens > t ? t : *d_num_tokens);
  return t * top_k;
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
  const int64_t n_valid = RecipeValidItems(num_tokens, d_num_tokens, top_k);
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

// The block-wide form (EplbBlockRoute), as an engine kernel of kWarps
// warps with one item per thread would call it: block (s, b) takes items
// [s*Z + b*32*kWarps, ...) of segment s, the segment's items before it as
// its earlier items and s as its offset. `aggregate` picks the function's
// shared-memory count path, kStage its staged tables; kZeroed zeroes the
// shared memory first with EplbBlockRouteZero (as a kernel launched early
// does before waiting for the previous kernel).
template <int kWarps, bool kStage, bool kZeroed, typename IdT>
__global__ void __launch_bounds__(32 * kWarps)
    BlockRecipeRouteKernel(const IdT* ids, int64_t num_tokens, const int32_t* d_num_tokens,
                           int32_t top_k, const int32_t* log2phy, const int32_t* logcnt,
                           int32_t num_e, int32_t num_p, const int32_t* d_record, int32_t* out,
                           int32_t* load_pass, unsigned long long* d_invalid, int64_t segment_items,
                           bool aggregate) {
  constexpr int kThreads = 32 * kWarps;
  constexpr int kEarlier = (EPLB_ROUTE_TILE_ITEMS + kThreads - 1) / kThreads - 1;
  extern __shared__ int4 smem[];
  const int64_t cap = num_tokens * top_k;
  const int64_t n_valid = RecipeValidItems(num_tokens, d_num_tokens, top_k);
  const bool record = d_record == nullptr || *d_record != 0;
  const int64_t seg_begin = int64_t{blockIdx.x} * segment_items;
  const int64_t seg_end = seg_begin + segment_items < cap ? seg_begin + segment_items : cap;
  const int64_t my_begin = seg_begin + int64_t{blockIdx.y} * kThreads;
  if (my_begin >= seg_end) return;  // the whole block: it skips the barriers together
  if constexpr (kZeroed) {
    EplbBlockRouteZero<kWarps, kEarlier, 1024, kStage>(num_e, num_p, aggregate, smem);
    __syncthreads();
  }
  const int64_t i = my_begin + threadIdx.x;
  const bool in = i < seg_end;
  const IdT id = in ? ids[i] : IdT(-1);
  const uint32_t num_earlier = static_cast<uint32_t>(my_begin - seg_begin);
  const int64_t ev = n_valid - seg_begin;
  const uint32_t num_earlier_valid =
      ev <= 0 ? 0u : (ev < num_earlier ? static_cast<uint32_t>(ev) : num_earlier);
  const int32_t slot = EplbBlockRoute<kWarps, kEarlier, 1024, kStage, kZeroed>(
      id, in && i < n_valid, ids + seg_begin, num_earlier, num_earlier_valid, blockIdx.x, log2phy,
      logcnt, num_e, num_p, record ? load_pass : nullptr, aggregate, in ? out + i : nullptr, smem);
  if (d_invalid != nullptr && in && i < n_valid && slot < 0) atomicAdd(d_invalid, 1ull);
}

// Launches BlockRecipeRouteKernel on the rank path (T*K below
// EPLB_ROUTE_HASH_MIN_ITEMS) where the segments are at most
// EPLB_ROUTE_TILE_ITEMS long (up to EPLB_ROUTE_MAX_SEGMENTS tiles): the
// kernel holds that many earlier ids per block. Other sizes: an error.
template <int kWarps, bool kStage = (kWarps >= 16), bool kZeroed = false>
cudaError_t LaunchBlockRecipeRoute(const void* ids, bool ids64, int64_t num_tokens,
                                   const int32_t* d_num_tokens, int32_t top_k,
                                   const int32_t* log2phy, const int32_t* logcnt, int32_t num_e,
                                   int32_t num_p, const int32_t* d_record, int32_t* out,
                                   int32_t* load_pass, unsigned long long* d_invalid,
                                   bool aggregate, cudaStream_t stream) {
  const int64_t cap = num_tokens * top_k;
  if (cap == 0) return cudaSuccess;
  if (cap >= EPLB_ROUTE_HASH_MIN_ITEMS) return cudaErrorInvalidValue;
  int32_t segs = 0;
  int64_t z = 0;
  RecipeSegments(cap, &segs, &z);
  if (z > EPLB_ROUTE_TILE_ITEMS) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(segs),
                  static_cast<unsigned>((z + 32 * kWarps - 1) / (32 * kWarps)));
  const size_t smem = EplbBlockRouteSmemBytes(kWarps, num_e, num_p, aggregate, kStage);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;
  if (ids64)
    BlockRecipeRouteKernel<kWarps, kStage, kZeroed><<<grid, 32 * kWarps, smem, stream>>>(
        static_cast<const int64_t*>(ids), num_tokens, d_num_tokens, top_k, log2phy, logcnt, num_e,
        num_p, d_record, out, load_pass, d_invalid, z, aggregate);
  else
    BlockRecipeRouteKernel<kWarps, kStage, kZeroed><<<grid, 32 * kWarps, smem, stream>>>(
        static_cast<const int32_t*>(ids), num_tokens, d_num_tokens, top_k, log2phy, logcnt, num_e,
        num_p, d_record, out, load_pass, d_invalid, z, aggregate);
  return cudaGetLastError();
}

}  // namespace eplb_test
