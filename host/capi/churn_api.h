// Bridge from eplbPlanCompute's EPLB_POLICY_CHURN_AWARE branch to the
// churn-aware policy (churn_api.cc validates its C options).
#pragma once

#include <cstdint>

#include "eplb/eplb.h"
#include "planner.h"

namespace eplb {
namespace capi {

// Plans [L] layers with the churn-aware policy into phy2log [L][P] and
// logcnt [L][E]; sets *skipped and *moved_slots. Throws kInvalidArgument for
// a missing old placement or bad options.
void PlanChurnAwareC(const PlanShape& shape, const eplbPlanConfig_t* config, const int64_t* h_load,
                     const int32_t* h_old_phy2log, int32_t* phy2log, int32_t* logcnt,
                     int32_t* skipped, int64_t* moved_slots);

}  // namespace capi
}  // namespace eplb
