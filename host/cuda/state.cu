#include "cuda/state.h"

#include <cstring>
#include <new>
#include <string>

#include "capi/api_common.h"
#include "cuda/exchange.h"
#include "kernels/enqueue.cuh"
#include "planner.h"
#include "transfer_plan.h"

namespace eplb {
namespace cuda {
namespace {

// Calls a public eplb entry point from inside the library and rethrows its
// failure with its status and detail.
void CallEplb(eplbStatus_t status) {
  if (status != EPLB_SUCCESS) throw Error(static_cast<Status>(status), eplbGetLastErrorDetail());
}

// Switches to the state's device for the duration of a call.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    EPLB_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) EPLB_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

template <typename T>
void DeviceAlloc(T** p, size_t count) {
  EPLB_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(p), sizeof(T) * (count > 0 ? count : 1)));
}
template <typename T>
void HostAlloc(T** p, size_t count) {
  EPLB_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(p), sizeof(T) * (count > 0 ? count : 1)));
}

const char* const kPhaseNames[kNumStatePhases] = {"eplb::readout",  "eplb::allreduce",
                                                  "eplb::plan",     "eplb::check",
                                                  "eplb::exchange", "eplb::commit"};

// Tokens of each rank in each layer of one pass: rank_tokens[l][r] = sum of
// load_pass[l][slots of r], in slot order (integers: exact).
__global__ void RankTokensKernel(const int32_t* __restrict__ load_pass, int32_t P, int32_t N,
                                 int64_t* __restrict__ rank_tokens) {
  const int32_t l = blockIdx.x;
  const int32_t S = P / N;
  for (int32_t r = threadIdx.x; r < N; r += blockDim.x) {
    const int32_t* row = load_pass + static_cast<size_t>(l) * P + static_cast<size_t>(r) * S;
    int64_t sum = 0;
    for (int32_t s = 0; s < S; ++s) sum += row[s];
    rank_tokens[static_cast<size_t>(l) * N + r] = sum;
  }
}

constexpr int kBalanceThreads = 256;

// The pass's balancedness from the all-reduced rank tokens. Integer sums and
// maxima (any order is exact), then float64 per layer and a fixed-order mean
// over layers by one thread: the same bits on every rank.
__global__ void BalanceKernel(const int64_t* __restrict__ rank_tokens, int32_t L, int32_t N,
                              int64_t step, double* __restrict__ layer_balance,
                              eplbStepBalance_t* __restrict__ out) {
  __shared__ long long s_sum[kBalanceThreads];
  __shared__ long long s_max[kBalanceThreads];
  double acc_avg = 0.0, acc_max = 0.0, acc_bal = 0.0;
  for (int32_t l = 0; l < L; ++l) {
    long long sum = 0, mx = 0;
    for (int32_t r = threadIdx.x; r < N; r += blockDim.x) {
      const long long v = rank_tokens[static_cast<size_t>(l) * N + r];
      sum += v;
      mx = v > mx ? v : mx;
    }
    s_sum[threadIdx.x] = sum;
    s_max[threadIdx.x] = mx;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) {
        s_sum[threadIdx.x] += s_sum[threadIdx.x + w];
        s_max[threadIdx.x] = s_max[threadIdx.x + w] > s_max[threadIdx.x] ? s_max[threadIdx.x + w]
                                                                         : s_max[threadIdx.x];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const double avg = static_cast<double>(s_sum[0]) / static_cast<double>(N);
      const double m = static_cast<double>(s_max[0]);
      const double bal = s_max[0] == 0 ? 1.0 : avg / m;
      layer_balance[l] = bal;
      acc_avg += avg;
      acc_max += m;
      acc_bal += bal;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out->avg_tokens_per_rank = acc_avg / L;
    out->max_tokens_per_rank = acc_max / L;
    out->balancedness = acc_bal / L;
    out->step = step;
  }
}

}  // namespace

