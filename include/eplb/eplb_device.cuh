// Public device functions of eplb's route + count, so that an engine can
// fuse replica choice and load counting into its own gating / top-k kernel.
// Two forms: the warp recipe below, and EplbBlockRoute (a whole block, one
// item per thread; the fast one at decode sizes). eplbRouteCount's kernels
// are built from these same functions (its decode kernel is EplbBlockRoute;
// its many-segment kernel ranks with EplbWarpRank; its hash path uses
// EplbItemHash / EplbHashedReplica), so a fused kernel that follows either
// form makes the same choices.
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
// Cost (bench_kernels BM_FusedRouteDecodeGraph, H200, per launch over a
// stand-in engine kernel of the same shape, 64 / 512 tokens x top-8): this
// warp recipe, one warp walking a segment with the tables in global
// memory, +11 / +72 us; EplbBlockRoute below (16 warps, one item per
// thread, staging the tables, aggregate = true at 512 tokens), +1.30 /
// +1.44 us; the engine kernel followed by eplbRouteCount (which routes 64
// tokens in four 4-warp blocks, 512 in 8-warp ones, neither staging),
// +1.57 / +2.44 us (2026-11-29, 038af62; +1.28 / +1.44 and +1.75 / +2.50
// at ab5390c; +1.74 / +2.56 at 8d91112, with 16-warp blocks at 512; with
// per-run global counting at 512 tokens EplbBlockRoute took +1.91 at
// f117bd4; earlier runs of older versions: +1.3-1.5 / +1.4-2.0 and
// +2.2-2.4 / +3.0-3.2).
// Fuse with EplbBlockRoute.
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

// 1 / c for c >= 1, approximate (one MUFU.RCP): the estimate EplbDivMod
// corrects.
__device__ __forceinline__ float EplbRcp(uint32_t c) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(static_cast<float>(c)));
  return r;
}

// x / c, and x mod c in *rem, for c >= 1 with rc = EplbRcp(c); exact. For
// x < 2^20 the float estimate x * rc is within 1/2 of x / c (rc is within
// 2^-22 of 1 / c, relative, and the product rounds by 2^-24), so its
// integer part is within 1 of the quotient and one correction makes it
// exact: about half the instructions of a 32-bit division, on the path
// every item of EplbBlockRoute takes. Larger x take the division. The GPU
// test DeviceFunctions.DivModExact checks every x < 2^21 for c up to 300.
__device__ __forceinline__ uint32_t EplbDivMod(uint32_t x, uint32_t c, float rc, uint32_t* rem) {
  if (x >= (1u << 20)) {
    *rem = x % c;
    return x / c;
  }
  uint32_t q = __float2uint_rz(__uint2float_rz(x) * rc);
  int32_t m = static_cast<int32_t>(x - q * c);
  if (m < 0) {
    --q;
    m += static_cast<int32_t>(c);
  } else if (m >= static_cast<int32_t>(c)) {
    ++q;
    m -= static_cast<int32_t>(c);
  }
  *rem = static_cast<uint32_t>(m);
  return q;
}

// Shared memory, in bytes, that EplbBlockRoute needs (16-byte aligned):
// the lane masks [E][kWarps] and the earlier-item counts [E]; with
// kStageTables, logcnt [E] and two log2phy columns [E][2]; when
// `aggregate`, a [P] counter row; then 64 ints that the atomics of
// rejected items go to, so that no shared atomic sits behind a branch (the
// ORs and share adds one word per lane, so that they do not conflict; the
// earlier ids that do not count all to one word, where the hardware
// combines a warp's increments of one address). Those 256 bytes came in on
// 2026-11-29: a shape that needed just under the default 48 KB before may
// now need the opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize). The
// default (stage_tables = true) is enough for either kStageTables; pass the
// kernel's kStageTables to save 3 * E ints where it does not stage.
__host__ __device__ constexpr size_t EplbBlockRouteSmemBytes(int32_t warps, int32_t num_e,
                                                             int32_t num_p, bool aggregate,
                                                             bool stage_tables = true) {
  return sizeof(int32_t) *
         ((static_cast<size_t>(warps) + (stage_tables ? 4 : 1)) * static_cast<size_t>(num_e) +
          (aggregate ? static_cast<size_t>(num_p) : 0) + 64);
}

