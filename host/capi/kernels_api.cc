// C entry points of the device kernels (KERNELS section of eplb.h): argument
// checks on the host, then one launch from kernels/launch.cuh. Nothing here
// synchronises or allocates.
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "api_common.h"
#include "kernel_ref.h"
#include "kernels/early_launch_setting.h"
#include "kernels/launch.cuh"
#include "planner.h"

namespace {

using eplb::Status;

static_assert(EPLB_ROUTE_TILE_ITEMS == eplb::kernels::kRouteTileItems, "route tile");
static_assert(EPLB_ROUTE_MAX_SEGMENTS == eplb::kernels::kRouteMaxSegments, "route segments");
// The host reference mirrors the same segmentation.
static_assert(eplb::kRouteTileItemsRef == EPLB_ROUTE_TILE_ITEMS, "reference tile");
static_assert(EPLB_EARLY_LAUNCH_OFF == eplb::kernels::kEarlyLaunchOff &&
                  EPLB_EARLY_LAUNCH_ON == eplb::kernels::kEarlyLaunchOn &&
                  EPLB_EARLY_LAUNCH_AUTO == eplb::kernels::kEarlyLaunchAuto,
              "early-launch modes");
static_assert(eplb::kRouteMaxSegmentsRef == EPLB_ROUTE_MAX_SEGMENTS, "reference segments");
static_assert(eplb::kRouteHashMinItemsRef == EPLB_ROUTE_HASH_MIN_ITEMS &&
                  eplb::kernels::kRouteHashMinItems == EPLB_ROUTE_HASH_MIN_ITEMS,
              "hash path threshold");

using eplb::capi::CheckStream;

void CheckIds(eplbIdType_t id_type, int64_t num_tokens, int32_t top_k) {
  EPLB_CHECK_ARG(id_type == EPLB_ID_INT32 || id_type == EPLB_ID_INT64,
                 "id_type (%d) is not EPLB_ID_INT32 or EPLB_ID_INT64", static_cast<int>(id_type));
  EPLB_CHECK_ARG(num_tokens >= 0, "num_tokens (%lld) is negative",
                 static_cast<long long>(num_tokens));
  EPLB_CHECK_ARG(top_k >= 1, "top_k (%d) must be >= 1", top_k);
  EPLB_CHECK_ARG(
      num_tokens <= (int64_t{1} << 31) / top_k && num_tokens * top_k < (int64_t{1} << 31),
      "num_tokens * top_k (%lld * %d) must be below 2^31", static_cast<long long>(num_tokens),
      top_k);
}

void CheckExperts(int32_t num_logical_experts, int32_t num_physical_experts) {
  EPLB_CHECK_ARG(num_logical_experts >= 1 && num_logical_experts <= EPLB_MAX_LOGICAL_EXPERTS,
                 "num_logical_experts (%d) must be in [1, %d]", num_logical_experts,
                 EPLB_MAX_LOGICAL_EXPERTS);
  EPLB_CHECK_ARG(num_physical_experts >= num_logical_experts &&
                     num_physical_experts <= EPLB_MAX_PHYSICAL_EXPERTS,
                 "num_physical_experts (%d) must be in [num_logical_experts (%d), %d]",
                 num_physical_experts, num_logical_experts, EPLB_MAX_PHYSICAL_EXPERTS);
}

void CheckLayers(int32_t num_layers) {
  EPLB_CHECK_ARG(num_layers >= 1 && num_layers <= EPLB_MAX_LAYERS,
                 "num_layers (%d) must be in [1, %d]", num_layers, EPLB_MAX_LAYERS);
}

// A device buffer an entry point reads or writes: its extent, the
// alignment of its elements.
struct Buffer {
  const void* p;
  size_t bytes, align;
  const char* name;
  bool written;
};

// Every buffer aligned to its element size, and every buffer a kernel
// writes disjoint from all the others: the kernels read their inputs while
// they write (and declare their pointers __restrict__), so an output that
// shares memory with another argument gives results that depend on
// timing. Checked after the other arguments.
void CheckBuffers(std::initializer_list<Buffer> bufs) {
  for (const Buffer& b : bufs) {
    EPLB_CHECK_ARG(reinterpret_cast<uintptr_t>(b.p) % b.align == 0, "%s is not %zu-byte aligned",
                   b.name, b.align);
  }
  for (auto x = bufs.begin(); x != bufs.end(); ++x) {
    for (auto y = x + 1; y != bufs.end(); ++y) {
      const Buffer& a = *x;
      const Buffer& b = *y;
      if (!(a.written || b.written) || a.p == nullptr || b.p == nullptr || a.bytes == 0 ||
          b.bytes == 0)
        continue;
      const uintptr_t pa = reinterpret_cast<uintptr_t>(a.p), pb = reinterpret_cast<uintptr_t>(b.p);
      EPLB_CHECK_ARG(pa + a.bytes <= pb || pb + b.bytes <= pa,
                     "%s and %s overlap (%s is written by the call; it must not share memory "
                     "with any other argument)",
                     a.name, b.name, a.written ? a.name : b.name);
    }
  }
}

size_t Bytes(int64_t count, size_t elem) {
  return static_cast<size_t>(count) * elem;
}

void CheckLaunch(cudaError_t err, const char* what) {
  if (err != cudaSuccess) eplb::capi::ThrowCuda(err, what, __FILE__, __LINE__);
}

struct GpuPlanRequest {
  eplb::kernels::GpuPlanShape shape;
  bool hierarchical;
  bool full;  // FULL migration requested and possible on the GPU (workspace for it)
};

constexpr size_t kConfigMinSize = offsetof(eplbPlanConfig_t, migration) + sizeof(eplbMigration_t);

GpuPlanRequest ResolveGpuPlan(const eplbPlanConfig_t* config) {
  EPLB_CHECK_ARG(config != nullptr, "config is NULL");
  EPLB_CHECK_ARG(config->struct_size >= kConfigMinSize,
                 "config->struct_size (%zu) is smaller than the fields read (%zu); initialize "
                 "with EPLB_PLAN_CONFIG_INIT",
                 config->struct_size, kConfigMinSize);
  eplb::PlanShape s;
  s.num_layers = config->num_layers;
  s.num_logical_experts = config->num_logical_experts;
  s.num_physical_experts = config->num_physical_experts;
  s.num_groups = config->num_groups;
  s.num_nodes = config->num_nodes;
  s.num_ranks = config->num_ranks;
  eplb::ValidateShape(s);
  if (config->policy == EPLB_POLICY_CHURN_AWARE) {
    eplb::Throw(Status::kNotSupported,
                "policy EPLB_POLICY_CHURN_AWARE is host only (use eplbPlanCompute)");
  }
  const int m = static_cast<int>(config->migration);
  EPLB_CHECK_ARG(
      m == EPLB_MIGRATION_NONE || m == EPLB_MIGRATION_PRESERVE || m == EPLB_MIGRATION_FULL,
      "config->migration (%d) is not a valid eplbMigration_t", m);
  const eplb::Policy p = eplb::ResolvePolicy(s, static_cast<eplb::Policy>(config->policy));
  GpuPlanRequest r;
  r.shape = {s.num_layers, s.num_logical_experts, s.num_physical_experts,
             s.num_groups, s.num_nodes,           s.num_ranks};
  r.hierarchical = p == eplb::Policy::kHierarchical;
  // FULL migration runs on the GPU up to kGpuFullMaxRanks ranks (its
  // workspace holds [N][N] intersections); beyond, only on the host.
  r.full =
      config->migration == EPLB_MIGRATION_FULL && s.num_ranks <= eplb::kernels::kGpuFullMaxRanks;
  return r;
}

}  // namespace

