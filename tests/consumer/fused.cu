// Downstream use of the installed device header: an engine's own kernel that
// fuses eplb's routing and counting (EplbBlockRoute) and the hash path's
// choice (EplbItemKey, EplbHashedSlot, EplbCountAdd) after its top-k. Built,
// not run, by the packaging test (no GPU there): it checks that
// eplb/eplb_device.cuh compiles from the install prefix alone.
#include <cuda_runtime.h>

#include <cstdint>

#include "eplb/eplb_device.cuh"

// Up to 64 tokens x top-8 (cap <= 512 items: kEarlierPerThread = 3 covers
// the 384 items before the last block) in ceil(cap / 128) blocks of 128
// items: each block routes its items, the blocks before it its earlier
// items (as eplbRouteCount ranks them).
__global__ void EngineTopkAndRoute(const int32_t* topk, int32_t cap, const int32_t* log2phy,
                                   const int32_t* logcnt, int32_t num_e, int32_t num_p,
                                   int32_t* load_pass, int32_t* topk_physical) {
  extern __shared__ int4 smem[];
  const uint32_t begin = blockIdx.x * 128u;
  const uint32_t i = begin + threadIdx.x;
  const bool valid = i < static_cast<uint32_t>(cap);
  const int32_t id = valid ? topk[i] : -1;
  const uint32_t earlier = min(begin, static_cast<uint32_t>(cap));
  EplbBlockRoute<4, 3, 256>(id, valid, topk, earlier, earlier, 0u, log2phy, logcnt, num_e, num_p,
                            load_pass, false, valid ? topk_physical + i : nullptr, smem);
}

__global__ void EngineHashRoute(const int32_t* topk, int32_t cap, const int32_t* log2phy,
                                const int32_t* logcnt, int32_t num_e, int32_t num_p,
                                int32_t* load_pass, int32_t* topk_physical) {
  const int32_t i = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= cap) return;
  const int32_t max_rep = num_p - num_e + 1;
  const int32_t key = EplbItemKey(topk[i], num_e, logcnt, max_rep);
  const int32_t slot =
      EplbHashedSlot(key, EplbItemHash(static_cast<uint32_t>(i)), log2phy, logcnt, max_rep, num_p);
  EplbCountAdd(load_pass, slot, 1, num_p);
  topk_physical[i] = slot;
}

// Shared memory the fused block kernel needs (host side of the same header).
extern "C" size_t consumer_fused_smem_bytes(int32_t num_e, int32_t num_p) {
  return EplbBlockRouteSmemBytes(4, num_e, num_p, false, false);
}
