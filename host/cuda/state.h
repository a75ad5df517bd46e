// The per-rank state machine on CUDA + NCCL: the StateBackend that executes
// what StateLogic (host/state_logic.h) decides. Thin by design: each backend
// method is a few enqueued calls (the kernels' and the exchange's public C
// entry points, ncclAllReduce, cudaMemcpyAsync); every decision lives in the
// host logic, which is tested without a GPU. The C API
// (host/capi/state_api.cc) is a shim over CudaState.
//
// Memory: everything is allocated in Create (device maps, counters, window,
// read-out buffer, stats buffers, the exchange's staging, pinned host
// buffers); Step and Rearrange never allocate.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cuda/exchange.h"
#include "eplb/eplb.h"
#include "state_logic.h"

namespace eplb {
namespace cuda {

class CudaState final : public StateBackend {
 public:
  // Collective (one agreement all-reduce over `comm`); blocks; throws
  // eplb::Error. See eplbStateCreate.
  CudaState(const eplbStateConfig_t& config, ncclComm_t comm);
  ~CudaState() override;
  CudaState(const CudaState&) = delete;
  CudaState& operator=(const CudaState&) = delete;

  void RegisterLayer(int32_t layer, const eplbTensorDesc_t* tensors, int32_t num_tensors);
  void GetDeviceMaps(eplbStateDeviceMaps_t* maps) const;
  void Step(uint32_t flags, cudaStream_t stream);
  void Rearrange(cudaStream_t stream);
  void GetStats(eplbStateStats_t* stats);
  void GetPlacement(int32_t* phy2log) const;

  // For tests (fault injection through the logic's hook).
  StateLogic& logic() { return *logic_; }
  // Where the last exchange's time went (benchmarks; blocks for its GPU time).
  Exchange::Profile ExchangeProfile() { return exchange_->impl->LastProfile(); }
  int32_t device() const { return device_; }

  // StateBackend.
  void RecordPass(bool dummy, bool stats, int64_t step) override;
  void MarkPhase(int phase) override;
  void ReadoutLoad() override;
  void AllReduceLoad(int64_t* h_load) override;
  bool AgreeOnDigest(uint64_t digest, bool poison) override;
  PlanBuffers AcquirePlanBuffers() override;
  void BeginExchangePrepare(const int32_t* old_phy2log, const int32_t* new_phy2log) override;
  void PrepareExchangeLayers(int32_t lo, int32_t hi) override;
  uint64_t FinishExchangePrepare() override;
  ExchangeOutcome Exchange() override;
  void CommitMaps(int32_t first_layer, int32_t num_layers, const PlanBuffers& plan) override;

 private:
  void Allocate();
  void Release() noexcept;
  void CloseNvtxPhase() noexcept;

  StateConfig config_;
  ncclComm_t comm_ = nullptr;
  ncclComm_t overlap_comm_ = nullptr;  // the caller's second communicator, or null
  int32_t device_ = 0;
  size_t staging_bytes_ = 0;
  std::vector<int32_t> rank_node_;
  std::unique_ptr<StateLogic> logic_;
  eplbExchange_t exchange_ = nullptr;
  cudaStream_t stream_ = nullptr;      // the caller's, for the call in progress
  cudaStream_t own_stream_ = nullptr;  // Create's agreement only

  // Device buffers (one allocation each, owned).
  int32_t* d_phy2log_ = nullptr;
  int32_t* d_log2phy_ = nullptr;
  int32_t* d_logcnt_ = nullptr;
  int32_t* d_load_pass_ = nullptr;
  int32_t* d_record_ = nullptr;
  unsigned long long* d_invalid_ = nullptr;
  int32_t* d_window_ = nullptr;
  int64_t* d_window_sum_ = nullptr;
  int32_t* d_ring_ = nullptr;
  int64_t* d_load_ = nullptr;
  int64_t* d_rank_tokens_ = nullptr;
  double* d_layer_balance_ = nullptr;
  eplbStepBalance_t* d_step_balance_ = nullptr;
  uint64_t* d_agree_ = nullptr;
  // Pinned host buffers.
  int64_t* h_load_ = nullptr;
  uint64_t* h_agree_ = nullptr;  // [4]: in, out
  PlanBuffers h_plan_;

  // Phase boundaries of the last rearrangement (kNumStatePhases + 1 events)
  // and which of them it recorded.
  cudaEvent_t phase_events_[kNumStatePhases + 1] = {};
  uint32_t phase_marked_ = 0;
  int nvtx_phase_open_ = 0;
  cudaEvent_t commit_done_ = nullptr;
  bool commit_pending_ = false;
};

}  // namespace cuda
}  // namespace eplb

// The C handle.
struct eplbState_s {
  std::unique_ptr<eplb::cuda::CudaState> impl;
};