extern "C" {

EPLB_API eplbStatus_t eplbRouteCount(const void* d_topk_logical, eplbIdType_t id_type,
                                     int64_t num_tokens, const int32_t* d_num_tokens, int32_t top_k,
                                     const int32_t* d_log2phy, const int32_t* d_logcnt,
                                     int32_t num_logical_experts, int32_t num_physical_experts,
                                     const int32_t* d_record, int32_t* d_topk_physical,
                                     int32_t* d_load_pass, unsigned long long* d_invalid_count,
                                     cudaStream_t stream) {
  return eplb::capi::Guard("eplbRouteCount", [&] {
    EPLB_CHECK_NOT_NULL(d_topk_logical);
    EPLB_CHECK_NOT_NULL(d_log2phy);
    EPLB_CHECK_NOT_NULL(d_logcnt);
    EPLB_CHECK_NOT_NULL(d_topk_physical);
    EPLB_CHECK_NOT_NULL(d_load_pass);
    CheckIds(id_type, num_tokens, top_k);
    CheckExperts(num_logical_experts, num_physical_experts);
    CheckStream(stream);
    const int64_t items = num_tokens * top_k;
    const size_t id_bytes = id_type == EPLB_ID_INT64 ? 8 : 4;
    const int64_t E = num_logical_experts, P = num_physical_experts;
    if (items > 0)  // T = 0 is a no-op
      CheckBuffers({{d_topk_logical, Bytes(items, id_bytes), id_bytes, "d_topk_logical", false},
                    {d_num_tokens, 4, 4, "d_num_tokens", false},
                    {d_log2phy, Bytes(E * (P - E + 1), 4), 4, "d_log2phy", false},
                    {d_logcnt, Bytes(E, 4), 4, "d_logcnt", false},
                    {d_record, 4, 4, "d_record", false},
                    {d_topk_physical, Bytes(items, 4), 4, "d_topk_physical", true},
                    {d_load_pass, Bytes(P, 4), 4, "d_load_pass", true},
                    {d_invalid_count, 8, 8, "d_invalid_count", true}});
    CheckLaunch(eplb::kernels::LaunchRouteCount(
                    d_topk_logical, id_type == EPLB_ID_INT64, num_tokens, d_num_tokens, top_k,
                    d_log2phy, d_logcnt, num_logical_experts, num_physical_experts, d_record,
                    d_topk_physical, d_load_pass, d_invalid_count, stream),
                "route+count launch");
  });
}

EPLB_API eplbStatus_t eplbCount(const void* d_topk_physical, eplbIdType_t id_type,
                                int64_t num_tokens, const int32_t* d_num_tokens, int32_t top_k,
                                int32_t num_physical_experts, const int32_t* d_record,
                                int32_t* d_load_pass, unsigned long long* d_invalid_count,
                                cudaStream_t stream) {
  return eplb::capi::Guard("eplbCount", [&] {
    EPLB_CHECK_NOT_NULL(d_topk_physical);
    EPLB_CHECK_NOT_NULL(d_load_pass);
    CheckIds(id_type, num_tokens, top_k);
    EPLB_CHECK_ARG(num_physical_experts >= 1 && num_physical_experts <= EPLB_MAX_PHYSICAL_EXPERTS,
                   "num_physical_experts (%d) must be in [1, %d]", num_physical_experts,
                   EPLB_MAX_PHYSICAL_EXPERTS);
    CheckStream(stream);
    const size_t id_bytes = id_type == EPLB_ID_INT64 ? 8 : 4;
    if (num_tokens > 0)  // T = 0 is a no-op
      CheckBuffers({{d_topk_physical, Bytes(num_tokens * top_k, id_bytes), id_bytes,
                     "d_topk_physical", false},
                    {d_num_tokens, 4, 4, "d_num_tokens", false},
                    {d_record, 4, 4, "d_record", false},
                    {d_load_pass, Bytes(num_physical_experts, 4), 4, "d_load_pass", true},
                    {d_invalid_count, 8, 8, "d_invalid_count", true}});
    CheckLaunch(eplb::kernels::LaunchCount(d_topk_physical, id_type == EPLB_ID_INT64, num_tokens,
                                           d_num_tokens, top_k, num_physical_experts, d_record,
                                           d_load_pass, d_invalid_count, stream),
                "count launch");
  });
}

EPLB_API eplbStatus_t eplbSetEarlyLaunch(int mode) {
  return eplb::capi::Guard("eplbSetEarlyLaunch", [&] {
    EPLB_CHECK_ARG(mode == EPLB_EARLY_LAUNCH_OFF || mode == EPLB_EARLY_LAUNCH_ON ||
                       mode == EPLB_EARLY_LAUNCH_AUTO,
                   "mode (%d) must be EPLB_EARLY_LAUNCH_OFF (0), _ON (1) or _AUTO (2)", mode);
    eplb::kernels::SetEarlyLaunch(mode);
  });
}

EPLB_API eplbStatus_t eplbGetEarlyLaunch(int* mode) {
  return eplb::capi::Guard("eplbGetEarlyLaunch", [&] {
    EPLB_CHECK_NOT_NULL(mode);
    *mode = eplb::kernels::EarlyLaunchMode();
  });
}

EPLB_API eplbStatus_t eplbWindowUpdate(const int32_t* d_phy2log, int32_t* d_load_pass,
                                       int32_t num_layers, int32_t num_logical_experts,
                                       int32_t num_physical_experts, int32_t window_size,
                                       int32_t* d_window, int64_t* d_window_sum,
                                       int32_t* d_ring_state, cudaStream_t stream) {
  return eplb::capi::Guard("eplbWindowUpdate", [&] {
    EPLB_CHECK_NOT_NULL(d_phy2log);
    EPLB_CHECK_NOT_NULL(d_load_pass);
    EPLB_CHECK_NOT_NULL(d_window);
    EPLB_CHECK_NOT_NULL(d_window_sum);
    EPLB_CHECK_NOT_NULL(d_ring_state);
    CheckLayers(num_layers);
    CheckExperts(num_logical_experts, num_physical_experts);
    EPLB_CHECK_ARG(window_size >= 1, "window_size (%d) must be >= 1", window_size);
    CheckStream(stream);
    const int64_t LE = int64_t{num_layers} * num_logical_experts,
                  LP = int64_t{num_layers} * num_physical_experts;
    CheckBuffers({{d_phy2log, Bytes(LP, 4), 4, "d_phy2log", false},
                  {d_load_pass, Bytes(LP, 4), 4, "d_load_pass", true},
                  {d_window, Bytes(LE * window_size, 4), 4, "d_window", true},
                  {d_window_sum, Bytes(LE, 8), 8, "d_window_sum", true},
                  {d_ring_state, 8, 4, "d_ring_state", true}});
    CheckLaunch(eplb::kernels::LaunchWindowUpdate(
                    d_phy2log, d_load_pass, num_layers, num_logical_experts, num_physical_experts,
                    window_size, d_window, d_window_sum, d_ring_state, stream),
                "window update launch");
  });
}

EPLB_API eplbStatus_t eplbWindowReadout(const int64_t* d_window_sum, int32_t num_layers,
                                        int32_t num_logical_experts, int64_t* d_load,
                                        cudaStream_t stream) {
  return eplb::capi::Guard("eplbWindowReadout", [&] {
    EPLB_CHECK_NOT_NULL(d_window_sum);
    EPLB_CHECK_NOT_NULL(d_load);
    CheckLayers(num_layers);
    CheckExperts(num_logical_experts, num_logical_experts);
    CheckStream(stream);
    const int64_t LE = int64_t{num_layers} * num_logical_experts;
    CheckBuffers({{d_window_sum, Bytes(LE, 8), 8, "d_window_sum", false},
                  {d_load, Bytes(LE, 8), 8, "d_load", true}});
    CheckLaunch(eplb::kernels::LaunchWindowReadout(
                    d_window_sum, int64_t{num_layers} * num_logical_experts, d_load, stream),
                "window read-out launch");
  });
}

EPLB_API eplbStatus_t eplbWindowReduce(const int32_t* d_window, int32_t window_size,
                                       int32_t num_layers, int32_t num_logical_experts,
                                       int64_t* d_load, cudaStream_t stream) {
  return eplb::capi::Guard("eplbWindowReduce", [&] {
    EPLB_CHECK_NOT_NULL(d_window);
    EPLB_CHECK_NOT_NULL(d_load);
    EPLB_CHECK_ARG(window_size >= 1, "window_size (%d) must be >= 1", window_size);
    CheckLayers(num_layers);
    CheckExperts(num_logical_experts, num_logical_experts);
    CheckStream(stream);
    const int64_t LE = int64_t{num_layers} * num_logical_experts;
    CheckBuffers({{d_window, Bytes(LE * window_size, 4), 4, "d_window", false},
                  {d_load, Bytes(LE, 8), 8, "d_load", true}});
    CheckLaunch(
        eplb::kernels::LaunchWindowReduce(
            d_window, window_size, int64_t{num_layers} * num_logical_experts, d_load, stream),
        "window reduce launch");
  });
}

EPLB_API eplbStatus_t eplbPlanComputeGpuWorkspaceSize(const eplbPlanConfig_t* config,
                                                      size_t* workspace_bytes) {
  return eplb::capi::Guard("eplbPlanComputeGpuWorkspaceSize", [&] {
    EPLB_CHECK_NOT_NULL(workspace_bytes);
    const GpuPlanRequest r = ResolveGpuPlan(config);
    *workspace_bytes = eplb::kernels::PlanGpuWorkspaceBytes(r.shape, r.hierarchical, r.full);
  });
}

EPLB_API eplbStatus_t eplbPlanComputeGpu(const eplbPlanConfig_t* config, const int64_t* d_load,
                                         const int32_t* d_old_phy2log, int32_t* d_phy2log,
                                         int32_t* d_logcnt, int32_t* d_log2phy, void* d_workspace,
                                         size_t workspace_bytes, cudaStream_t stream) {
  return eplb::capi::Guard("eplbPlanComputeGpu", [&] {
    const GpuPlanRequest r = ResolveGpuPlan(config);
    EPLB_CHECK_NOT_NULL(d_load);
    EPLB_CHECK_NOT_NULL(d_phy2log);
    EPLB_CHECK_NOT_NULL(d_logcnt);
    EPLB_CHECK_NOT_NULL(d_workspace);
    const int m = static_cast<int>(config->migration);  // checked by ResolveGpuPlan
    if (d_old_phy2log != nullptr && m == EPLB_MIGRATION_FULL && !r.full) {
      eplb::Throw(Status::kNotSupported,
                  "config->migration EPLB_MIGRATION_FULL on the GPU takes at most %d ranks "
                  "(num_ranks %d; use eplbPlanCompute)",
                  eplb::kernels::kGpuFullMaxRanks, config->num_ranks);
    }
    // What eplbPlanComputeGpuWorkspaceSize returns for this config.
    const size_t need = eplb::kernels::PlanGpuWorkspaceBytes(r.shape, r.hierarchical, r.full);
    EPLB_CHECK_ARG(workspace_bytes >= need, "workspace_bytes (%zu) is below the %zu needed",
                   workspace_bytes, need);
    EPLB_CHECK_ARG(reinterpret_cast<uintptr_t>(d_workspace) % 256 == 0,
                   "d_workspace is not 256-byte aligned");
    CheckStream(stream);
    const int64_t L = config->num_layers, E = config->num_logical_experts,
                  P = config->num_physical_experts;
    CheckBuffers({{d_load, Bytes(L * E, 8), 8, "d_load", false},
                  {d_old_phy2log, Bytes(L * P, 4), 4, "d_old_phy2log", false},
                  {d_phy2log, Bytes(L * P, 4), 4, "d_phy2log", true},
                  {d_logcnt, Bytes(L * E, 4), 4, "d_logcnt", true},
                  {d_log2phy, Bytes(L * E * (P - E + 1), 4), 4, "d_log2phy", true},
                  {d_workspace, workspace_bytes, 1, "d_workspace", true}});
    using eplb::kernels::GpuMigration;
    const GpuMigration gm = m == EPLB_MIGRATION_FULL       ? GpuMigration::kFull
                            : m == EPLB_MIGRATION_PRESERVE ? GpuMigration::kPreserve
                                                           : GpuMigration::kNone;
    CheckLaunch(eplb::kernels::LaunchPlanGpu(r.shape, r.hierarchical, d_load, d_old_phy2log, gm,
                                             d_phy2log, d_logcnt, d_log2phy, d_workspace, stream),
                "GPU planner launch");
  });
}

}  // extern "C"