// Calls f(p) for p = threadIdx.x, + 32 * kWarps, ... below num_p: the
// walk over EplbBlockRoute's [P] counter row. ptxas unrolls a loop bounded
// at run time with a remainder; in blocks of up to 8 warps (two trips at
// P = 288) a plain loop measured faster (same-run A/B, H200: -0.05 / -0.04
// us at 512 / 1024 tokens x top-8), in 16-warp blocks slower (+0.1 at 8192
// tokens).
template <int kWarps, typename F>
__device__ __forceinline__ void EplbForEachSlot(int32_t num_p, F&& f) {
  if constexpr (kWarps <= 8) {
#pragma unroll 1
    for (int p = threadIdx.x; p < num_p; p += 32 * kWarps) f(p);
  } else {
    for (int p = threadIdx.x; p < num_p; p += 32 * kWarps) f(p);
  }
}

// The zeroing that opens EplbBlockRoute, on its own: the shared memory
// EplbBlockRoute needs zeroed (its per-warp lane masks, with earlier items
// its earlier counts, when aggregating its [P] counter row). Same template
// arguments, num_e, num_p, aggregate and smem as the EplbBlockRoute call
// (with kZeroed = true) that follows; every thread
// calls it, then __syncthreads(), then EplbBlockRoute with kZeroed = true.
// For a kernel launched with programmatic dependent launch: it can zero
// before griddepcontrol.wait (cudaGridDependencySynchronize), while the
// kernel before it finishes, since nothing here reads global memory.
// Stores with compile-time trip counts (E <= kMaxExperts), not loops
// bounded by E at run time, which compiled to unrolled loops with
// remainders and several branches before the barrier: 0.04-0.11 us less
// at 64-1024 tokens x top-8 (H200, same run).
template <int kWarps, int kEarlierPerThread = 0, int kMaxExperts = 1024,
          bool kStageTables = (kWarps >= 16)>
__device__ __forceinline__ void EplbBlockRouteZero(int32_t num_e, int32_t num_p, bool aggregate,
                                                   void* smem) {
  constexpr int kThreads = 32 * kWarps;
  constexpr int kPer = (kMaxExperts + kThreads - 1) / kThreads;
  const int tid = threadIdx.x;
  int32_t* pre = static_cast<int32_t*>(smem) + kWarps * num_e;
  int32_t* s_load = kStageTables ? pre + 4 * num_e : pre + num_e;
  int4* hist4 = static_cast<int4*>(smem);
  constexpr int kZero = (kWarps / 4 * kMaxExperts + kThreads - 1) / kThreads;
#pragma unroll
  for (int k = 0; k < kZero; ++k) {
    const int x = tid + k * kThreads;
    if (x < kWarps / 4 * num_e) hist4[x] = make_int4(0, 0, 0, 0);
  }
  if (kEarlierPerThread > 0) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads;
      if (e < num_e) pre[e] = 0;
    }
  }
  if (aggregate) EplbForEachSlot<kWarps>(num_p, [&](int p) { s_load[p] = 0; });
}

