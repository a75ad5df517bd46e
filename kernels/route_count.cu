// Route + count and count-only kernels. On the rank path the items of each
// expert inside a segment get ranks in ascending item order (warp peer sets:
// EplbWarpRank, public in eplb_device.cuh, in the segment kernel; lane masks
// ORed in shared memory in the sub-block kernel), and per-replica totals are
// added once per block and expert (segment kernel) or once per warp run of
// equal keys (sub-block kernel), as EplbReplicaShare counts them: no
// per-item global atomics, and the choice of replica depends on the data
// only, never on thread timing.
//
// Every global access of the route kernels is a plain one. Streaming hints
// (__ldcs/__stcs, evict-first) looked right for data touched once, but on an
// H200 a plain grid-stride copy kernel moved 0.93 of cudaMemcpy's bytes per
// second and 0.885 with both; the hash path went from 0.85 to 0.90 without.
#include <cuda_runtime.h>

#include <type_traits>

#include "eplb/eplb.h"
#include "eplb/eplb_device.cuh"
#include "enqueue.cuh"
#include "launch.cuh"

namespace eplb {
namespace kernels {
namespace {

// Two kernels on the rank path. Launches of many segments: one block of 8
// warps per segment (16 items per lane per 4096-item tile; 4 blocks per SM,
// so 528 segments are one wave). Launches of few segments (decode sizes):
// each segment is split into sub-blocks on their own SMs, one item per
// thread: 128-item blocks of 4 warps for launches of at most 512 items (64
// tokens x top-8), 256-item blocks of 8 warps up to 8192 items (1024
// tokens), else 512-item blocks of 16 warps. The launch is latency-bound,
// and more SMs each running fewer warps finish sooner (a per-block timeline
// on an H200: the step after barrier 2 took 1,550 cycles in 16-warp blocks
// and 610 in 4-warp ones, most of it instruction issue): 64 tokens x top-8,
// same-run A/B, 1.48 -> 1.20 us over an empty kernel with four 4-warp
// blocks in place of one 16-warp block (1.29 with two 8-warp blocks); 512
// and 1024 tokens, 1.99 -> 1.79 and 2.04 -> 1.84 with 8-warp blocks in
// place of 16-warp ones. But each block counts the ids of its segment
// before it, and smaller blocks count more of them (up to 15 per thread
// in 8-warp blocks), and every block adds its counts to the same counters:
// 8-warp blocks at 8192 tokens were 1.25 slower.
constexpr int kSegWarps = 8;
// A sub-block shape: warps per block (the block's items, one per thread,
// are 32 * warps), the earlier ids each thread counts: enough for the ids
// of a segment before its last block (a segment is at most one tile; for
// the small shape, the launch's at most kSmallSubItems), and whether the
// blocks add their counts up in shared memory before adding them to
// load_pass (EplbBlockRoute's `aggregate`). The small shape adds them per
// run of equal keys: aggregating the 512 items of 64 tokens x top-8 cost
// 0.15 us more; the large shape aggregates: not aggregating in the 8 blocks
// of 512 tokens cost 0.3-0.4 more (the runs of hot experts queue on the
// same global counters; same-run A/B on an H200, us over an empty kernel).
// Being part of the shape, the choice is a compile-time constant of the
// kernel: with it passed at run time, the small kernel carried the unused
// path (672 instructions of SASS instead of 480) and took 0.09 us more at
// 64 tokens. Last, whether the blocks stage the tables (EplbBlockRoute's
// kStageTables): the small and mid shapes load each item's own entries,
// with the id load issued first (-0.15 / -0.07 / -0.06 us at 64 / 512 /
// 1024 tokens, same run, H200); the large shape stages (its 65536 items
// each loading their own entries: +0.04-0.06). Not staging also takes
// 3 * E ints less shared memory, so launches of 513-8192 items with large
// tables (e.g. E = 1024, P <= 3008; P <= 3072 before EplbBlockRoute's 64
// trash ints) now fit the mid shape's 48 KB where they took the segment
// kernel before.
//
// Programmatic dependent launch (enqueue.cuh) adds two choices: whether the
// blocks zero their shared memory (EplbBlockRouteZero) before
// GridDependencyWait(), and when the shape is launched early (EarlyShape).
// Every shape calls GridDependentsLaunch() right after the wait. Same-run A/B on an H200, us
// over an empty kernel at 64 / 512 / 1024 / 8192 tokens x top-8, in graphs of
// 64 launches, each after the last: launched early with the wait first thing
// 0.87 / 1.49 / 1.52 / 2.82 -> 0.63 / 1.25 / 1.27 / 2.35; also letting the
// next launch start, 0.49 / 1.14 / 1.16 / 2.40; zeroing first, 0.65 / 1.28 /
// 1.32 / 2.38, and letting the next launch start, 0.62 / 1.05 / 1.06 / 2.58.
// The 128 blocks of 8192 tokens lose by being launched early after an engine
// kernel that lets them start at once (route_ab ROUTE_AB_ENGINE=2: 3.28
// launched normally, 3.86 early, over that kernel alone), so they are
// launched early only behind eplb's own kernels (kBehindEplb), and let the
// next launch start (0.05 more than without, route after route, but a chain
// of them launches early). Letting the next launch start pays even where
// eplb's own launch is normal: an engine kernel launched early after it
// starts sooner (route_ab ROUTE_AB_ENGINE=2 with early launch off, over the
// engine kernel alone: 1.37 / 2.09 / 2.09 with it, 1.67 / 2.32 / 2.33
// without, at 64 / 512 / 1024 tokens).
struct SubShape {
  int warps, pre;
  bool aggregate, stage;
  bool zero_first;
  EarlyShape early;
};
constexpr EarlyShape kByMode = EarlyShape::kByMode, kBehindEplb = EarlyShape::kBehindEplb;
// {warps, pre, aggregate, stage, zero_first, early}:
constexpr uint32_t kSmallSubItems = 512;
constexpr SubShape kSmallSub = {4, kSmallSubItems / 128 - 1, false, false, false, kByMode};
constexpr uint32_t kMidSubItems = 8192;
constexpr SubShape kMidSub = {8, kRouteTileItems / 256 - 1, true, false, true, kByMode};
constexpr SubShape kSub = {16, kRouteTileItems / 512 - 1, true, true, false, kBehindEplb};
// EplbBlockRoute zeroes (and, staging, stages) up to its kMaxExperts
// experts, kMaxExperts / threads per thread: fewer where E is small (one
// staged expert per thread of a 512-item block instead of two: 0.1-0.2 us
// less at 64-8192 tokens x top-8 on an H200, with the division of
// eplb_device.cuh).
static_assert(EPLB_MAX_LOGICAL_EXPERTS <= 1024, "the sub-block kernels' largest kMaxExperts");

__device__ __forceinline__ int64_t ValidItems(int64_t num_tokens, const int32_t* d_num_tokens,
                                              int32_t top_k) {
  int64_t t = num_tokens;
  if (d_num_tokens != nullptr) {
    int64_t v = *d_num_tokens;
    t = v < 0 ? 0 : (v > num_tokens ? num_tokens : v);
  }
  return t * top_k;
}

__device__ __forceinline__ unsigned long long WarpSum(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Segment shape: 4 blocks of 256 per SM, so the 528 segments are one wave
// on a 132-SM H100.
template <typename IdT>
__global__ void __launch_bounds__(kSegWarps * 32, 4)
    RouteCountKernel(const IdT* __restrict__ ids, int64_t cap_items, int64_t num_tokens,
                     const int32_t* d_num_tokens, int32_t top_k,
                     const int32_t* __restrict__ log2phy, const int32_t* __restrict__ logcnt,
                     int32_t num_e, int32_t key_bits, int32_t num_p, int32_t max_rep,
                     const int32_t* d_record, int32_t* __restrict__ out, int32_t* load_pass,
                     unsigned long long* d_invalid, int64_t seg_items) {
  constexpr int kWarps = kSegWarps;
  constexpr int kItemsPerLane = static_cast<int>(kRouteTileItems / (32 * kWarps));
  constexpr int64_t kTile = int64_t{kItemsPerLane} * 32 * kWarps;
  static_assert(kTile == kRouteTileItems, "tile size");
  extern __shared__ int32_t smem[];
  int32_t* hist = smem;                       // [kWarps][E]: per-warp counts, then bases
  int32_t* seg_base = smem + kWarps * num_e;  // [E]: ranks handed out so far in the segment
  int32_t* s_cnt = seg_base + num_e;          // [E]: logcnt, staged once per block
  __shared__ unsigned long long s_invalid;

  const int64_t n_valid = ValidItems(num_tokens, d_num_tokens, top_k);
  const int32_t seg = blockIdx.x;
  const int64_t seg_begin = int64_t{seg} * seg_items;
  int64_t seg_end = seg_begin + seg_items;
  if (seg_end > cap_items) seg_end = cap_items;
  if (seg_begin >= seg_end) return;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;

  const bool record = (d_record == nullptr) || (*d_record != 0);
  for (int e = threadIdx.x; e < num_e; e += blockDim.x) {
    seg_base[e] = 0;
    s_cnt[e] = logcnt[e];
  }
  for (int x = threadIdx.x; x < kWarps * num_e; x += blockDim.x) hist[x] = 0;
  if (threadIdx.x == 0) s_invalid = 0;
  unsigned long long invalid = 0;
  __syncthreads();

  for (int64_t tile = seg_begin; tile < seg_end; tile += kTile) {
    if (tile != seg_begin) {
      __syncthreads();  // every warp is done with the last tile's hist
      for (int x = threadIdx.x; x < kWarps * num_e; x += blockDim.x) hist[x] = 0;
      __syncthreads();
    }
    // The tile is split into kWarps contiguous chunks (so a short tile keeps
    // every warp busy); ranks only depend on item order, not on the split.
    const int64_t tile_end = tile + kTile < seg_end ? tile + kTile : seg_end;
    const int64_t chunk_len = ((tile_end - tile + kWarps - 1) / kWarps + 31) / 32 * 32;
    const int64_t chunk = tile + int64_t{warp} * chunk_len;
    const int64_t chunk_end = chunk + chunk_len < tile_end ? chunk + chunk_len : tile_end;
    int32_t* my_hist = hist + warp * num_e;
    int32_t key[kItemsPerLane];
    int32_t rank[kItemsPerLane];
    // Keys first (the raw ids die here, which keeps the int64 path in 64
    // registers), then the warp ranks in item order.
#pragma unroll
    for (int j = 0; j < kItemsPerLane; ++j) {
      const int64_t i = chunk + j * 32 + lane;
      key[j] = -1;
      if (i < chunk_end) {
        const IdT raw = ids[i];
        if (i < n_valid) {
          key[j] = EplbItemKey(static_cast<int64_t>(raw), num_e, s_cnt, max_rep);
          if (key[j] < 0) ++invalid;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kItemsPerLane; ++j) {
      rank[j] = 0;
      if (j * 32 < chunk_len && __any_sync(0xffffffffu, key[j] >= 0)) {
        rank[j] = EplbWarpRank(key[j], my_hist, key_bits);
      }
    }
    __syncthreads();
    // Exclusive scan over warps, per expert, seeded with the segment's count.
    for (int e = threadIdx.x; e < num_e; e += blockDim.x) {
      int32_t base = seg_base[e];
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const int32_t c = hist[w * num_e + e];
        hist[w * num_e + e] = base;
        base += c;
      }
      seg_base[e] = base;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kItemsPerLane; ++j) {
      const int64_t i = chunk + j * 32 + lane;
      if (i < chunk_end) {
        const int32_t slot = EplbReplicaSlot(
            key[j], static_cast<uint32_t>((key[j] >= 0 ? my_hist[key[j]] : 0) + rank[j] + seg),
            log2phy, s_cnt, max_rep, num_p);
        if (key[j] >= 0 && slot < 0) ++invalid;
        out[i] = slot;
      }
    }
  }

  if (record) {
    // seg_base[e] was written by this same thread: the segment's items of e
    // have ranks 0 .. seg_base[e] - 1.
    for (int e = threadIdx.x; e < num_e; e += blockDim.x) {
      const int32_t n = seg_base[e];
      if (n == 0) continue;
      const int32_t c = s_cnt[e];  // n > 0 implies c in [1, max_rep]
      for (int j = 0; j < c; ++j) {
        const int32_t slot = log2phy[int64_t{e} * max_rep + j];
        EplbCountAdd(load_pass, slot, EplbReplicaShare(n, static_cast<uint32_t>(seg), c, j), num_p);
      }
    }
  }
  if (d_invalid != nullptr) {
    invalid = WarpSum(invalid);
    if (lane == 0 && invalid != 0) atomicAdd(&s_invalid, invalid);
    __syncthreads();
    if (threadIdx.x == 0 && s_invalid != 0) atomicAdd(d_invalid, s_invalid);
  }
}

// Sub-block shape (decode sizes): block (s, b) routes items
// [s*Z + B*b, ...) of segment s (B = 32 * kWarps), one per thread, with
// EplbBlockRoute
// (eplb_device.cuh: the same function engines fuse), the segment's items
// before the sub-block as its earlier items and s as its offset. The launch
// is latency-bound, so that function is built for the fewest dependent
// steps: every global load at once; zeroing behind a barrier that does not
// wait for the loads; lane masks ORed into per-warp cells of each id (and
// the earlier items counted per id), order-free so exact and deterministic;
// a second barrier; then ranks from popcounts and each run's replica shares
// added by the run's first lanes (in shared memory first, behind a third
// barrier, in the aggregating shapes). No per-expert pass over the block:
// at 64 tokens x top-8 the kernel used to spend ~6300 SM
// cycles (ncu, H200) on a per-expert scan and flush behind four barriers.
// Measured on an H200 (same-run A/B, us over an empty kernel at 64 / 512 /
// 1024 / 8192 tokens): the ORed masks in place of nine ballots per warp
// (EplbWarpPeers) and a store of the run length, 0.02 / 0.1 / 0.06 / 0.18
// less; the [E][warp] layout of the cells with swizzled quads in place of
// [warp][E], 0.07-0.22 less; counting by each run's first lanes in place of
// the first lane walking the run's replicas (a table load each), 0.15-0.3
// less (0.9-1.3 with hot experts of up to 15 replicas); masks keyed by the
// raw id so that barrier 1 does not wait for the tables, 0.15 / 0.1 / 0.35
// / 0.06 less; after barrier 2 every shared load of the item issued at
// once, the divisions by the replica count done with a float reciprocal
// (EplbDivMod) and one staged expert per thread where E <= 512, 0.19 /
// 0.18 / 0.23 / 0.2 less (1.51 / 2.29 / 2.07 / 2.97 over an empty kernel);
// later (2026-11-29) the small and mid shapes load each item's own table
// entries instead of staging every expert's (SubShape::stage).
// Launched with programmatic dependent launch (enqueue.cuh): no pointer is
// __restrict__, so that no load takes the read-only path (ld.global.nc),
// which the compiler may move above GridDependencyWait() (a stale logcnt
// read so failed test EarlyLaunch.KernelsSeeTheWritesOfTheKernelBefore).
template <typename IdT, int kWarps, int kEarlier, int kMaxExperts, bool kAggregate, bool kStage,
          bool kZeroFirst>
__global__ void __launch_bounds__(32 * kWarps)
    RouteSubKernel(const IdT* ids, uint32_t cap_items, int64_t num_tokens,
                   const int32_t* d_num_tokens, int32_t top_k, const int32_t* log2phy,
                   const int32_t* logcnt, int32_t num_e, int32_t num_p, const int32_t* d_record,
                   int32_t* out, int32_t* load_pass, unsigned long long* d_invalid,
                   uint32_t seg_items) {
  extern __shared__ int4 smem4[];
  // kAggregate (the shape's; see SubShape): the large shape adds its counts
  // up in shared memory and flushes them once per block, since thousands of
  // runs adding to the same hot slots in global memory would queue on its
  // atomic unit (measured 3x slower at 8192 tokens x top-8 with Zipf ids).
  constexpr uint32_t kItems = 32 * kWarps;
  const uint32_t seg = blockIdx.x;
  const uint32_t seg_begin = seg * seg_items;
  const uint32_t seg_end = min(seg_begin + seg_items, cap_items);
  const uint32_t my_begin = seg_begin + blockIdx.y * kItems;
  if (my_begin >= seg_end) return;
  const uint32_t my_end = min(my_begin + kItems, seg_end);
  const uint32_t i = my_begin + threadIdx.x;
  if constexpr (kZeroFirst) {
    EplbBlockRouteZero<kWarps, kEarlier, kMaxExperts, kStage>(num_e, num_p, kAggregate, smem4);
    __syncthreads();
  }
  GridDependencyWait();  // nothing in global memory before this (enqueue.cuh)
  GridDependentsLaunch();
  // Without staging the item's table loads wait for its id: load it first,
  // at a clamped index (ptxas had put it behind the wait for the valid
  // count). The staging shape keeps the order that measured faster there.
  IdT raw_first = IdT(-1);
  if constexpr (!kStage) raw_first = ids[min(i, cap_items - 1)];
  const uint32_t n_valid = static_cast<uint32_t>(ValidItems(num_tokens, d_num_tokens, top_k));
  const bool record = (d_record == nullptr) || (*d_record != 0);
  const IdT raw = i < my_end ? (kStage ? ids[i] : raw_first) : IdT(-1);
  const bool valid_item = i < my_end && i < n_valid;
  const uint32_t num_earlier = my_begin - seg_begin;
  const uint32_t num_earlier_valid =
      n_valid <= seg_begin ? 0u : min(num_earlier, n_valid - seg_begin);
  const int32_t slot = EplbBlockRoute<kWarps, kEarlier, kMaxExperts, kStage, kZeroFirst>(
      raw, valid_item, ids + seg_begin, num_earlier, num_earlier_valid, seg, log2phy, logcnt, num_e,
      num_p, record ? load_pass : nullptr, kAggregate, i < my_end ? out + i : nullptr, smem4);
  if (d_invalid != nullptr) {
    const unsigned bad = __ballot_sync(0xffffffffu, valid_item && slot < 0);
    if ((threadIdx.x & 31u) == 0 && bad != 0u)
      atomicAdd(d_invalid, static_cast<unsigned long long>(__popc(bad)));
  }
}

// Large-input path: the replica of item i comes from EplbItemHash(i)
// (EplbHashedSlot), so items need no ranking; counts go to a per-block shared
// histogram of the P slots (integer atomics: order does not matter), flushed
// once per block. Memory-bound by design: each thread moves 4 consecutive
// ids per step with one 16-byte load and one 16-byte store when the buffers
// allow it, indices are 32-bit (T*K < 2^31 is validated), and nothing is
// kept per item across steps (no register spills).
// 512-thread blocks, 4 per SM: every block loads the same small tables in
// its prologue, all at once at the kernel's start, and half as many blocks
// as with 256 threads cut that fixed cost (64 Mi ids: 0.90 -> 0.91-0.92 of
// the copy; 32 Mi: 0.85 -> 0.89; 128 Mi: 0.925 either way, on an H200).
constexpr int kHashThreads = 512;
// Vectors of 4 ids each thread loads before routing any of them (4 per
// step measured slower than 2 on an H200: fewer resident blocks), and the
// resident blocks per SM: all threads of the SM (full occupancy) for int32
// ids; int64 ids need a few more registers.
constexpr int kHashVec = 2;
// log2phy columns per row loaded up front in the prologue (rows with more
// replicas load the rest afterwards).
constexpr int kHashStageCols = 1;
template <typename IdT>
constexpr int HashBlocksPerSm() {
  return sizeof(IdT) == 8 ? 3 : 4;
}

// 4 consecutive ids as loaded (one 16-byte access for int32, two for
// int64); Get sign-extends one at its use, so the raw vector stays 4 (or 8)
// registers.
template <typename IdT>
struct IdVec4;
template <>
struct IdVec4<int32_t> {
  using Raw = int4;
  __device__ __forceinline__ static void Load(const int32_t* p, uint32_t v, Raw& x) {
    x = reinterpret_cast<const int4*>(p)[v];
  }
  __device__ __forceinline__ static int32_t Get(const Raw& x, int j) {
    return j == 0 ? x.x : j == 1 ? x.y : j == 2 ? x.z : x.w;
  }
  __device__ __forceinline__ static void Set(Raw& x, const int32_t (&y)[4]) {
    x = make_int4(y[0], y[1], y[2], y[3]);
  }
};
template <>
struct IdVec4<int64_t> {
  struct Raw {
    longlong2 a, b;
  };
  __device__ __forceinline__ static void Load(const int64_t* p, uint32_t v, Raw& x) {
    x.a = reinterpret_cast<const longlong2*>(p)[2 * v];
    x.b = reinterpret_cast<const longlong2*>(p)[2 * v + 1];
  }
  __device__ __forceinline__ static int64_t Get(const Raw& x, int j) {
    return j == 0 ? x.a.x : j == 1 ? x.a.y : j == 2 ? x.b.x : x.b.y;
  }
  __device__ __forceinline__ static void Set(Raw& x, const int64_t (&y)[4]) {
    x.a = make_longlong2(y[0], y[1]);
    x.b = make_longlong2(y[2], y[3]);
  }
};

template <typename IdT>
__global__ void __launch_bounds__(kHashThreads, HashBlocksPerSm<IdT>())
    RouteHashKernel(const IdT* __restrict__ ids, uint32_t cap_items, int64_t num_tokens,
                    const int32_t* d_num_tokens, int32_t top_k, const int32_t* __restrict__ log2phy,
                    const int32_t* __restrict__ logcnt, int32_t num_e, int32_t num_p,
                    int32_t max_rep, const int32_t* d_record, int32_t* __restrict__ out,
                    int32_t* load_pass, unsigned long long* d_invalid) {
  // Shared: [P + 2] slot histogram (bin P counts invalid items, bin P + 1
  // takes the items past the valid count and is never read), [E] logcnt,
  // [E] per-expert descriptors, [P] the log2phy rows compacted: a random
  // gather from 2 KB of shared memory instead of from the 34 KB global table
  // through L1. Descriptor of expert e: c << 16 | off (c its usable replica
  // count, 0 when its items are invalid; its slots at s_slots[off], an entry
  // outside [0, P) stored as -1). With it an item costs two shared loads, one
  // shared atomic and no branch. On an H200 this kernel moved 0.75 of the
  // D2D copy's bytes per second with five shared accesses and four branches
  // per item, 0.87 with the descriptor, 0.90 with plain global accesses and
  // this prologue's loads issued together, 0.92 with 512-thread blocks.
  // Tried without moving it further: a cheaper hash; more loads in flight
  // per thread (4 vectors, or the next step's loaded before this step is
  // routed, also re-measured at 0.90); the first step's loads issued before
  // the prologue (spills); L2 bulk prefetch ahead of the loads (slower);
  // 1024-thread blocks (spills);
  // no count flush at all; the slot kept in the descriptor of experts with
  // one replica (a third fewer shared loads, same time); and 32 lane copies
  // of the histogram and descriptors, one bank per lane, which halved the
  // shared-memory wavefronts (ncu: L1 data pipe 88% -> 50% busy). A plain
  // copy kernel with this grid-stride pattern reaches 0.93.
  extern __shared__ int32_t s_hist[];
  int32_t* s_cnt = s_hist + num_p + 2;
  uint32_t* s_desc = reinterpret_cast<uint32_t*>(s_cnt + num_e);
  int32_t* s_slots = s_cnt + 2 * num_e;
  __shared__ int32_t s_warp_total[kHashThreads / 32];
  const uint32_t n_valid = static_cast<uint32_t>(ValidItems(num_tokens, d_num_tokens, top_k));
  const bool record = (d_record == nullptr) || (*d_record != 0);
  for (int p = threadIdx.x; p < num_p + 2; p += blockDim.x) s_hist[p] = 0;
  // Exclusive scan of the usable counts (1..max_rep; others 0: EplbItemKey
  // rejects their items): thread t owns experts [kPer*t, kPer*t + kPer).
  // The first kHashStageCols entries of each owned row are loaded with the
  // counts, before anything waits: every block runs this prologue at the
  // same time, and with the row loads issued one after another behind the
  // counts it held the whole grid for several L2 round trips.
  constexpr int kPer = (EPLB_MAX_LOGICAL_EXPERTS + kHashThreads - 1) / kHashThreads;
  int32_t c_own[kPer], head[kPer][kHashStageCols];
  int32_t own = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int e = kPer * threadIdx.x + k;
    c_own[k] = e < num_e ? logcnt[e] : 0;
#pragma unroll
    for (int j = 0; j < kHashStageCols; ++j)
      head[k][j] = e < num_e && j < max_rep ? log2phy[e * max_rep + j] : -1;
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int e = kPer * threadIdx.x + k;
    const int32_t c = c_own[k];
    if (e < num_e) s_cnt[e] = c;
    c_own[k] = (c >= 1 && c <= max_rep) ? c : 0;
    own += c_own[k];
  }
  const int lane = threadIdx.x & 31;
  int32_t incl = own;
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) s_warp_total[threadIdx.x >> 5] = incl;
  __syncthreads();
  int32_t before = incl - own, total = 0;
  for (int w = 0; w < kHashThreads / 32; ++w) {
    if (w < static_cast<int>(threadIdx.x >> 5)) before += s_warp_total[w];
    total += s_warp_total[w];
  }
  const bool compact = total <= num_p;  // a consistent table sums to P
  if (compact) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = kPer * threadIdx.x + k;
      for (int j = 0; j < c_own[k]; ++j) {
        const int32_t v = j < kHashStageCols ? head[k][j] : log2phy[e * max_rep + j];
        s_slots[before + j] = (v >= 0 && v < num_p) ? v : -1;
      }
      // P <= 4096 and c <= P fit the descriptor's 16-bit fields. An expert
      // of unusable count gets descriptor 0 (its items read s_slots[0] and
      // discard it): its offset could be P when the usable counts before
      // it fill the table, one past the staged slots.
      if (e < num_e)
        s_desc[e] = c_own[k] != 0 ? static_cast<uint32_t>(c_own[k]) << 16 | before : 0u;
      before += c_own[k];
    }
  }
  __syncthreads();
  // Histogram bin of an item: invalid items (slot -1) go to bin P, items
  // past the valid count to bin P + 1. Checked is std::false_type where the
  // caller knows i < n_valid (whole vectors below the valid count: the
  // check and its selects are a tenth of an item's instructions).
  const uint32_t bin_invalid = static_cast<uint32_t>(num_p);
  auto bin = [&](uint32_t i, int32_t slot, auto checked) {
    const uint32_t b = min(static_cast<uint32_t>(slot), bin_invalid);
    if constexpr (decltype(checked)::value) return i < n_valid ? b : bin_invalid + 1;
    return b;
  };
  // The same choice as EplbItemKey + EplbHashedSlot, from the staged table.
  // An invalid id, and an expert of unusable count, read descriptor 0 (c = 0:
  // s_slots[0], discarded).
  auto route_compact = [&](uint32_t i, IdT id, auto checked) {
    const uint32_t d =
        static_cast<typename std::make_unsigned<IdT>::type>(id) < static_cast<uint32_t>(num_e)
            ? s_desc[static_cast<int32_t>(id)]
            : 0u;
    const uint32_t c = d >> 16;
    const int32_t v = s_slots[(d & 0xffffu) + EplbHashedReplica(EplbItemHash(i), c)];
    const int32_t slot = c != 0u ? v : -1;
    atomicAdd(s_hist + bin(i, slot, checked), 1);
    if constexpr (decltype(checked)::value) return i < n_valid ? slot : -1;
    return slot;
  };
  // A broken table (its counts sum past P): the public functions on the
  // global table.
  auto route_table = [&](uint32_t i, IdT id, auto checked) {
    const int32_t key = i < n_valid ? EplbItemKey(id, num_e, s_cnt, max_rep) : -1;
    const int32_t slot = EplbHashedSlot(key, EplbItemHash(i), log2phy, s_cnt, max_rep, num_p);
    atomicAdd(s_hist + bin(i, slot, checked), 1);
    return slot;
  };
  const uint32_t stride = gridDim.x * blockDim.x;
  const bool vec =
      ((reinterpret_cast<uintptr_t>(ids) | reinterpret_cast<uintptr_t>(out)) & 15) == 0;
  const uint32_t num_vec = vec ? cap_items / 4 : 0;
  const uint32_t num_full = min(num_vec, n_valid / 4);  // vectors of valid items only
  using Vec = IdVec4<IdT>;
  auto sweep = [&](auto route) {
    auto route4 = [&](uint32_t v, const typename Vec::Raw& x, auto checked) {
      int4 o;
      o.x = route(4 * v, Vec::Get(x, 0), checked);
      o.y = route(4 * v + 1, Vec::Get(x, 1), checked);
      o.z = route(4 * v + 2, Vec::Get(x, 2), checked);
      o.w = route(4 * v + 3, Vec::Get(x, 3), checked);
      reinterpret_cast<int4*>(out)[v] = o;
    };
    uint32_t v = blockIdx.x * blockDim.x + threadIdx.x;
    // kHashVec vectors per step: every load is in flight before any is used.
    for (; v + (kHashVec - 1) * stride < num_full; v += kHashVec * stride) {
      typename Vec::Raw x[kHashVec];
#pragma unroll
      for (int k = 0; k < kHashVec; ++k) Vec::Load(ids, v + k * stride, x[k]);
#pragma unroll
      for (int k = 0; k < kHashVec; ++k) route4(v + k * stride, x[k], std::false_type{});
    }
    for (; v < num_vec; v += stride) {
      typename Vec::Raw x;
      Vec::Load(ids, v, x);
      route4(v, x, std::true_type{});
    }
    // Unaligned buffers, and the last cap % 4 items: one item per thread.
    for (uint32_t i = 4 * num_vec + blockIdx.x * blockDim.x + threadIdx.x; i < cap_items;
         i += stride)
      out[i] = route(i, ids[i], std::true_type{});
  };
  if (compact)
    sweep(route_compact);
  else
    sweep(route_table);
  __syncthreads();
  if (record) {
    for (int p = threadIdx.x; p < num_p; p += blockDim.x)
      if (s_hist[p] != 0) atomicAdd(load_pass + p, s_hist[p]);
  }
  if (threadIdx.x == 0 && d_invalid != nullptr && s_hist[num_p] != 0)
    atomicAdd(d_invalid, static_cast<unsigned long long>(s_hist[num_p]));
}

// Count-only. Each thread takes groups of 4 consecutive ids (one 16-byte
// load for int32, two for int64, where the buffer is 16-byte aligned; else
// 4 guarded scalar loads, also for the last, partial group), kVec groups
// per step, all loads of a step in flight before any id is counted (the
// shared histogram is zeroed before the PDL wait, so before the first
// step's loads). Each block
// counts in a shared histogram and adds its non-zero bins to load_pass.
// Shapes, from same-run A/B on an H200 (us over an empty kernel in CUDA
// graphs at 64 / 512 / 1024 / 8192 tokens x top-8; 64 Mi ids as a fraction
// of the device-to-device copy's bandwidth):
//  - decode sizes, one group per thread: up to kCountSmallItems in blocks
//    of 256 threads (0.84 / 0.88 / 0.90 / 1.27), above in blocks of 512
//    (0.83 / 0.92 / 0.92 / 1.06: half as many blocks add to the same P
//    counters); 2, 4 or 8 groups per thread were slower at every size (in
//    an earlier version, with a branch per id);
//  - from kCountDecodeItems on, one resident wave of 512-thread blocks
//    striding over the input, 8 groups (4 for int64) per step: 0.85-0.88
//    of the copy, where 8 blocks of 256 threads per SM with 4 groups per
//    step reached 0.80-0.82.
constexpr int64_t kCountSmallItems = 16384;
constexpr int64_t kCountDecodeItems = 65536;
struct CountShape {
  int threads, vec;  // threads per block, groups per thread per step
};
constexpr CountShape kCountSmall = {256, 1};
constexpr CountShape kCountMid = {512, 1};
constexpr CountShape kCountLarge = {512, 8};  // int32; int64 ids take half the groups
constexpr int kCountLargeBlocksPerSm = 2;

template <typename IdT, int kThreads, int kVec>
__global__ void __launch_bounds__(kThreads)
    CountKernel(const IdT* ids, uint32_t cap, int64_t num_tokens, const int32_t* d_num_tokens,
                int32_t top_k, int32_t num_p, const int32_t* d_record, int32_t* load_pass,
                unsigned long long* d_invalid) {
  using Vec = IdVec4<IdT>;
  using UIdT = typename std::make_unsigned<IdT>::type;
  // [P + 2] bins: the slots, then bin P for the invalid ids of valid items
  // and bin P + 1 for the items past the valid count (never read). Every
  // item adds 1 to one bin, without a branch (with one, each of a thread's
  // four adds sat in its own divergent region: 0.27-0.30 us more at 64 -
  // 8192 tokens x top-8 on an H200, same run).
  extern __shared__ int32_t s_hist[];
  const uint32_t num_groups = (cap + 3) / 4;
  const uint32_t stride = gridDim.x * blockDim.x;
  const bool vec = (reinterpret_cast<uintptr_t>(ids) & 15) == 0;
  // Group g's 4 ids; past cap they read as -1 (their index is >= cap >=
  // n_valid: bin P + 1).
  auto load = [&](uint32_t g, typename Vec::Raw& x) {
    if (vec && 4 * g + 3 < cap) {
      Vec::Load(ids, g, x);
    } else {
      IdT y[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) y[j] = 4 * g + j < cap ? ids[4 * g + j] : IdT{-1};
      Vec::Set(x, y);
    }
  };
  // With programmatic dependent launch (enqueue.cuh; at decode sizes,
  // kVec == 1) the histogram is zeroed before the wait, then the next
  // launch may start (same-run A/B on an H200, graphs of 64 launches, us
  // over an empty kernel at 64 / 512 / 1024 / 8192 tokens x top-8: 0.75 /
  // 0.80 / 0.84 / 0.97 -> 0.34 / 0.42 / 0.45 / 0.59; with the wait as the
  // first instruction and the zeroing after the loads, as without early
  // launch, 0.53 / 0.57 / 0.60 / 0.67). The striding
  // shape for large inputs is launched normally and lets no launch start
  // early: a long kernel would share its SMs with the next one's waiting
  // blocks (not measured).
  for (int p = threadIdx.x; p < num_p + 2; p += blockDim.x) s_hist[p] = 0;
  __syncthreads();
  GridDependencyWait();  // nothing in global memory before this
  if constexpr (kVec == 1) GridDependentsLaunch();
  uint32_t g = blockIdx.x * blockDim.x + threadIdx.x;
  typename Vec::Raw x[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k)
    if (g + k * stride < num_groups) load(g + k * stride, x[k]);
  const uint32_t n_valid = static_cast<uint32_t>(ValidItems(num_tokens, d_num_tokens, top_k));
  const bool record = (d_record == nullptr) || (*d_record != 0);
  const UIdT bin_invalid = static_cast<UIdT>(num_p);
  while (true) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const uint32_t gk = g + k * stride;
      if (gk >= num_groups) break;
      const bool whole = 4 * gk + 3 < n_valid;  // no item past the valid count
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const UIdT b = min(static_cast<UIdT>(Vec::Get(x[k], j)), bin_invalid);
        const uint32_t bin = whole || 4 * gk + j < n_valid ? static_cast<uint32_t>(b)
                                                           : static_cast<uint32_t>(num_p) + 1;
        atomicAdd(s_hist + bin, 1);
      }
    }
    // kVec 1 (decode sizes): the grid covers every group, and without the
    // loop's second trip in the code the launch measured 0.07-0.09 us
    // faster (H200, same run).
    if constexpr (kVec == 1) {
      break;
    } else {
      g += kVec * stride;
      if (g >= num_groups) break;
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (g + k * stride < num_groups) load(g + k * stride, x[k]);
    }
  }
  __syncthreads();
  if (record) {
    for (int p = threadIdx.x; p < num_p; p += blockDim.x) {
      if (s_hist[p] != 0) atomicAdd(load_pass + p, s_hist[p]);
    }
  }
  if (threadIdx.x == 0 && d_invalid != nullptr && s_hist[num_p] != 0)
    atomicAdd(d_invalid, static_cast<unsigned long long>(s_hist[num_p]));
}

