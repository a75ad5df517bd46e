// C entry points of the per-rank state machine: argument checks, then the
// CUDA state (host/cuda/state.h). Every entry point runs under
// eplb::capi::Guard (NVTX range, status, thread-local detail).
#include <cstddef>
#include <memory>

#include "api_common.h"
#include "cuda/state.h"

namespace eplb {
namespace capi {
namespace {

static_assert(static_cast<int>(StatePhase::kReadout) == EPLB_STATE_PHASE_READOUT &&
                  static_cast<int>(StatePhase::kAllReduce) == EPLB_STATE_PHASE_ALLREDUCE &&
                  static_cast<int>(StatePhase::kPlan) == EPLB_STATE_PHASE_PLAN &&
                  static_cast<int>(StatePhase::kCheck) == EPLB_STATE_PHASE_CHECK &&
                  static_cast<int>(StatePhase::kExchange) == EPLB_STATE_PHASE_EXCHANGE &&
                  static_cast<int>(StatePhase::kCommit) == EPLB_STATE_PHASE_COMMIT &&
                  kNumStatePhases == EPLB_STATE_NUM_PHASES,
              "phase values");
static_assert(kStepDummy == EPLB_STEP_DUMMY && kStepStats == EPLB_STEP_STATS, "step flags");

cuda::CudaState& StateOf(eplbState_t state) {
  EPLB_CHECK_ARG(state != nullptr && state->impl != nullptr, "state is NULL");
  return *state->impl;
}

}  // namespace
}  // namespace capi
}  // namespace eplb

extern "C" {

EPLB_API eplbStatus_t eplbStateCreate(const eplbStateConfig_t* config, ncclComm_t comm,
                                      eplbState_t* out) {
  return eplb::capi::Guard("eplbStateCreate", [&] {
    EPLB_CHECK_NOT_NULL(config);
    EPLB_CHECK_NOT_NULL(comm);
    EPLB_CHECK_NOT_NULL(out);
    EPLB_CHECK_ARG(config->struct_size >= sizeof(eplbStateConfig_t),
                   "config->struct_size (%zu) is smaller than sizeof(eplbStateConfig_t) (%zu); "
                   "initialize with EPLB_STATE_CONFIG_INIT",
                   config->struct_size, sizeof(eplbStateConfig_t));
    std::unique_ptr<eplbState_s> state(new eplbState_s);
    state->impl.reset(new eplb::cuda::CudaState(*config, comm));
    *out = state.release();
  });
}

EPLB_API eplbStatus_t eplbStateRegisterLayer(eplbState_t state, int32_t layer,
                                             const eplbTensorDesc_t* h_tensors,
                                             int32_t num_tensors) {
  return eplb::capi::Guard("eplbStateRegisterLayer", [&] {
    eplb::capi::StateOf(state).RegisterLayer(layer, h_tensors, num_tensors);
  });
}

EPLB_API eplbStatus_t eplbStateGetDeviceMaps(eplbState_t state, eplbStateDeviceMaps_t* h_maps) {
  return eplb::capi::Guard("eplbStateGetDeviceMaps", [&] {
    eplb::cuda::CudaState& s = eplb::capi::StateOf(state);
    EPLB_CHECK_NOT_NULL(h_maps);
    EPLB_CHECK_ARG(h_maps->struct_size >= sizeof(eplbStateDeviceMaps_t),
                   "h_maps->struct_size (%zu) is smaller than sizeof(eplbStateDeviceMaps_t) "
                   "(%zu); initialize with EPLB_STATE_DEVICE_MAPS_INIT",
                   h_maps->struct_size, sizeof(eplbStateDeviceMaps_t));
    s.GetDeviceMaps(h_maps);
  });
}

EPLB_API eplbStatus_t eplbStateStep(eplbState_t state, uint32_t flags, cudaStream_t stream) {
  return eplb::capi::Guard("eplbStateStep", [&] {
    eplb::cuda::CudaState& s = eplb::capi::StateOf(state);
    eplb::capi::CheckStream(stream);
    s.Step(flags, stream);
  });
}

EPLB_API eplbStatus_t eplbStateRearrange(eplbState_t state, cudaStream_t stream) {
  return eplb::capi::Guard("eplbStateRearrange", [&] {
    eplb::cuda::CudaState& s = eplb::capi::StateOf(state);
    eplb::capi::CheckStream(stream);
    s.Rearrange(stream);
  });
}

EPLB_API eplbStatus_t eplbStateGetStats(eplbState_t state, eplbStateStats_t* h_stats) {
  return eplb::capi::Guard("eplbStateGetStats", [&] {
    eplb::cuda::CudaState& s = eplb::capi::StateOf(state);
    EPLB_CHECK_NOT_NULL(h_stats);
    EPLB_CHECK_ARG(h_stats->struct_size >= sizeof(eplbStateStats_t),
                   "h_stats->struct_size (%zu) is smaller than sizeof(eplbStateStats_t) (%zu); "
                   "initialize with EPLB_STATE_STATS_INIT",
                   h_stats->struct_size, sizeof(eplbStateStats_t));
    // Computed into a copy so that a failure leaves the output untouched.
    eplbStateStats_t tmp = *h_stats;
    s.GetStats(&tmp);
    *h_stats = tmp;
  });
}

EPLB_API eplbStatus_t eplbStateGetPlacement(eplbState_t state, int32_t* h_phy2log) {
  return eplb::capi::Guard("eplbStateGetPlacement", [&] {
    eplb::cuda::CudaState& s = eplb::capi::StateOf(state);
    EPLB_CHECK_NOT_NULL(h_phy2log);
    s.GetPlacement(h_phy2log);
  });
}

EPLB_API eplbStatus_t eplbStateDestroy(eplbState_t state) {
  return eplb::capi::Guard("eplbStateDestroy", [&] { delete state; });
}

}  // extern "C"