// Block-wide route + count of one item per thread: the way to fuse
// eplbRouteCount into an engine kernel at decode sizes (eplbRouteCount's
// own decode kernel is this function). Every thread of a 1-D block of
// 32 * kWarps threads (kWarps a multiple of 4, at most 32) calls it with
// its item; items are ordered by thread index. An item counts when `valid`
// (e.g. its token is below the valid count) and its id is an expert in
// [0, E) with a usable count (EplbItemKey); it gets rank r = number of
// counting items of the same expert before it in this block, plus the
// count of that expert among `earlier`, and takes replica (r + offset) mod
// logcnt[e]: slot log2phy[e][that], or -1 when that entry is outside
// [0, P). Others get -1. The slot is returned and, when slot_out is not
// null, stored there.
//
// earlier: items of the same run that precede this block (num_earlier of
//   them, the first num_earlier_valid of which count), at most
//   kEarlierPerThread * 32 * kWarps; nullptr / 0 when the block starts its
//   run. With the block alone as its run and offset = the run's index, the
//   choices are eplbRouteCount's for a launch of T*K <= 32 * kWarps items
//   (one segment, offset 0); with earlier = the segment's items before the
//   block, they are its choices for any launch on the rank path.
// load_pass: [P] counters, nullptr to route without counting. Each
//   replica's share of the block's items is added with one atomic per run
//   of equal ids in a warp, or, when `aggregate`, summed in shared memory
//   first and added once per slot (better when many blocks add to the same
//   hot slots).
// smem: EplbBlockRouteSmemBytes(kWarps, E, P, aggregate, kStageTables)
//   bytes of shared memory, 16-byte aligned. Two __syncthreads inside
//   (three with `aggregate`; one fewer with kZeroed); every thread must
//   call. Needs 1 <= E <= P
//   (as eplbRouteCount checks) and E not above kMaxExperts: the zeroing
//   (and the staging) cover kMaxExperts experts (a larger E gives wrong
//   slots, though every access stays in bounds); each thread zeroes (and
//   stages) kMaxExperts / (32 * kWarps) experts, so the smallest bound
//   that holds E is the fastest.
// kZeroed: false, the function zeroes its shared memory itself, behind a
//   barrier; true, the caller already did, with EplbBlockRouteZero (same
//   template arguments, E, P, aggregate and smem) and a __syncthreads()
//   after it (e.g. before griddepcontrol.wait in a kernel launched with
//   programmatic dependent launch; eplbRouteCount's 8-warp kernel always
//   zeroes so, and waits there when launched early under EPLB_PDL=1): one
//   barrier fewer here.
// kStageTables: where the item's logcnt and first two log2phy columns come
//   from (a third column or more is read from global memory once the rank
//   is known). false: each thread loads its own item's, by its id, right
//   at the start. true: the block loads every expert's into shared memory
//   (one coalesced logcnt row and a strided gather of the columns). The
//   default is what measured faster for the block size: loading the item's
//   own in 4- and 8-warp blocks (eplbRouteCount, same run, H200, us over an
//   empty kernel at 64 / 512 / 1024 tokens x top-8, with the id load
//   issued first: 1.07 -> 0.92, 1.74 -> 1.67, 1.77 -> 1.71; with the
//   load-aware placement 1.20 -> 1.04, 1.91 -> 1.77, 1.93 -> 1.80: the
//   block's gather of 2 * E scattered entries had been the last of its
//   loads to land, 14% of the 64-token kernel's stall samples in ncu);
//   staging in blocks of 16 warps (measured) or more (32 warps: assumed
//   alike, not measured) (65536 items in 16-warp blocks:
//   2.91 against 2.95-2.97; bench_kernels' fused 16-warp block at 64
//   tokens gave 1.33 not staging, 1.28 staging in an earlier run).
// Speed: the function is latency-bound, so fewer warps per SM finish
// sooner: eplbRouteCount routes 64 tokens x top-8 in four 4-warp blocks
// (128 items each, the later ones with their predecessors as `earlier`),
// 0.85 us over an empty kernel now (bench_kernels, H200); when that shape
// came in, 1.18 where one 16-warp block took 1.49 (same run; two-warp
// blocks, 1.24 against 1.21); 512 tokens in 8-warp blocks, 1.47 now, 1.79
// where 16-warp ones took 1.99. An engine with a choice of
// block size at decode can use it. Pass `aggregate` as a constant where it
// is one: the compiler then drops the other path (eplbRouteCount's 64-token
// kernel, with the zeroing loops of the time: 480 SASS instructions instead
// of 672, 0.09 us less; 336 now). Deterministic:
// masks are ORed and counts added, so no result depends on thread timing.
template <int kWarps, int kEarlierPerThread = 0, int kMaxExperts = 1024,
          bool kStageTables = (kWarps >= 16), bool kZeroed = false, typename IdT>