CudaState::CudaState(const eplbStateConfig_t& c, ncclComm_t comm) : comm_(comm) {
  // Things without which this rank cannot even take part in the agreement.
  int nranks = 0, rank = 0, device = 0;
  EPLB_NCCL_CHECK(ncclCommCount(comm, &nranks));
  EPLB_NCCL_CHECK(ncclCommUserRank(comm, &rank));
  EPLB_NCCL_CHECK(ncclCommCuDevice(comm, &device));
  device_ = device;
  DeviceGuard guard(device_);
  try {
    EPLB_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream_, cudaStreamNonBlocking));
    DeviceAlloc(&d_agree_, 2);
    HostAlloc(&h_agree_, 4);
  } catch (...) {
    Release();
    throw;
  }

  // Local checks and allocation: a failure here still takes part in the
  // agreement (poison), so the other ranks fail instead of hanging.
  bool failed = false;
  Status status = Status::kSuccess;
  std::string message;
  uint64_t digest = 0;
  try {
    config_.shape.num_layers = c.num_layers;
    config_.shape.num_logical_experts = c.num_logical_experts;
    config_.shape.num_physical_experts = c.num_physical_experts;
    config_.shape.num_groups = c.num_groups;
    config_.shape.num_nodes = c.num_nodes;
    config_.shape.num_ranks = c.num_ranks;
    config_.rank = c.rank;
    config_.window_size = c.window_size;
    config_.step_interval = c.step_interval;
    config_.policy = static_cast<Policy>(c.policy);
    config_.migration = static_cast<Migration>(c.migration);
    EPLB_CHECK_ARG(c.num_ranks == nranks,
                   "config->num_ranks (%d) differs from the communicator's size (%d)", c.num_ranks,
                   nranks);
    EPLB_CHECK_ARG(c.rank == rank, "config->rank (%d) differs from the communicator's rank (%d)",
                   c.rank, rank);
    ValidateStateConfig(config_);
    EPLB_CHECK_ARG(c.staging_bytes > 0, "config->staging_bytes is 0");
    staging_bytes_ = c.staging_bytes;
    overlap_comm_ = c.overlap_comm;  // checked by the exchange's Create
    const int32_t N = c.num_ranks, M = c.num_nodes;
    rank_node_.resize(N);
    for (int32_t r = 0; r < N; ++r) {
      rank_node_[r] = c.h_rank_node != nullptr
                          ? c.h_rank_node[r]
                          : static_cast<int32_t>(static_cast<int64_t>(r) * M / N);
      EPLB_CHECK_ARG(rank_node_[r] >= 0, "config->h_rank_node[%d] (%d) is negative", r,
                     rank_node_[r]);
    }
    const size_t L = c.num_layers, P = c.num_physical_experts;
    std::vector<int32_t> initial(L * P);
    InitialPlacement(config_, c.h_initial_phy2log, c.h_initial_load, initial.data());
    logic_.reset(new StateLogic(config_, initial.data(), this));
    Allocate();

    Hasher h;
    h.Value(c.num_layers);
    h.Value(c.num_logical_experts);
    h.Value(c.num_physical_experts);
    h.Value(c.num_groups);
    h.Value(c.num_nodes);
    h.Value(c.num_ranks);
    h.Value(c.window_size);
    h.Value(c.step_interval);
    h.Value(static_cast<uint64_t>(c.staging_bytes));
    h.Value(static_cast<int32_t>(c.policy));
    h.Value(static_cast<int32_t>(c.migration));
    h.Value(static_cast<int32_t>(c.overlap_comm != nullptr));
    h.Bytes(rank_node_.data(), rank_node_.size() * sizeof(int32_t));
    h.Bytes(initial.data(), initial.size() * sizeof(int32_t));
    digest = h.digest();
  } catch (const Error& e) {
    failed = true;
    status = e.status();
    message = e.what();
  } catch (const std::bad_alloc&) {
    failed = true;
    status = Status::kOutOfMemory;
    message = "host allocation failed";
  } catch (const std::exception& e) {
    failed = true;
    status = Status::kInternal;
    message = std::string("internal error: ") + e.what();
  }

  bool agreed = false;
  try {
    stream_ = own_stream_;
    agreed = AgreeOnDigest(digest, failed);
    stream_ = nullptr;
  } catch (...) {
    Release();
    throw;
  }
  if (failed || !agreed) {
    Release();
    if (failed) throw Error(status, message);
    Throw(Status::kMismatch,
          "the ranks passed different configs or initial placements (or another rank failed "
          "to create its state)");
  }
  // Every rank got here: connect the exchange's peers now, not in the first
  // rearrangement.
  try {
    exchange_->impl->Warmup();
  } catch (...) {
    Release();
    throw;
  }
}