// SMs of the current device, for the launches sized to one resident wave
// (the hash path, the count kernel's striding shape).
cudaError_t CurrentDeviceSms(int* sms) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
  return err;
}

}  // namespace

void RouteSegments(int64_t capacity_items, int32_t* num_segments, int64_t* segment_items) {
  int64_t tiles = (capacity_items + kRouteTileItems - 1) / kRouteTileItems;
  int64_t s = tiles < kRouteMaxSegments ? tiles : kRouteMaxSegments;
  if (s < 1) s = 1;
  int64_t len = (capacity_items + s - 1) / s;
  len = (len + 31) / 32 * 32;
  if (len < 32) len = 32;
  *num_segments = static_cast<int32_t>(s);
  *segment_items = len;
}

cudaError_t LaunchRouteCount(const void* topk_logical, bool ids64, int64_t num_tokens,
                             const int32_t* num_tokens_device, int32_t top_k,
                             const int32_t* log2phy, const int32_t* logcnt,
                             int32_t num_logical_experts, int32_t num_physical_experts,
                             const int32_t* record, int32_t* topk_physical, int32_t* load_pass,
                             unsigned long long* invalid_count, cudaStream_t stream) {
  const int64_t cap = num_tokens * top_k;
  if (cap == 0) return cudaSuccess;
  int32_t segs = 0;
  int64_t seg_items = 0;
  RouteSegments(cap, &segs, &seg_items);
  const int32_t max_rep = num_physical_experts - num_logical_experts + 1;
  if (cap >= kRouteHashMinItems) {
    // One resident wave: HashBlocksPerSm blocks on every SM, each striding
    // over the whole input (fewer blocks = fewer histogram flushes).
    int sms = 0;
    if (const cudaError_t err = CurrentDeviceSms(&sms); err != cudaSuccess) return err;
    const int64_t needed = (cap / 4 + kHashThreads - 1) / kHashThreads;
    const size_t hsmem = sizeof(int32_t) * static_cast<size_t>(2 * num_physical_experts + 2 +
                                                               2 * num_logical_experts);
    auto launch = [&](auto kernel, const auto* ids, int per_sm) {
      int64_t blocks = int64_t{sms} * per_sm;
      if (blocks > needed) blocks = needed;
      if (blocks < 1) blocks = 1;
      return EnqueueKernel(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kHashThreads), hsmem,
                           stream, ids, static_cast<uint32_t>(cap), num_tokens, num_tokens_device,
                           top_k, log2phy, logcnt, num_logical_experts, num_physical_experts,
                           max_rep, record, topk_physical, load_pass, invalid_count);
    };
    if (ids64)
      return launch(RouteHashKernel<int64_t>, static_cast<const int64_t*>(topk_logical),
                    HashBlocksPerSm<int64_t>());
    return launch(RouteHashKernel<int32_t>, static_cast<const int32_t*>(topk_logical),
                  HashBlocksPerSm<int32_t>());
  }
  // Sub-blocks when the launch has fewer segments than an H100 has SMs and
  // their shared memory fits the default 48 KB (then true, the launch's
  // status in sub_err).
  cudaError_t sub_err = cudaSuccess;
  auto launch_sub = [&](auto shape_c, const auto* ids) -> bool {
    constexpr int kShapeIndex = decltype(shape_c)::value;  // 0 small, 1 mid, 2 large
    constexpr SubShape kShape = kShapeIndex == 0 ? kSmallSub : kShapeIndex == 1 ? kMidSub : kSub;
    constexpr uint32_t kItems = 32 * kShape.warps;
    const size_t smem = EplbBlockRouteSmemBytes(
        kShape.warps, num_logical_experts, num_physical_experts, kShape.aggregate, kShape.stage);
    if (segs > 132 || smem > 48 * 1024) return false;
    using IdT = std::remove_const_t<std::remove_pointer_t<decltype(ids)>>;
    const dim3 grid(static_cast<unsigned>(segs),
                    static_cast<unsigned>((seg_items + kItems - 1) / kItems));
    // kMaxExperts: one or two experts zeroed (staged) per thread where E
    // allows (512 for 512-thread blocks, 256 for 128- and 256-thread ones),
    // else 1024 (so 256-thread blocks with 256 < E <= 512 zero four per
    // thread).
    auto kernel = [&](auto pre_c) {
      constexpr int kPre = decltype(pre_c)::value;
      constexpr int kFewE = kShape.warps * 32 >= 512 ? 512 : 256;
      return num_logical_experts <= kFewE
                 ? RouteSubKernel<IdT, kShape.warps, kPre, kFewE, kShape.aggregate, kShape.stage,
                                  kShape.zero_first>
                 : RouteSubKernel<IdT, kShape.warps, kPre, 1024, kShape.aggregate, kShape.stage,
                                  kShape.zero_first>;
    };
    auto k = kernel(std::integral_constant<int, kShape.pre>{});
    // A small launch of one block has no ids before it: a kernel without
    // that count (a runtime skip in the one kernel made launches of several
    // blocks 0.1-0.3 us slower; without the count, 64 tokens x top-8 in
    // one 512-item block took 2.24 us over an empty kernel, not 2.65). The
    // mid and large shapes always have several blocks per segment (at least
    // 513 items).
    if constexpr (kShapeIndex == 0)
      if (grid.y == 1) k = kernel(std::integral_constant<int, 0>{});
    sub_err = EnqueueKernelEarly(kShape.early, k, grid, dim3(kItems), smem, stream, ids,
                                 static_cast<uint32_t>(cap), num_tokens, num_tokens_device, top_k,
                                 log2phy, logcnt, num_logical_experts, num_physical_experts, record,
                                 topk_physical, load_pass, invalid_count,
                                 static_cast<uint32_t>(seg_items));
    return true;
  };
  auto route_sub = [&](const auto* ids) {
    if (static_cast<uint64_t>(cap) <= kSmallSubItems)
      return launch_sub(std::integral_constant<int, 0>{}, ids);
    if (static_cast<uint64_t>(cap) <= kMidSubItems)
      return launch_sub(std::integral_constant<int, 1>{}, ids);
    return launch_sub(std::integral_constant<int, 2>{}, ids);
  };
  if (ids64 ? route_sub(static_cast<const int64_t*>(topk_logical))
            : route_sub(static_cast<const int32_t*>(topk_logical)))
    return sub_err;
  const int32_t key_bits = EplbKeyBits(num_logical_experts);
  const size_t smem = sizeof(int32_t) * static_cast<size_t>(kSegWarps + 2) * num_logical_experts;
  auto launch = [&](auto kernel, const auto* ids) {
    return EnqueueKernel(kernel, dim3(static_cast<unsigned>(segs)), dim3(kSegWarps * 32), smem,
                         stream, ids, cap, num_tokens, num_tokens_device, top_k, log2phy, logcnt,
                         num_logical_experts, key_bits, num_physical_experts, max_rep, record,
                         topk_physical, load_pass, invalid_count, seg_items);
  };
  if (ids64) return launch(RouteCountKernel<int64_t>, static_cast<const int64_t*>(topk_logical));
  return launch(RouteCountKernel<int32_t>, static_cast<const int32_t*>(topk_logical));
}