__device__ __forceinline__ int32_t EplbBlockRoute(IdT id, bool valid, const IdT* earlier,
                                                  uint32_t num_earlier, uint32_t num_earlier_valid,
                                                  uint32_t offset, const int32_t* log2phy,
                                                  const int32_t* logcnt, int32_t num_e,
                                                  int32_t num_p, int32_t* load_pass, bool aggregate,
                                                  int32_t* slot_out, void* smem) {
  static_assert(kWarps % 4 == 0 && kWarps >= 4 && kWarps <= 32, "kWarps: 4, 8, ..., 32");
  constexpr int kThreads = 32 * kWarps;
  constexpr int kPer = (kMaxExperts + kThreads - 1) / kThreads;  // experts each thread zeroes
  // log2phy columns loaded up front, staged or the item's own (further
  // replicas are read from global memory once the rank is known). Fewer is
  // faster, even for a load-aware placement whose hot experts hold up to 15
  // replicas: with staging, 2 columns 0.1-0.25 us faster than 4 at
  // 64-8192 tokens x top-8, 16 columns 0.7-1 us slower (H200).
  constexpr int kCols = 2;  // step 3 reads a staged row's columns as one int2
  const int32_t max_rep = num_p - num_e + 1;
  unsigned* hist = static_cast<unsigned*>(smem);                     // [E][kWarps] lane masks
  int32_t* pre = reinterpret_cast<int32_t*>(hist + kWarps * num_e);  // [E] earlier items
  int32_t* s_cnt = pre + num_e;  // [E] logcnt, with kStageTables
  // [E][kCols] log2phy, (kWarps + 2) * E ints in: 8-byte aligned (kWarps is even).
  int32_t* s_tab = s_cnt + num_e;
  int32_t* s_load = kStageTables ? s_tab + kCols * num_e : pre + num_e;  // [P] when aggregating
  // [64] Where the shared atomics of rejected items go, never read for a
  // result: the OR of a rejected item to word `lane` and an earlier id that
  // does not count to word 0 (step 2), a lane that adds no share to word
  // 32 + `lane` (step 3, when aggregating: apart from the words step 3
  // reads). With it no shared atomic is conditional (with a branch around
  // each, each sat in its own divergent region): same-run A/B on an H200,
  // us over an empty kernel at 64 / 512 / 1024 / 8192 tokens x top-8,
  // 0.92 / 1.69 / 1.73 / 2.92 -> 0.86 / 1.55 / 1.59 / 2.79 (a quarter of
  // the tokens valid: 0.89 / 1.62 / 1.68 / 2.16 -> 0.83 / 1.47 / 1.55 /
  // 2.03; load-aware placement: 1.03 / 1.78 / 1.81 / 2.91 -> 0.98 / 1.63 /
  // 1.68 / 2.83). Step 2 alone: 0.85 / 1.60 / 1.64 / 2.81; with one
  // shared trash word for all ORs, 0.95 at 64 tokens.
  int32_t* const trash = s_load + (aggregate ? num_p : 0);
  const int tid = threadIdx.x, warp = tid >> 5;
  const unsigned lane = tid & 31u;
  // Quad q of an id's row of cells is stored at quad q ^ swizzle(id) (< the
  // row's kWarps / 4 quads): with 16 warps, rows of 4 quads, (id >> 1) & 3
  // spreads a warp's rows over the 8 bank quads. The XOR stays inside the
  // row only for a power-of-two number of quads: rows of 3, 5, 6 or 7
  // quads (12, 20, 24, 28 warps) are not swizzled.
  constexpr int kQuads = kWarps / 4;
  constexpr bool kSwizzle = (kQuads & (kQuads - 1)) == 0;
  auto swizzle = [](int32_t id) {
    return kSwizzle ? (kQuads >= 8 ? id : id >> 1) & (kQuads - 1) : 0;
  };

  // 1. Every global load at once (the earlier ids, logcnt, the first
  // columns of log2phy), into registers: a shared store between two loads
  // would make the second wait for the first. Then the zeroing, behind a
  // barrier that does not wait for the loads (unless kZeroed: the caller
  // zeroed before), then the staged tables are stored; they are read only
  // after barrier 2. The item's own table entries
  // are read at its raw id, clamped, so that they wait for the id alone
  // (not for `valid`).
  IdT earlier_r[kEarlierPerThread > 0 ? kEarlierPerThread : 1];
#pragma unroll
  for (int k = 0; k < kEarlierPerThread; ++k) {
    const uint32_t j = tid + k * kThreads;
    earlier_r[k] = j < num_earlier ? earlier[j] : IdT(-1);
  }
  constexpr int kStaged = kStageTables ? kPer : 1;
  int32_t cnt_r[kStaged], tab_r[kStaged][kCols];
  if constexpr (kStageTables) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads;
      cnt_r[k] = e < num_e ? logcnt[e] : 0;
#pragma unroll
      for (int j = 0; j < kCols; ++j)
        tab_r[k][j] = e < num_e && j < max_rep ? log2phy[e * max_rep + j] : -1;
    }
  } else {
    const bool in_range = static_cast<int64_t>(id) >= 0 && static_cast<int64_t>(id) < num_e;
    const int32_t xr = in_range ? static_cast<int32_t>(id) : 0;
    cnt_r[0] = logcnt[xr];
    tab_r[0][0] = log2phy[xr * max_rep];
    tab_r[0][1] = max_rep > 1 ? log2phy[xr * max_rep + 1] : -1;
  }
  if constexpr (!kZeroed) {
    EplbBlockRouteZero<kWarps, kEarlierPerThread, kMaxExperts, kStageTables>(num_e, num_p,
                                                                             aggregate, smem);
    __syncthreads();
  }
  if constexpr (kStageTables) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = tid + k * kThreads;
      if (e < num_e) {
        s_cnt[e] = cnt_r[k];
#pragma unroll
        for (int j = 0; j < kCols; ++j) s_tab[e * kCols + j] = tab_r[k][j];
      }
    }
  }

  // 2. Each lane ORs its bit into its id's cell of its warp, so that after
  // barrier 2 a cell holds the lanes of that warp with that id (a run); the
  // earlier items are counted per id. Both keyed by the raw id in [0, E):
  // whether the expert's count is usable is checked after the barrier (an
  // expert with a broken count marks cells that only its own items, all
  // rejected, would read), so nothing here waits for the tables. An id's
  // row holds its kWarps cells as quads of 4 warps, swizzled as above, so
  // the 16-byte reads of step 3 conflict little.
  const int32_t xid = valid && static_cast<int64_t>(id) >= 0 && static_cast<int64_t>(id) < num_e
                          ? static_cast<int32_t>(id)
                          : -1;
  unsigned* const cell = xid >= 0
                             ? hist + xid * kWarps + 4 * ((warp >> 2) ^ swizzle(xid)) + (warp & 3)
                             : reinterpret_cast<unsigned*>(trash) + lane;
  atomicOr(cell, 1u << lane);