void CudaState::Allocate() {
  const size_t L = config_.shape.num_layers, E = config_.shape.num_logical_experts,
               P = config_.shape.num_physical_experts, N = config_.shape.num_ranks,
               W = config_.window_size;
  const size_t width = P - E + 1;
  DeviceAlloc(&d_phy2log_, L * P);
  DeviceAlloc(&d_log2phy_, L * E * width);
  DeviceAlloc(&d_logcnt_, L * E);
  DeviceAlloc(&d_load_pass_, L * P);
  DeviceAlloc(&d_record_, 1);
  DeviceAlloc(&d_invalid_, 1);
  DeviceAlloc(&d_window_, W * L * E);
  DeviceAlloc(&d_window_sum_, L * E);
  DeviceAlloc(&d_ring_, 2);
  DeviceAlloc(&d_load_, L * E);
  DeviceAlloc(&d_rank_tokens_, L * N);
  DeviceAlloc(&d_layer_balance_, L);
  DeviceAlloc(&d_step_balance_, 1);
  HostAlloc(&h_load_, L * E);
  HostAlloc(&h_plan_.phy2log, L * P);
  HostAlloc(&h_plan_.log2phy, L * E * width);
  HostAlloc(&h_plan_.logcnt, L * E);
  for (auto& ev : phase_events_) EPLB_CUDA_CHECK(cudaEventCreate(&ev));
  EPLB_CUDA_CHECK(cudaEventCreateWithFlags(&commit_done_, cudaEventDisableTiming));

  eplbExchangeConfig_t xc = EPLB_EXCHANGE_CONFIG_INIT;
  xc.num_layers = config_.shape.num_layers;
  xc.num_physical_experts = config_.shape.num_physical_experts;
  xc.num_ranks = config_.shape.num_ranks;
  xc.rank = config_.rank;
  xc.h_rank_node = rank_node_.data();
  xc.staging_bytes = staging_bytes_;
  xc.device = device_;
  xc.overlap_comm = overlap_comm_;
  CallEplb(eplbExchangeCreate(&xc, comm_, &exchange_));

  // Initial maps and zeroed counters, window and stats (synchronously: Create
  // blocks anyway, and the caller's stream must see them ready).
  const PlanShape& s = config_.shape;
  const std::vector<int32_t>& p2l = logic_->placement();
  std::memcpy(h_plan_.phy2log, p2l.data(), L * P * sizeof(int32_t));
  BuildLog2Phy(s, h_plan_.phy2log, h_plan_.log2phy);
  BuildLogCnt(s, h_plan_.phy2log, h_plan_.logcnt);
  EPLB_CUDA_CHECK(
      cudaMemcpy(d_phy2log_, h_plan_.phy2log, L * P * sizeof(int32_t), cudaMemcpyHostToDevice));
  EPLB_CUDA_CHECK(cudaMemcpy(d_log2phy_, h_plan_.log2phy, L * E * width * sizeof(int32_t),
                             cudaMemcpyHostToDevice));
  EPLB_CUDA_CHECK(
      cudaMemcpy(d_logcnt_, h_plan_.logcnt, L * E * sizeof(int32_t), cudaMemcpyHostToDevice));
  const int32_t one = 1;
  EPLB_CUDA_CHECK(cudaMemcpy(d_record_, &one, sizeof(one), cudaMemcpyHostToDevice));
  EPLB_CUDA_CHECK(cudaMemset(d_load_pass_, 0, L * P * sizeof(int32_t)));
  EPLB_CUDA_CHECK(cudaMemset(d_invalid_, 0, sizeof(unsigned long long)));
  EPLB_CUDA_CHECK(cudaMemset(d_window_, 0, W * L * E * sizeof(int32_t)));
  EPLB_CUDA_CHECK(cudaMemset(d_window_sum_, 0, L * E * sizeof(int64_t)));
  EPLB_CUDA_CHECK(cudaMemset(d_ring_, 0, 2 * sizeof(int32_t)));
  EPLB_CUDA_CHECK(cudaMemset(d_rank_tokens_, 0, L * N * sizeof(int64_t)));
  EPLB_CUDA_CHECK(cudaMemset(d_layer_balance_, 0, L * sizeof(double)));
  EPLB_CUDA_CHECK(cudaMemset(d_step_balance_, 0, sizeof(eplbStepBalance_t)));
  EPLB_CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaState::Release() noexcept {
  int previous = -1;
  (void)cudaGetDevice(&previous);
  (void)cudaSetDevice(device_);
  if (exchange_ != nullptr) {
    // A broken state's communicator is to be aborted (eplb.h): its exchange
    // makes no NCCL call on it while releasing.
    if (logic_ != nullptr && logic_->broken()) exchange_->impl->MarkBroken();
    (void)eplbExchangeDestroy(exchange_);
  }
  exchange_ = nullptr;
  // cudaFree waits for the device's work in flight, which may still read or
  // write these buffers.
  auto dfree = [](auto*& p) {
    if (p != nullptr) (void)cudaFree(p);
    p = nullptr;
  };
  auto hfree = [](auto*& p) {
    if (p != nullptr) (void)cudaFreeHost(p);
    p = nullptr;
  };
  dfree(d_phy2log_);
  dfree(d_log2phy_);
  dfree(d_logcnt_);
  dfree(d_load_pass_);
  dfree(d_record_);
  dfree(d_invalid_);
  dfree(d_window_);
  dfree(d_window_sum_);
  dfree(d_ring_);
  dfree(d_load_);
  dfree(d_rank_tokens_);
  dfree(d_layer_balance_);
  dfree(d_step_balance_);
  dfree(d_agree_);
  hfree(h_load_);
  hfree(h_agree_);
  hfree(h_plan_.phy2log);
  hfree(h_plan_.log2phy);
  hfree(h_plan_.logcnt);
  for (auto& ev : phase_events_) {
    if (ev != nullptr) (void)cudaEventDestroy(ev);
    ev = nullptr;
  }
  if (commit_done_ != nullptr) (void)cudaEventDestroy(commit_done_);
  commit_done_ = nullptr;
  if (own_stream_ != nullptr) (void)cudaStreamDestroy(own_stream_);
  own_stream_ = nullptr;
  if (previous >= 0) (void)cudaSetDevice(previous);
}

CudaState::~CudaState() {
  CloseNvtxPhase();
  Release();
}

void CudaState::RegisterLayer(int32_t layer, const eplbTensorDesc_t* tensors, int32_t num_tensors) {
  DeviceGuard guard(device_);
  CallEplb(eplbExchangeRegisterLayer(exchange_, layer, tensors, num_tensors,
                                     config_.shape.num_physical_experts / config_.shape.num_ranks));
  logic_->MarkRegistered(layer);
}

void CudaState::GetDeviceMaps(eplbStateDeviceMaps_t* m) const {
  m->d_phy2log = d_phy2log_;
  m->d_log2phy = d_log2phy_;
  m->d_logcnt = d_logcnt_;
  m->d_load_pass = d_load_pass_;
  m->d_record = d_record_;
  m->d_invalid_count = d_invalid_;
  m->d_step_balance = d_step_balance_;
  m->d_layer_balancedness = d_layer_balance_;
}

void CudaState::Step(uint32_t flags, cudaStream_t stream) {
  DeviceGuard guard(device_);
  stream_ = stream;
  try {
    logic_->Step(flags);
  } catch (...) {
    CloseNvtxPhase();
    stream_ = nullptr;
    throw;
  }
  stream_ = nullptr;
}

void CudaState::Rearrange(cudaStream_t stream) {
  DeviceGuard guard(device_);
  stream_ = stream;
  try {
    logic_->Rearrange();
  } catch (...) {
    CloseNvtxPhase();
    stream_ = nullptr;
    throw;
  }
  stream_ = nullptr;
}

void CudaState::GetStats(eplbStateStats_t* st) {
  const StateLogic& g = *logic_;
  st->num_steps = g.num_steps();
  st->num_dummy_steps = g.num_dummy_steps();
  st->num_rearrangements = g.num_rearrangements();
  st->num_failed_rearrangements = g.num_failed_rearrangements();
  st->steps_to_next_rearrangement = g.steps_to_next_rearrangement();
  const RearrangeReport& r = g.last_report();
  const bool have = g.has_report();
  st->last_status = have ? static_cast<int32_t>(r.status) : 0;
  st->last_layers_committed = r.layers_committed;
  st->last_slots_moved = r.slots_moved;
  st->last_bytes_sent = r.bytes_sent;
  st->last_bytes_received = r.bytes_received;
  st->last_balancedness_before = r.balancedness_before;
  st->last_balancedness_after = r.balancedness_after;
  for (int p = 0; p < kNumStatePhases; ++p) {
    st->last_host_ms[p] = have ? r.host_ms[p] : 0.0;
    st->last_device_ms[p] = have ? -1.0 : 0.0;
  }
  if (!have) return;
  DeviceGuard guard(device_);
  if (phase_marked_ & (1u << kNumStatePhases))
    EPLB_CUDA_CHECK(cudaEventSynchronize(phase_events_[kNumStatePhases]));
  for (int p = 0; p < kNumStatePhases; ++p) {
    if (!(phase_marked_ & (1u << p)) || !(phase_marked_ & (1u << (p + 1)))) continue;
    float ms = 0.f;
    EPLB_CUDA_CHECK(cudaEventElapsedTime(&ms, phase_events_[p], phase_events_[p + 1]));
    st->last_device_ms[p] = ms;
  }
}

void CudaState::GetPlacement(int32_t* phy2log) const {
  const std::vector<int32_t>& p = logic_->placement();
  std::memcpy(phy2log, p.data(), p.size() * sizeof(int32_t));
}

// ---- StateBackend ----------------------------------------------------------

void CudaState::RecordPass(bool dummy, bool stats, int64_t step) {
  const int32_t L = config_.shape.num_layers, E = config_.shape.num_logical_experts,
                P = config_.shape.num_physical_experts, N = config_.shape.num_ranks;
  const size_t LP = static_cast<size_t>(L) * P;
  // A dummy pass's counts are discarded before anything reads them, so its
  // stats (a collective every rank makes) see it as an empty pass.
  if (dummy) EPLB_CUDA_CHECK(cudaMemsetAsync(d_load_pass_, 0, LP * sizeof(int32_t), stream_));
  if (stats) {
    EPLB_CUDA_CHECK(EnqueueKernel(RankTokensKernel, dim3(static_cast<unsigned>(L)), dim3(128), 0,
                                  stream_, d_load_pass_, P, N, d_rank_tokens_));
    EPLB_NCCL_CHECK(ncclAllReduce(d_rank_tokens_, d_rank_tokens_, static_cast<size_t>(L) * N,
                                  ncclInt64, ncclSum, comm_, stream_));
    EPLB_CUDA_CHECK(EnqueueKernel(BalanceKernel, dim3(1), dim3(kBalanceThreads), 0, stream_,
                                  d_rank_tokens_, L, N, step, d_layer_balance_, d_step_balance_));
  }
  if (!dummy)
    CallEplb(eplbWindowUpdate(d_phy2log_, d_load_pass_, L, E, P, config_.window_size, d_window_,
                              d_window_sum_, d_ring_, stream_));
}

void CudaState::CloseNvtxPhase() noexcept {
  if (nvtx_phase_open_) {
    nvtxDomainRangePop(capi::NvtxDomain());
    nvtx_phase_open_ = 0;
  }
}

void CudaState::MarkPhase(int phase) {
  CloseNvtxPhase();
  if (phase == 0) phase_marked_ = 0;
  if (phase < kNumStatePhases) {
    nvtxEventAttributes_t attr;
    std::memset(&attr, 0, sizeof(attr));
    attr.version = NVTX_VERSION;
    attr.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    attr.messageType = NVTX_MESSAGE_TYPE_ASCII;
    attr.message.ascii = kPhaseNames[phase];
    nvtxDomainRangePushEx(capi::NvtxDomain(), &attr);
    nvtx_phase_open_ = 1;
  }
  EPLB_CUDA_CHECK(cudaEventRecord(phase_events_[phase], stream_));
  phase_marked_ |= 1u << phase;
}

void CudaState::ReadoutLoad() {
  CallEplb(eplbWindowReadout(d_window_sum_, config_.shape.num_layers,
                             config_.shape.num_logical_experts, d_load_, stream_));
}

void CudaState::AllReduceLoad(int64_t* h_load) {
  const size_t n =
      static_cast<size_t>(config_.shape.num_layers) * config_.shape.num_logical_experts;
  EPLB_NCCL_CHECK(ncclAllReduce(d_load_, d_load_, n, ncclInt64, ncclSum, comm_, stream_));
  EPLB_CUDA_CHECK(
      cudaMemcpyAsync(h_load_, d_load_, n * sizeof(int64_t), cudaMemcpyDeviceToHost, stream_));
  EPLB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::memcpy(h_load, h_load_, n * sizeof(int64_t));
}

bool CudaState::AgreeOnDigest(uint64_t digest, bool poison) {
  // max over ranks of (d, ~d) equals (d, ~d) iff every rank passed d; a
  // poisoned rank passes (max, max), which no digest survives.
  const uint64_t kAll = ~uint64_t{0};
  h_agree_[0] = poison ? kAll : digest;
  h_agree_[1] = poison ? kAll : ~digest;
  EPLB_CUDA_CHECK(
      cudaMemcpyAsync(d_agree_, h_agree_, 2 * sizeof(uint64_t), cudaMemcpyHostToDevice, stream_));
  EPLB_NCCL_CHECK(ncclAllReduce(d_agree_, d_agree_, 2, ncclUint64, ncclMax, comm_, stream_));
  EPLB_CUDA_CHECK(cudaMemcpyAsync(h_agree_ + 2, d_agree_, 2 * sizeof(uint64_t),
                                  cudaMemcpyDeviceToHost, stream_));
  EPLB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return !poison && h_agree_[2] == digest && h_agree_[3] == ~digest;
}

PlanBuffers CudaState::AcquirePlanBuffers() {
  // The last commit's copies read these pinned buffers asynchronously.
  if (commit_pending_) {
    EPLB_CUDA_CHECK(cudaEventSynchronize(commit_done_));
    commit_pending_ = false;
  }
  return h_plan_;
}

void CudaState::BeginExchangePrepare(const int32_t* old_phy2log, const int32_t* new_phy2log) {
  exchange_->impl->BeginPrepare(old_phy2log, new_phy2log, 0, config_.shape.num_layers);
}

void CudaState::PrepareExchangeLayers(int32_t lo, int32_t hi) {
  exchange_->impl->PrepareLayers(lo, hi);
}

uint64_t CudaState::FinishExchangePrepare() {
  return exchange_->impl->FinishPrepare();
}

ExchangeOutcome CudaState::Exchange() {
  eplbExchangeStats_t st = EPLB_EXCHANGE_STATS_INIT;
  st.num_layers_done = -1;  // left at -1 when the exchange refuses before moving
  ExchangeOutcome out;
  try {
    exchange_->impl->Execute(&st, stream_);
    out.started = true;
    out.layers_done = config_.shape.num_layers;
  } catch (const Error& e) {
    out.status = e.status();
    out.message = e.what();
    out.started = st.num_layers_done >= 0;
    out.layers_done = out.started ? st.num_layers_done : 0;
  } catch (const std::bad_alloc&) {
    out.status = Status::kOutOfMemory;
    out.message = "host allocation failed";
    out.started = st.num_layers_done >= 0;
    out.layers_done = out.started ? st.num_layers_done : 0;
  }
  if (out.started) {
    out.bytes_sent = st.bytes_sent;
    out.bytes_received = st.bytes_received;
  }
  return out;
}

void CudaState::CommitMaps(int32_t first, int32_t count, const PlanBuffers& plan) {
  const size_t E = config_.shape.num_logical_experts, P = config_.shape.num_physical_experts;
  const size_t width = P - E + 1;
  const size_t f = static_cast<size_t>(first), n = static_cast<size_t>(count);
  // Stream order puts these after the exchange of every layer, so a pass
  // enqueued after this call routes with maps that describe its weights.
  EPLB_CUDA_CHECK(cudaMemcpyAsync(d_phy2log_ + f * P, plan.phy2log + f * P, n * P * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, stream_));
  EPLB_CUDA_CHECK(cudaMemcpyAsync(d_log2phy_ + f * E * width, plan.log2phy + f * E * width,
                                  n * E * width * sizeof(int32_t), cudaMemcpyHostToDevice,
                                  stream_));
  EPLB_CUDA_CHECK(cudaMemcpyAsync(d_logcnt_ + f * E, plan.logcnt + f * E, n * E * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, stream_));
  EPLB_CUDA_CHECK(cudaEventRecord(commit_done_, stream_));
  commit_pending_ = true;
}

}  // namespace cuda
}  // namespace eplb
