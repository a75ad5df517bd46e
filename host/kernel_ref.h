// Host references of the device kernels (kernels/*.cu), written as plainly as
// possible, for the tests. Pure C++ (no CUDA headers). Each follows the
// contract in eplb.h's KERNELS section item by item; the GPU tests require
// bit equality with these.
#pragma once

#include <cstdint>
#include <vector>

namespace eplb {

// Equal to EPLB_ROUTE_TILE_ITEMS / EPLB_ROUTE_MAX_SEGMENTS (checked by a
// static_assert in host/capi/kernels_api.cc).
constexpr int64_t kRouteTileItemsRef = 4096;
constexpr int32_t kRouteMaxSegmentsRef = 528;
// Equal to EPLB_ROUTE_HASH_MIN_ITEMS.
constexpr int64_t kRouteHashMinItemsRef = int64_t{1} << 22;

// EplbItemHash of eplb_device.cuh (the large-input replica key).
uint32_t ItemHashRef(uint32_t i);

// Segments of a route+count launch over capacity_items = T*K: their number
// and length (multiple of 32; the last ones may be shorter or empty).
void RouteSegmentsRef(int64_t capacity_items, int32_t* num_segments, int64_t* segment_items);

// eplbRouteCount on host arrays. ids [T][K] (any integer values),
// valid_tokens in [0, T] (the clamped device count), log2phy [E][P-E+1],
// logcnt [E]. Writes out [T][K]; adds to load_pass [P] when `record`; adds
// the invalid items to *invalid_count.
void RouteCountRef(const std::vector<int64_t>& ids, int64_t num_tokens, int64_t valid_tokens,
                   int32_t top_k, const int32_t* log2phy, const int32_t* logcnt,
                   int32_t num_logical_experts, int32_t num_physical_experts, bool record,
                   int32_t* out, int32_t* load_pass, uint64_t* invalid_count);

// eplbCount on host arrays: ids of the first valid_tokens * K items; adds to
// load_pass [P] when `record`, invalid ones to *invalid_count.
void CountRef(const std::vector<int64_t>& ids, int64_t valid_tokens, int32_t top_k,
              int32_t num_physical_experts, bool record, int32_t* load_pass,
              uint64_t* invalid_count);

// eplbWindowUpdate: phy2log [L][P], load_pass [L][P] (zeroed), window
// [W][L][E], window_sum [L][E], ring_state [2].
void WindowUpdateRef(const int32_t* phy2log, int32_t* load_pass, int32_t num_layers,
                     int32_t num_logical_experts, int32_t num_physical_experts, int32_t window_size,
                     int32_t* window, int64_t* window_sum, int32_t* ring_state);

// eplbWindowReduce: load [L][E] = sum of the W rows of window [W][L][E].
void WindowReduceRef(const int32_t* window, int32_t window_size, int64_t row_items, int64_t* load);

}  // namespace eplb