#pragma unroll
  for (int k = 0; k < kEarlierPerThread; ++k) {
    const uint32_t j = tid + k * kThreads;
    const int64_t pr = static_cast<int64_t>(earlier_r[k]);
    const bool counts = j < num_earlier_valid && pr >= 0 && pr < num_e;
    atomicAdd(counts ? pre + static_cast<int32_t>(pr) : trash, 1);
  }
  __syncthreads();

  // 3. Every shared load of the item at once, at a clamped index, so that
  // none waits for another: its run cell, the cells of lower warps, the
  // earlier count, and the expert's staged count and columns. Rank = earlier
  // count + the expert's runs in lower warps + the lane's place t in its
  // run. The lane at place t < min(n, c) of a run of n holds replica (its
  // rank) mod c, which takes n / c of the run plus one for t < n mod c
  // (EplbReplicaShare): it adds that share to its own slot.
  const int32_t xc = xid >= 0 ? xid : 0;
  // Not staged: the item's own, loaded at its id (= xc when xid >= 0; else
  // the item is rejected whatever they hold).
  int32_t c_raw = cnt_r[0];
  int2 tab = make_int2(tab_r[0][0], tab_r[0][1]);
  if constexpr (kStageTables) {
    c_raw = s_cnt[xc];
    tab = *reinterpret_cast<const int2*>(s_tab + xc * kCols);
  }
  const unsigned run = *cell;
  const uint32_t pre_n = kEarlierPerThread > 0 ? static_cast<uint32_t>(pre[xc]) : 0u;
  const int4* row = reinterpret_cast<const int4*>(hist + xc * kWarps);
  const int sw = swizzle(xc);
  int4 h[kQuads];
