// Launchers of eplb's device kernels (kernels/*.cu). Plain C++ declarations,
// callable from the C shim (host/capi/kernels_api.cc), which validates the
// arguments first: these launchers trust them. Each enqueues on `stream`,
// returns the launch's cudaError_t, never synchronises and never allocates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace eplb {
namespace kernels {

// Items one route+count block ranks together (EPLB_ROUTE_TILE_ITEMS).
constexpr int64_t kRouteTileItems = 4096;
constexpr int kRouteMaxSegments = 528;
// From this many items (T*K) on, route+count takes the hash path.
constexpr int64_t kRouteHashMinItems = int64_t{1} << 22;

// Segments of a route+count launch over `capacity_items` = T*K items and the
// length of each (a multiple of 32). The contract of eplbRouteCount.
void RouteSegments(int64_t capacity_items, int32_t* num_segments, int64_t* segment_items);

cudaError_t LaunchRouteCount(const void* topk_logical, bool ids64, int64_t num_tokens,
                             const int32_t* num_tokens_device, int32_t top_k,
                             const int32_t* log2phy, const int32_t* logcnt,
                             int32_t num_logical_experts, int32_t num_physical_experts,
                             const int32_t* record, int32_t* topk_physical, int32_t* load_pass,
                             unsigned long long* invalid_count, cudaStream_t stream);

cudaError_t LaunchCount(const void* topk_physical, bool ids64, int64_t num_tokens,
                        const int32_t* num_tokens_device, int32_t top_k,
                        int32_t num_physical_experts, const int32_t* record, int32_t* load_pass,
                        unsigned long long* invalid_count, cudaStream_t stream);

cudaError_t LaunchWindowUpdate(const int32_t* phy2log, int32_t* load_pass, int32_t num_layers,
                               int32_t num_logical_experts, int32_t num_physical_experts,
                               int32_t window_size, int32_t* window, int64_t* window_sum,
                               int32_t* ring_state, cudaStream_t stream);

cudaError_t LaunchWindowReadout(const int64_t* window_sum, int64_t num_items, int64_t* load,
                                cudaStream_t stream);

cudaError_t LaunchWindowReduce(const int32_t* window, int32_t window_size, int64_t row_items,
                               int64_t* load, cudaStream_t stream);

// GPU planner. The shape is valid (ValidateShape) and the policy resolved:
// hierarchical, or global (one group, one node). migration applies against
// old_phy2log when it is not null (as EPLB_MIGRATION_*); FULL needs at most
// kGpuFullMaxRanks ranks and the workspace sized with full = true.
struct GpuPlanShape {
  int32_t num_layers, num_logical_experts, num_physical_experts;
  int32_t num_groups, num_nodes, num_ranks;
};
enum class GpuMigration { kNone, kPreserve, kFull };
constexpr int32_t kGpuFullMaxRanks = 64;
size_t PlanGpuWorkspaceBytes(const GpuPlanShape& shape, bool hierarchical, bool full);
cudaError_t LaunchPlanGpu(const GpuPlanShape& shape, bool hierarchical, const int64_t* load,
                          const int32_t* old_phy2log, GpuMigration migration, int32_t* phy2log,
                          int32_t* logcnt, int32_t* log2phy, void* workspace, cudaStream_t stream);

}  // namespace kernels
}  // namespace eplb
