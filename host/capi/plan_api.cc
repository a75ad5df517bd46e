// C entry points of the host planner: eplbPlanCompute and eplbPlanEvaluate.
// Everything is validated before any output is written; the plan is computed
// into per-thread scratch and copied out only on success, so outputs stay
// untouched on every error.
#include <cstddef>
#include <cstring>
#include <vector>

#include "api_common.h"
#include "churn_api.h"
#include "planner.h"

namespace eplb {
namespace capi {
namespace {

static_assert(static_cast<int>(Policy::kAuto) == EPLB_POLICY_AUTO, "policy values");
static_assert(static_cast<int>(Policy::kHierarchical) == EPLB_POLICY_HIERARCHICAL, "");
static_assert(static_cast<int>(Policy::kGlobal) == EPLB_POLICY_GLOBAL, "");
static_assert(static_cast<int>(Policy::kChurnAware) == EPLB_POLICY_CHURN_AWARE, "");
static_assert(static_cast<int>(Migration::kNone) == EPLB_MIGRATION_NONE, "migration values");
static_assert(static_cast<int>(Migration::kPreserve) == EPLB_MIGRATION_PRESERVE, "");
static_assert(static_cast<int>(Migration::kFull) == EPLB_MIGRATION_FULL, "");
static_assert(kMaxLayers == EPLB_MAX_LAYERS && kMaxLogicalExperts == EPLB_MAX_LOGICAL_EXPERTS &&
                  kMaxPhysicalExperts == EPLB_MAX_PHYSICAL_EXPERTS && kMaxRanks == EPLB_MAX_RANKS &&
                  kMaxLoad == EPLB_MAX_LOAD,
              "limits");

// Bytes of a config struct that this file reads (everything up to and
// including `migration`; `churn` only where struct_size covers it).
constexpr size_t kConfigMinSize = offsetof(eplbPlanConfig_t, migration) + sizeof(eplbMigration_t);
constexpr size_t kConfigChurnEnd = offsetof(eplbPlanConfig_t, churn) + sizeof(void*);

PlanShape ShapeOf(const eplbPlanConfig_t* config) {
  EPLB_CHECK_ARG(config != nullptr, "config is NULL");
  EPLB_CHECK_ARG(config->struct_size >= kConfigMinSize,
                 "config->struct_size (%zu) is smaller than the fields read (%zu); initialize "
                 "with EPLB_PLAN_CONFIG_INIT",
                 config->struct_size, kConfigMinSize);
  PlanShape s;
  s.num_layers = config->num_layers;
  s.num_logical_experts = config->num_logical_experts;
  s.num_physical_experts = config->num_physical_experts;
  s.num_groups = config->num_groups;
  s.num_nodes = config->num_nodes;
  s.num_ranks = config->num_ranks;
  ValidateShape(s);
  return s;
}

// Per-thread planner and output scratch: repeated calls allocate nothing once
// a shape has been seen on the thread.
struct ThreadScratch {
  Planner planner;
  std::vector<int32_t> phy2log, logcnt, log2phy;
};
ThreadScratch& Scratch() {
  static thread_local ThreadScratch t;
  return t;
}

template <typename T>
void GrowTo(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// ---- EPLB_POLICY_CHURN_AWARE ------------------------------------------------
// The churn-aware policy lives in host/churn_policy.{h,cc}; its engineer
// replaces the body of this one function. It plans into the scratch outputs
// (phy2log [L][P], logcnt [L][E]) and fills `info_policy`, `skipped` and
// `moved_slots`; the caller builds log2phy, scores and copies out.
void PlanChurnAwareDispatch(const PlanShape& shape, const eplbPlanConfig_t* config,
                            const int64_t* h_load, const int32_t* h_old_phy2log, int32_t* phy2log,
                            int32_t* logcnt, int32_t* skipped, int64_t* moved_slots) {
  PlanChurnAwareC(shape, config, h_load, h_old_phy2log, phy2log, logcnt, skipped, moved_slots);
}
// ---- end EPLB_POLICY_CHURN_AWARE --------------------------------------------

}  // namespace
}  // namespace capi
}  // namespace eplb

extern "C" {

EPLB_API eplbStatus_t eplbPlanCompute(const eplbPlanConfig_t* config, const int64_t* h_load,
                                      const int32_t* h_old_phy2log, int32_t* h_phy2log,
                                      int32_t* h_logcnt, int32_t* h_log2phy,
                                      eplbPlanInfo_t* h_info) {
  return eplb::capi::Guard("eplbPlanCompute", [&] {
    using namespace eplb;
    const PlanShape shape = capi::ShapeOf(config);
    const int policy_value = static_cast<int>(config->policy);
    EPLB_CHECK_ARG(policy_value >= EPLB_POLICY_AUTO && policy_value <= EPLB_POLICY_CHURN_AWARE,
                   "config->policy (%d) is not a valid eplbPolicy_t", policy_value);
    const int migration_value = static_cast<int>(config->migration);
    EPLB_CHECK_ARG(migration_value >= EPLB_MIGRATION_NONE && migration_value <= EPLB_MIGRATION_FULL,
                   "config->migration (%d) is not a valid eplbMigration_t", migration_value);
    const Policy policy = ResolvePolicy(shape, static_cast<Policy>(policy_value));
    const Migration migration = static_cast<Migration>(migration_value);
    EPLB_CHECK_NOT_NULL(h_load);
    EPLB_CHECK_NOT_NULL(h_phy2log);
    EPLB_CHECK_NOT_NULL(h_logcnt);
    if (h_info != nullptr)
      EPLB_CHECK_ARG(h_info->struct_size >= sizeof(eplbPlanInfo_t),
                     "h_info->struct_size (%zu) is smaller than sizeof(eplbPlanInfo_t) (%zu); "
                     "initialize with EPLB_PLAN_INFO_INIT",
                     h_info->struct_size, sizeof(eplbPlanInfo_t));
    ValidateLoads(shape, h_load);
    if (h_old_phy2log != nullptr) ValidatePlacement(shape, h_old_phy2log, "h_old_phy2log");

    const size_t L = static_cast<size_t>(shape.num_layers);
    const size_t E = static_cast<size_t>(shape.num_logical_experts);
    const size_t P = static_cast<size_t>(shape.num_physical_experts);
    const size_t width = P - E + 1;
    capi::ThreadScratch& t = capi::Scratch();
    capi::GrowTo(t.phy2log, L * P);
    capi::GrowTo(t.logcnt, L * E);
    if (h_log2phy != nullptr) capi::GrowTo(t.log2phy, L * E * width);

    int32_t skipped = 0;
    int64_t moved = -1;
    if (policy == Policy::kChurnAware) {
      capi::PlanChurnAwareDispatch(shape, config, h_load, h_old_phy2log, t.phy2log.data(),
                                   t.logcnt.data(), &skipped, &moved);
    } else {
      PlanResult r = t.planner.Plan(shape, policy, migration, h_load, h_old_phy2log,
                                    t.phy2log.data(), t.logcnt.data(), nullptr);
      moved = r.moved_slots;
    }
    if (h_log2phy != nullptr) BuildLog2Phy(shape, t.phy2log.data(), t.log2phy.data());
    double balancedness = 0.0;
    if (h_info != nullptr)
      balancedness = Evaluate(shape, h_load, t.phy2log.data(), nullptr, nullptr).balancedness;

    // Success: copy out.
    std::memcpy(h_phy2log, t.phy2log.data(), sizeof(int32_t) * L * P);
    std::memcpy(h_logcnt, t.logcnt.data(), sizeof(int32_t) * L * E);
    if (h_log2phy != nullptr)
      std::memcpy(h_log2phy, t.log2phy.data(), sizeof(int32_t) * L * E * width);
    if (h_info != nullptr) {
      h_info->policy = static_cast<eplbPolicy_t>(policy);
      h_info->skipped = skipped;
      h_info->moved_slots = moved;
      h_info->balancedness = balancedness;
    }
  });
}

EPLB_API eplbStatus_t eplbPlanEvaluate(const eplbPlanConfig_t* config, const int64_t* h_load,
                                       const int32_t* h_phy2log, const int32_t* h_old_phy2log,
                                       double* h_layer_balancedness, eplbPlanMetrics_t* h_metrics) {
  return eplb::capi::Guard("eplbPlanEvaluate", [&] {
    using namespace eplb;
    const PlanShape shape = capi::ShapeOf(config);
    EPLB_CHECK_NOT_NULL(h_load);
    EPLB_CHECK_NOT_NULL(h_phy2log);
    EPLB_CHECK_NOT_NULL(h_metrics);
    EPLB_CHECK_ARG(h_metrics->struct_size >= sizeof(eplbPlanMetrics_t),
                   "h_metrics->struct_size (%zu) is smaller than sizeof(eplbPlanMetrics_t) (%zu); "
                   "initialize with EPLB_PLAN_METRICS_INIT",
                   h_metrics->struct_size, sizeof(eplbPlanMetrics_t));
    ValidateLoads(shape, h_load);
    ValidatePlacement(shape, h_phy2log, "h_phy2log");
    if (h_old_phy2log != nullptr) ValidatePlacement(shape, h_old_phy2log, "h_old_phy2log");
    // Per-layer values go to a local array first: outputs untouched on error
    // (nothing can fail after this point, but keep the rule obvious).
    std::vector<double> layer(static_cast<size_t>(shape.num_layers));
    const PlanMetrics m = Evaluate(shape, h_load, h_phy2log, h_old_phy2log, layer.data());
    if (h_layer_balancedness != nullptr)
      std::memcpy(h_layer_balancedness, layer.data(), sizeof(double) * layer.size());
    h_metrics->balancedness = m.balancedness;
    h_metrics->max_load_sum = m.max_load_sum;
    h_metrics->moved_slots = m.moved_slots;
  });
}

}  // extern "C"