#pragma unroll
  for (int q = 0; q < kQuads; ++q)
    if (4 * q < warp) h[q] = row[q ^ sw];
  const bool key_ok = xid >= 0 && c_raw >= 1 && c_raw <= max_rep;  // as EplbItemKey
  const uint32_t c = key_ok ? static_cast<uint32_t>(c_raw) : 1u;
  const float rc = EplbRcp(c);
  const unsigned peers = key_ok ? run : 0u;
  const unsigned lower = peers & ((1u << lane) - 1u);
  const uint32_t t = __popc(lower), n = __popc(peers);
  uint32_t n_mod;
  const uint32_t n_div = EplbDivMod(n, c, rc, &n_mod);
  uint32_t before = pre_n;
#pragma unroll
  for (int q = 0; q < kQuads; ++q) {
    if (4 * q < warp) {
      const int w = 4 * q;
      before += __popc(h[q].x) + (w + 1 < warp ? __popc(h[q].y) : 0) +
                (w + 2 < warp ? __popc(h[q].z) : 0) + (w + 3 < warp ? __popc(h[q].w) : 0);
    }
  }
  uint32_t col;
  EplbDivMod(before + t + offset, c, rc, &col);
  int32_t v = col == 0 ? tab.x : tab.y;
  if (col >= kCols) v = log2phy[xc * max_rep + static_cast<int32_t>(col)];
  const int32_t slot = (key_ok && v >= 0 && v < num_p) ? v : -1;
  if (load_pass != nullptr) {
    const bool adds = key_ok && t < c;  // t < n: the lane is in its run
    const int32_t share = static_cast<int32_t>(n_div + (t < n_mod ? 1u : 0u));
    if (!aggregate) {
      if (adds) EplbCountAdd(load_pass, slot, share, num_p);
    } else {
      const bool to_slot = adds && slot >= 0;
      atomicAdd(to_slot ? s_load + slot : trash + 32 + lane, to_slot ? share : 0);
    }
  }
  if (slot_out != nullptr) *slot_out = slot;
  if (aggregate && load_pass != nullptr) {
    __syncthreads();
    EplbForEachSlot<kWarps>(num_p, [&](int p) {
      if (s_load[p] != 0) atomicAdd(load_pass + p, s_load[p]);
    });
  }
  return slot;
}

#endif  // __CUDACC__
