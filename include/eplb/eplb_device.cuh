// Public device functions of eplb's route + count, so that an engine can
// fuse replica choice and load counting into its own gating / top-k kernel.
// eplbRouteCount's kernel is built from these same functions, so a fused
// kernel that follows the recipe below makes the same choices.
//
// Recipe (one warp walks a run of items in slices of 32 consecutive items,
// lane l holding item base + l; all 32 lanes take part in every call):
//   1. key = logical id when valid (EplbItemKey), else -1;
//   2. rank = EplbWarpRank(key, hist, EplbKeyBits(E)) where `hist` is a per-warp [E] int32
//      counter array in shared memory, zeroed before the run: rank of the
//      item among same-key items of the run, in ascending item order;
//   3. slot = EplbReplicaSlot(key, rank + offset, ...): the replica of
//      rank (rank + offset) mod logcnt[e];
//   4. count: EplbCountAdd(load_pass, slot, 1, P) or, cheaper, add per-expert
//      totals once per run with EplbReplicaShare.
// Everything is deterministic: no result depends on thread timing.
// To make eplbRouteCount's choices exactly, a run is one of its segments
// (eplb.h) and offset is the segment's index; the hash path uses
// EplbHashedSlot(key, EplbItemHash(i), ...) per item instead of steps 2-3.
// tests/common/recipe_route.cuh in eplb's repository is such a kernel, and
// the GPU tests check it against the host reference.
// Cost: that kernel (one warp per segment, tables in global memory), inside
// a stand-in engine kernel, added 11 us per launch at 64 tokens x top-8 and
// 73 us at 512 tokens on an H200, where the engine kernel followed by
// eplbRouteCount added 2.3 and 3.2 us (bench_kernels,
// BM_FusedRouteDecodeGraph): a warp walking a segment alone waits on a
// global load and a rank per slice. eplbRouteCount's own decode kernel ranks
// a segment over many warps at once; that block-wide ranking is not part of
// this header.
#pragma once

#include <cstdint>

#ifdef __CUDACC__

// Valid expert id -> itself; an id outside [0, E), or an expert whose replica
// count is outside [1, R+1] (a broken table), -> -1. An invalid id is never
// used as an address (the count is read at a clamped index, so the load does
// not depend on a branch and several items' loads can be in flight).
// logcnt may point to global or shared memory.
__device__ __forceinline__ int32_t EplbItemKey(int64_t id, int32_t num_logical_experts,
                                               const int32_t* logcnt, int32_t max_replicas) {
  const bool in = id >= 0 && id < num_logical_experts;
  const int32_t c = logcnt[in ? id : 0];
  return (in && c >= 1 && c <= max_replicas) ? static_cast<int32_t>(id) : -1;
}

// Bits that tell the keys 0 .. E-1 apart: ceil(log2(E)).
__host__ __device__ __forceinline__ int32_t EplbKeyBits(int32_t num_logical_experts) {
  int32_t b = 0;
  while ((int64_t{1} << b) < num_logical_experts) ++b;
  return b;
}

// Lanes of the calling warp whose key equals this lane's (this lane
// included), as a mask; 0 for key < 0. All 32 lanes call it (full mask).
// key_bits: EplbKeyBits(E). One ballot per key bit, so the cost does not
// depend on how many distinct keys the warp holds (unlike __match_any_sync,
// which was slower on uniform ids over 256 experts in our H100 runs).
__device__ __forceinline__ unsigned EplbWarpPeers(int32_t key, int32_t key_bits) {
  unsigned peers = __ballot_sync(0xffffffffu, key >= 0);
  for (int32_t b = 0; b < key_bits; ++b) {
    const bool bit = (key >> b) & 1;
    const unsigned ones = __ballot_sync(0xffffffffu, bit);
    peers &= bit ? ones : ~ones;
  }
  return key >= 0 ? peers : 0u;
}

// Warp-cooperative rank (all 32 lanes call it, full mask). Returns, for a
// lane with key >= 0, hist[key] (items of that key earlier in the run) plus
// the number of lower lanes with the same key, then advances hist[key] by
// the number of lanes holding key. Lanes with key < 0 get 0 and touch
// nothing. hist is this warp's private counter row (shared memory).
// key_bits: EplbKeyBits(E). The peer set is EplbWarpPeers.
__device__ __forceinline__ int32_t EplbWarpRank(int32_t key, int32_t* hist, int32_t key_bits) {
  const bool valid = key >= 0;
  const unsigned peers = EplbWarpPeers(key, key_bits);
  const unsigned lane = threadIdx.x & 31u;
  const unsigned lower = peers & ((1u << lane) - 1u);
  int32_t rank = 0;
  if (valid) rank = hist[key] + __popc(lower);
  __syncwarp();
  if (valid && lower == 0u) hist[key] += __popc(peers);
  __syncwarp();
  return rank;
}

