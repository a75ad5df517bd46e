// C shim of the churn-aware policy: options validation and conversion, and
// eplbLoadEstimateUpdate. plan_api.cc's EPLB_POLICY_CHURN_AWARE branch calls
// PlanChurnAwareC below.
#include <cmath>
#include <cstddef>

#include "api_common.h"
#include "churn_api.h"
#include "churn_policy.h"
#include "planner.h"

namespace eplb {
namespace capi {

// Plans with the churn-aware policy from the C config. Validates the options
// (struct_size, ranges) and throws kInvalidArgument naming the field.
void PlanChurnAwareC(const PlanShape& shape, const eplbPlanConfig_t* config, const int64_t* h_load,
                     const int32_t* h_old_phy2log, int32_t* phy2log, int32_t* logcnt,
                     int32_t* skipped, int64_t* moved_slots) {
  EPLB_CHECK_ARG(h_old_phy2log != nullptr,
                 "h_old_phy2log is NULL (EPLB_POLICY_CHURN_AWARE starts from the old placement)");
  ChurnOptions o;
  o.sticky_slack = 0.1;  // the header's default, also for an older struct without the field
  // An older config that ends before `churn` selects the defaults: the field
  // is read only where struct_size covers it.
  const eplbChurnOptions_t* c =
      config->struct_size >= offsetof(eplbPlanConfig_t, churn) + sizeof(config->churn)
          ? config->churn
          : nullptr;
  if (c != nullptr) {
    EPLB_CHECK_ARG(c->struct_size >= offsetof(eplbChurnOptions_t, single_moves) + sizeof(int32_t),
                   "churn->struct_size (%zu) is smaller than the version 1 options (%zu)",
                   c->struct_size, offsetof(eplbChurnOptions_t, single_moves) + sizeof(int32_t));
    EPLB_CHECK_ARG(c->single_moves == 0 || c->single_moves == 1,
                   "churn->single_moves (%d) must be 0 or 1", c->single_moves);
    o.load_estimate = c->h_load_estimate;
    o.max_moved_fraction = c->max_moved_fraction;
    o.min_gain = c->min_gain;
    o.min_gain_per_churn = c->min_gain_per_churn;
    o.single_moves = c->single_moves != 0;
    if (c->struct_size >= offsetof(eplbChurnOptions_t, sticky_slack) + sizeof(double)) {
      EPLB_CHECK_ARG(
          std::isfinite(c->sticky_slack) && c->sticky_slack >= -1.0 && c->sticky_slack <= 10.0,
          "churn->sticky_slack (%g) must be in [-1, 10]", c->sticky_slack);
      o.sticky_slack = c->sticky_slack;
    }
  }
  // A fresh planner per call: no candidate reuse, so the plan is a function
  // of this call's arguments alone (the C API keeps no history).
  ChurnPlanner planner;
  const ChurnResult r = planner.Plan(shape, o, h_load, h_old_phy2log, phy2log, logcnt, nullptr);
  *skipped = r.skipped ? 1 : 0;
  *moved_slots = CountMovedSlots(shape, phy2log, h_old_phy2log);
}

}  // namespace capi
}  // namespace eplb

extern "C" {

EPLB_API eplbStatus_t eplbLoadEstimateUpdate(int32_t num_layers, int32_t num_logical_experts,
                                             double decay, const int64_t* h_load,
                                             double* h_estimate) {
  return eplb::capi::Guard("eplbLoadEstimateUpdate", [&] {
    EPLB_CHECK_NOT_NULL(h_load);
    EPLB_CHECK_NOT_NULL(h_estimate);
    EPLB_CHECK_ARG(num_layers >= 1 && num_layers <= EPLB_MAX_LAYERS,
                   "num_layers (%d) must be in [1, %d]", num_layers, EPLB_MAX_LAYERS);
    EPLB_CHECK_ARG(num_logical_experts >= 1 && num_logical_experts <= EPLB_MAX_LOGICAL_EXPERTS,
                   "num_logical_experts (%d) must be in [1, %d]", num_logical_experts,
                   EPLB_MAX_LOGICAL_EXPERTS);
    EPLB_CHECK_ARG(std::isfinite(decay) && decay >= 0.0 && decay <= 1.0,
                   "decay (%g) must be in [0, 1]", decay);
    const int64_t n = static_cast<int64_t>(num_layers) * num_logical_experts;
    for (int64_t i = 0; i < n; ++i)
      EPLB_CHECK_ARG(h_load[i] >= 0 && h_load[i] < EPLB_MAX_LOAD,
                     "h_load[%lld][%lld] (%lld) must be in [0, 2^53)",
                     static_cast<long long>(i / num_logical_experts),
                     static_cast<long long>(i % num_logical_experts),
                     static_cast<long long>(h_load[i]));
    eplb::UpdateLoadEstimate(n, decay, h_load, h_estimate);
  });
}

}  // extern "C"