cudaError_t LaunchCount(const void* topk_physical, bool ids64, int64_t num_tokens,
                        const int32_t* num_tokens_device, int32_t top_k,
                        int32_t num_physical_experts, const int32_t* record, int32_t* load_pass,
                        unsigned long long* invalid_count, cudaStream_t stream) {
  const int64_t cap = num_tokens * top_k;
  if (cap == 0) return cudaSuccess;
  const int64_t groups = (cap + 3) / 4;
  const size_t smem = sizeof(int32_t) * static_cast<size_t>(num_physical_experts + 2);
  auto run = [&](const auto* ids) {
    using IdT = std::remove_const_t<std::remove_pointer_t<decltype(ids)>>;
    // kT threads per block, kV groups per thread per step.
    auto launch = [&](auto threads_c, auto vec_c, int64_t max_blocks) {
      constexpr int kT = decltype(threads_c)::value, kV = decltype(vec_c)::value;
      constexpr int64_t kPerBlock = int64_t{kT} * kV;
      const int64_t needed = (groups + kPerBlock - 1) / kPerBlock;
      return EnqueueKernelEarly(
          kV == 1 ? EarlyShape::kByMode : EarlyShape::kNever, CountKernel<IdT, kT, kV>,
          dim3(static_cast<unsigned>(needed < max_blocks ? needed : max_blocks)), dim3(kT), smem,
          stream, ids, static_cast<uint32_t>(cap), num_tokens, num_tokens_device, top_k,
          num_physical_experts, record, load_pass, invalid_count);
    };
    using std::integral_constant;
    if (cap <= kCountSmallItems)
      return launch(integral_constant<int, kCountSmall.threads>{},
                    integral_constant<int, kCountSmall.vec>{}, INT64_MAX);
    if (cap <= kCountDecodeItems)
      return launch(integral_constant<int, kCountMid.threads>{},
                    integral_constant<int, kCountMid.vec>{}, INT64_MAX);
    int sms = 0;
    if (const cudaError_t err = CurrentDeviceSms(&sms); err != cudaSuccess) return err;
    constexpr int kLargeVec = sizeof(IdT) == 8 ? kCountLarge.vec / 2 : kCountLarge.vec;
    return launch(integral_constant<int, kCountLarge.threads>{},
                  integral_constant<int, kLargeVec>{}, int64_t{sms} * kCountLargeBlocksPerSm);
  };
  if (ids64) return run(static_cast<const int64_t*>(topk_physical));
  return run(static_cast<const int32_t*>(topk_physical));
}

}  // namespace kernels
}  // namespace eplb