// Replica key of item i (= token * K + k) on the large-input path of
// eplbRouteCount (T*K >= EPLB_ROUTE_HASH_MIN_ITEMS): Fibonacci hashing,
// i * floor(2^32 / phi) mod 2^32; the item takes replica
// floor(EplbItemHash(i) * logcnt[e] / 2^32) (EplbHashedSlot). The top bits
// of this golden-ratio sequence spread the items of any arithmetic
// progression (all items, every K-th item, ...) over the replicas within a
// few items of equal, where an integer mix (the earlier choice, as fast
// on an H200) was off by about sqrt(items / replicas). Needs no ranking,
// so a fused kernel can use it per item with no warp cooperation.
__host__ __device__ __forceinline__ uint32_t EplbItemHash(uint32_t i) {
  return i * 0x9e3779b9u;
}

// Physical slot of the item of expert `key` (from EplbItemKey; -1 gives -1)
// with rank `rank`: log2phy[key][rank mod logcnt[key]]; -1 when that table
// entry is outside [0, P) (a broken table). log2phy and logcnt may point to
// global or shared memory; the loads do not depend on a branch.
__device__ __forceinline__ int32_t EplbReplicaSlot(int32_t key, uint32_t rank,
                                                   const int32_t* log2phy, const int32_t* logcnt,
                                                   int32_t max_replicas,
                                                   int32_t num_physical_experts) {
  const int32_t k = key >= 0 ? key : 0;
  const uint32_t c = key >= 0 ? static_cast<uint32_t>(logcnt[k]) : 1u;
  const uint32_t j = c <= 1u ? 0u : rank % c;
  const int32_t slot = log2phy[static_cast<int64_t>(k) * max_replicas + j];
  return (key >= 0 && slot >= 0 && slot < num_physical_experts) ? slot : -1;
}

// Replica index on the hash path for an expert with c >= 1 replicas:
// floor(hash * c / 2^32), in [0, c) (a multiply and a shift rather than a
// division, and as uniform as hash mod c).
__host__ __device__ __forceinline__ uint32_t EplbHashedReplica(uint32_t hash, uint32_t c) {
  return static_cast<uint32_t>((static_cast<uint64_t>(hash) * c) >> 32);
}

// Physical slot of an item of expert `key` (from EplbItemKey; -1 gives -1)
// on the hash path: log2phy[key][EplbHashedReplica(hash, logcnt[key])];
// -1 when that table entry is outside [0, P).
__device__ __forceinline__ int32_t EplbHashedSlot(int32_t key, uint32_t hash,
                                                  const int32_t* log2phy, const int32_t* logcnt,
                                                  int32_t max_replicas,
                                                  int32_t num_physical_experts) {
  const int32_t k = key >= 0 ? key : 0;
  const uint32_t c = key >= 0 ? static_cast<uint32_t>(logcnt[k]) : 1u;  // valid key: c in [1, R+1]
  const uint32_t j = EplbHashedReplica(hash, c);
  const int32_t slot = log2phy[k * max_replicas + static_cast<int32_t>(j)];
  return (key >= 0 && slot >= 0 && slot < num_physical_experts) ? slot : -1;
}

// How many of the ranks offset, offset+1, ..., offset+n-1 fall on replica j
// of an expert with c replicas (ranks taken mod c): the per-replica count of
// a run of n items, so a block can add its totals instead of one atomic per
// item.
__host__ __device__ __forceinline__ int32_t EplbReplicaShare(int32_t n, uint32_t offset, int32_t c,
                                                             int32_t j) {
  const int32_t first = static_cast<int32_t>(offset % static_cast<uint32_t>(c));
  const int32_t d = (j - first + c) % c;  // distance from the first replica hit
  return n / c + ((d < n % c) ? 1 : 0);
}

// Adds n to counters[slot] when slot is in [0, P) (integer atomics: exact in
// any order).
__device__ __forceinline__ void EplbCountAdd(int32_t* counters, int32_t slot, int32_t n,
                                             int32_t num_physical_experts) {
  if (slot >= 0 && slot < num_physical_experts && n != 0) atomicAdd(counters + slot, n);
}

#endif  // __CUDACC__
