#include "cuda/exchange.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>

#include "capi/api_common.h"
#include "parallel.h"

namespace eplb {
namespace cuda {
namespace {

// Hash a rank contributes when its own inputs are invalid: the others then see
// a mismatch instead of waiting for it in the collective.
constexpr uint64_t kPoisonHash = 0x9e3779b97f4a7c15ull;
// Chunk-completion events, reused round robin (a chunk waits for the oldest
// in flight before reusing its event).
constexpr size_t kChunkEvents = 64;

// Switches to the exchange's device for the duration of a call.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    EPLB_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) EPLB_CUDA_CHECK(cudaSetDevice(device));
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

// The stats this header knows, into the caller's struct (which may be a
// later header's, larger: its struct_size and any later fields are kept).
void WriteStats(eplbExchangeStats_t* out, eplbExchangeStats_t st) {
  if (out == nullptr) return;
  st.struct_size = out->struct_size;
  *out = st;
}

size_t RoundUp(size_t v, size_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace

TransferShape ValidateExchangeConfig(const eplbExchangeConfig_t& c, bool for_create) {
  // A caller built against a later header passes a larger struct (fields
  // are only appended); the fields read here are this header's.
  EPLB_CHECK_ARG(c.struct_size >= sizeof(eplbExchangeConfig_t),
                 "config->struct_size (%zu) must be at least sizeof(eplbExchangeConfig_t) (%zu); "
                 "use EPLB_EXCHANGE_CONFIG_INIT",
                 c.struct_size, sizeof(eplbExchangeConfig_t));
  EPLB_CHECK_ARG(c.num_layers >= 1 && c.num_layers <= EPLB_MAX_LAYERS,
                 "config->num_layers (%d) must be in [1, %d]", c.num_layers, EPLB_MAX_LAYERS);
  EPLB_CHECK_ARG(c.num_ranks >= 1 && c.num_ranks <= EPLB_MAX_RANKS,
                 "config->num_ranks (%d) must be in [1, %d]", c.num_ranks, EPLB_MAX_RANKS);
  EPLB_CHECK_ARG(c.num_physical_experts >= 1 && c.num_physical_experts <= EPLB_MAX_PHYSICAL_EXPERTS,
                 "config->num_physical_experts (%d) must be in [1, %d]", c.num_physical_experts,
                 EPLB_MAX_PHYSICAL_EXPERTS);
  EPLB_CHECK_ARG(c.num_physical_experts % c.num_ranks == 0,
                 "config->num_physical_experts (%d) must be a multiple of config->num_ranks (%d)",
                 c.num_physical_experts, c.num_ranks);
  EPLB_CHECK_ARG(c.rank >= 0 && c.rank < c.num_ranks,
                 "config->rank (%d) must be in [0, num_ranks = %d)", c.rank, c.num_ranks);
  TransferShape s;
  s.num_physical_experts = c.num_physical_experts;
  s.num_ranks = c.num_ranks;
  if (c.h_rank_node != nullptr) {
    s.rank_node.assign(c.h_rank_node, c.h_rank_node + c.num_ranks);
    for (int32_t r = 0; r < c.num_ranks; ++r)
      EPLB_CHECK_ARG(s.rank_node[r] >= 0, "config->h_rank_node[%d] (%d) must be >= 0", r,
                     s.rank_node[r]);
  }
  if (for_create) {
    EPLB_CHECK_ARG(c.staging_bytes > 0,
                   "config->staging_bytes must be > 0 (see "
                   "eplbExchangeStagingQuery)");
    EPLB_CHECK_ARG(c.device >= -1, "config->device (%d) must be a device ordinal or -1", c.device);
  }
  ValidateTransferShape(s);
  return s;
}

size_t ExchangeDeviceBytes(int32_t L, int32_t P, int32_t N, size_t staging_bytes) {
  const size_t rows = static_cast<size_t>(L) * static_cast<size_t>(P + P / N);
  const size_t tables =
      rows * sizeof(kernels::PackRow) +
      static_cast<size_t>(L) * kernels::kPackMaxTensors * sizeof(kernels::PackTensor) +
      2 * sizeof(uint64_t);
  // The staging size comes from the caller's row sizes: refuse a total that
  // would wrap rather than report a small one.
  EPLB_CHECK_ARG(staging_bytes <= SIZE_MAX - tables,
                 "device memory (%zu staging bytes + %zu bytes of tables) overflows size_t",
                 staging_bytes, tables);
  return staging_bytes + tables;
}

Exchange::Exchange(const eplbExchangeConfig_t& c, ncclComm_t comm, const ExchangeTuning& tuning)
    : tuning_(tuning) {
  EPLB_CHECK_ARG(
      tuning.max_copy_blocks >= 0 && tuning.chunk_target_bytes > 0 && tuning.ring_rounds >= 1,
      "bad tuning");
  shape_ = ValidateExchangeConfig(c, true);
  EPLB_CHECK_NOT_NULL(comm);
  int count = 0, user_rank = 0;
  EPLB_NCCL_CHECK(ncclCommCount(comm, &count));
  EPLB_NCCL_CHECK(ncclCommUserRank(comm, &user_rank));
  EPLB_CHECK_ARG(count == c.num_ranks,
                 "config->num_ranks (%d) differs from the communicator's size (%d)", c.num_ranks,
                 count);
  EPLB_CHECK_ARG(user_rank == c.rank, "config->rank (%d) differs from the communicator's rank (%d)",
                 c.rank, user_rank);
  int comm_device = 0;
  EPLB_NCCL_CHECK(ncclCommCuDevice(comm, &comm_device));
  device_ = c.device;
  if (device_ < 0) EPLB_CUDA_CHECK(cudaGetDevice(&device_));
  EPLB_CHECK_ARG(device_ == comm_device,
                 "config->device (%d) differs from the communicator's device (%d)", device_,
                 comm_device);
  if (c.overlap_comm != nullptr) {
    EPLB_CHECK_ARG(c.overlap_comm != comm,
                   "config->overlap_comm must be a second communicator, not `comm` itself");
    int count2 = 0, rank2 = 0, device2 = 0;
    EPLB_NCCL_CHECK(ncclCommCount(c.overlap_comm, &count2));
    EPLB_NCCL_CHECK(ncclCommUserRank(c.overlap_comm, &rank2));
    EPLB_NCCL_CHECK(ncclCommCuDevice(c.overlap_comm, &device2));
    EPLB_CHECK_ARG(count2 == count && rank2 == user_rank && device2 == comm_device,
                   "config->overlap_comm (size %d, rank %d, device %d) must match the "
                   "communicator (size %d, rank %d, device %d)",
                   count2, rank2, device2, count, user_rank, comm_device);
    comm2_ = c.overlap_comm;
  }
  num_layers_ = c.num_layers;
  rank_ = c.rank;
  slots_per_rank_ = c.num_physical_experts / c.num_ranks;
  staging_bytes_ = c.staging_bytes;
  host_threads_ = DefaultHostThreads();
  comm_ = comm;
  layers_.assign(static_cast<size_t>(num_layers_), LayerBundle{});
  row_capacity_ = static_cast<size_t>(num_layers_) *
                  static_cast<size_t>(c.num_physical_experts + slots_per_rank_);

  DeviceGuard guard(device_);
  try {
    if (tuning_.register_staging) {
      void* p = nullptr;
      EPLB_NCCL_CHECK(ncclMemAlloc(&p, staging_bytes_));
      d_staging_ = static_cast<char*>(p);
      staging_from_nccl_ = true;
      EPLB_NCCL_CHECK(ncclCommRegister(comm_, d_staging_, staging_bytes_, &staging_reg_));
      if (comm2_ != nullptr)
        EPLB_NCCL_CHECK(ncclCommRegister(comm2_, d_staging_, staging_bytes_, &staging_reg2_));
    } else {
      EPLB_CUDA_CHECK(cudaMalloc(&d_staging_, staging_bytes_));
    }
    const size_t table = static_cast<size_t>(num_layers_) * kernels::kPackMaxTensors;
    EPLB_CUDA_CHECK(cudaMalloc(&d_tensors_, table * sizeof(kernels::PackTensor)));
    EPLB_CUDA_CHECK(cudaMalloc(&d_rows_, row_capacity_ * sizeof(kernels::PackRow)));
    EPLB_CUDA_CHECK(cudaMalloc(&d_check_, 2 * sizeof(uint64_t)));
    EPLB_CUDA_CHECK(cudaMallocHost(&h_rows_, row_capacity_ * sizeof(kernels::PackRow)));
    EPLB_CUDA_CHECK(cudaMallocHost(&h_check_, 2 * sizeof(uint64_t)));
    // Optionally (tuning) the NCCL stream at the highest priority and the
    // copy streams at the lowest, so that each round's NCCL kernel takes SMs
    // ahead of queued copy blocks.
    int least = 0, greatest = 0;
    EPLB_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    if (!tuning_.stream_priorities) least = greatest = 0;
    EPLB_CUDA_CHECK(cudaStreamCreateWithPriority(&pack_stream_, cudaStreamNonBlocking, least));
    EPLB_CUDA_CHECK(cudaStreamCreateWithPriority(&comm_stream_, cudaStreamNonBlocking, greatest));
    EPLB_CUDA_CHECK(cudaStreamCreateWithPriority(&comm2_stream_, cudaStreamNonBlocking, greatest));
    EPLB_CUDA_CHECK(cudaStreamCreateWithPriority(&unpack_stream_, cudaStreamNonBlocking, least));
    for (cudaEvent_t* e : {&ev_fork_, &ev_upload_, &ev_join_, &ev_packed_, &ev_comm_})
      EPLB_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    EPLB_CUDA_CHECK(cudaEventCreate(&ev_t0_));
    EPLB_CUDA_CHECK(cudaEventCreate(&ev_t1_));
    ev_chunk_done_.assign(kChunkEvents, nullptr);
    for (auto& e : ev_chunk_done_)
      EPLB_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    // On the exchange's own stream: the legacy default stream would wait for
    // (and be waited on by) the caller's work.
    EPLB_CUDA_CHECK(
        cudaMemsetAsync(d_tensors_, 0, table * sizeof(kernels::PackTensor), pack_stream_));
    EPLB_CUDA_CHECK(cudaStreamSynchronize(pack_stream_));
  } catch (...) {
    Release();
    throw;
  }
}

Exchange::~Exchange() {
  try {
    DeviceGuard guard(device_);
    Release();
  } catch (...) {
    Release();
  }
}

void Exchange::Release() noexcept {
  for (cudaStream_t s : {pack_stream_, comm_stream_, comm2_stream_, unpack_stream_})
    if (s) (void)cudaStreamSynchronize(s);
  for (cudaEvent_t e : {ev_fork_, ev_upload_, ev_join_, ev_packed_, ev_comm_})
    if (e) (void)cudaEventDestroy(e);
  for (cudaEvent_t e : ev_chunk_done_)
    if (e) (void)cudaEventDestroy(e);
  ev_chunk_done_.clear();
  ev_fork_ = ev_upload_ = ev_join_ = ev_packed_ = ev_comm_ = nullptr;
  for (cudaEvent_t e : {ev_t0_, ev_t1_})
    if (e) (void)cudaEventDestroy(e);
  ev_t0_ = ev_t1_ = nullptr;
  for (cudaStream_t s : {pack_stream_, comm_stream_, comm2_stream_, unpack_stream_})
    if (s) (void)cudaStreamDestroy(s);
  pack_stream_ = comm_stream_ = comm2_stream_ = unpack_stream_ = nullptr;
  // A broken exchange's communicators are (to be) aborted: deregistering
  // from an aborted one would use freed memory, and the abort or destroy of
  // a communicator releases its registrations.
  if (staging_reg_ && !broken_) (void)ncclCommDeregister(comm_, staging_reg_);
  staging_reg_ = nullptr;
  if (staging_reg2_ && !broken_) (void)ncclCommDeregister(comm2_, staging_reg2_);
  staging_reg2_ = nullptr;
  if (d_staging_) {
    if (staging_from_nccl_)
      (void)ncclMemFree(d_staging_);
    else
      (void)cudaFree(d_staging_);
  }
  if (d_tensors_) (void)cudaFree(d_tensors_);
  if (d_rows_) (void)cudaFree(d_rows_);
  if (d_check_) (void)cudaFree(d_check_);
  if (h_rows_) (void)cudaFreeHost(h_rows_);
  if (h_check_) (void)cudaFreeHost(h_check_);
  d_staging_ = nullptr;
  d_tensors_ = nullptr;
  d_rows_ = nullptr;
  d_check_ = nullptr;
  h_rows_ = nullptr;
  h_check_ = nullptr;
}

void Exchange::Warmup() {
  const int32_t N = shape_.num_ranks;
  if (N == 1) return;
  DeviceGuard guard(device_);
  const size_t per_peer =
      std::min<size_t>(size_t{1} << 20, staging_bytes_ / (2 * static_cast<size_t>(N))) /
      kExchangeRowAlign * kExchangeRowAlign;
  if (per_peer == 0) return;  // the same decision on every rank (same budget)
  WaitIdle();
  for (int k = 0; k < 2; ++k) {
    ncclComm_t comm = k == 0 ? comm_ : comm2_;
    cudaStream_t cs = k == 0 ? comm_stream_ : comm2_stream_;
    if (comm == nullptr) continue;
    EPLB_NCCL_CHECK(ncclGroupStart());
    ncclResult_t res = ncclSuccess;
    for (int32_t q = 0; q < N && res == ncclSuccess; ++q) {
      if (q == rank_) continue;
      res =
          ncclSend(d_staging_ + static_cast<size_t>(q) * per_peer, per_peer, ncclInt8, q, comm, cs);
      if (res == ncclSuccess)
        res = ncclRecv(d_staging_ + static_cast<size_t>(N + q) * per_peer, per_peer, ncclInt8, q,
                       comm, cs);
    }
    const ncclResult_t end_res = ncclGroupEnd();
    EPLB_NCCL_CHECK(res);
    EPLB_NCCL_CHECK(end_res);
  }
  WaitIdle();
}

void Exchange::WaitIdle() {
  for (cudaStream_t s : {pack_stream_, comm_stream_, comm2_stream_, unpack_stream_})
    EPLB_CUDA_CHECK(cudaStreamSynchronize(s));
}

void Exchange::RegisterLayer(int32_t layer, const eplbTensorDesc_t* tensors, int32_t num_tensors,
                             int32_t num_local_slots) {
  EPLB_CHECK_ARG(layer >= 0 && layer < num_layers_, "layer (%d) must be in [0, num_layers = %d)",
                 layer, num_layers_);
  EPLB_CHECK_NOT_NULL(tensors);
  EPLB_CHECK_ARG(num_tensors >= 1 && num_tensors <= EPLB_EXCHANGE_MAX_TENSORS,
                 "num_tensors (%d) must be in [1, %d]", num_tensors, EPLB_EXCHANGE_MAX_TENSORS);
  EPLB_CHECK_ARG(num_local_slots == slots_per_rank_,
                 "num_local_slots (%d) must be num_physical_experts / num_ranks (%d)",
                 num_local_slots, slots_per_rank_);
  LayerBundle b;
  b.registered = true;
  b.num_tensors = num_tensors;
  b.tensors.assign(kernels::kPackMaxTensors, kernels::PackTensor{nullptr, 0, 0, 0});
  std::vector<size_t> sizes(static_cast<size_t>(num_tensors));
  size_t offset = 0;
  for (int32_t t = 0; t < num_tensors; ++t) {
    const eplbTensorDesc_t& d = tensors[t];
    EPLB_CHECK_ARG(d.d_slots != nullptr, "h_tensors[%d].d_slots is NULL", t);
    EPLB_CHECK_ARG(d.bytes_per_slot > 0, "h_tensors[%d].bytes_per_slot must be > 0", t);
    EPLB_CHECK_ARG(d.pitch_bytes >= d.bytes_per_slot,
                   "h_tensors[%d].pitch_bytes (%zu) must be >= bytes_per_slot (%zu)", t,
                   d.pitch_bytes, d.bytes_per_slot);
    // The last slot's end, d_slots + (slots - 1) * pitch + bytes, must be an
    // address (the kernels compute it in 64 bits).
    const uint64_t base = reinterpret_cast<uintptr_t>(d.d_slots);
    const uint64_t rows = static_cast<uint64_t>(num_local_slots - 1);
    EPLB_CHECK_ARG(
        d.bytes_per_slot <= UINT64_MAX - base &&
            (rows == 0 || d.pitch_bytes <= (UINT64_MAX - base - d.bytes_per_slot) / rows),
        "h_tensors[%d]: d_slots + (num_local_slots - 1) * pitch_bytes (%zu) + "
        "bytes_per_slot passes the end of the address space",
        t, d.pitch_bytes);
    sizes[static_cast<size_t>(t)] = d.bytes_per_slot;
    b.tensors[static_cast<size_t>(t)] =
        kernels::PackTensor{static_cast<char*>(d.d_slots), d.bytes_per_slot, d.pitch_bytes, offset};
    offset += RoundUp(d.bytes_per_slot, kExchangeRowAlign);
    b.payload_bytes += d.bytes_per_slot;
    b.max_tensor_bytes = std::max<uint64_t>(b.max_tensor_bytes, d.bytes_per_slot);
  }
  b.padded_bytes = PaddedBundleBytes(sizes.data(), num_tensors);
  EPLB_ASSERT(b.padded_bytes == offset);
  DeviceGuard guard(device_);
  WaitIdle();
  EPLB_CUDA_CHECK(
      cudaMemcpyAsync(d_tensors_ + static_cast<size_t>(layer) * kernels::kPackMaxTensors,
                      b.tensors.data(), kernels::kPackMaxTensors * sizeof(kernels::PackTensor),
                      cudaMemcpyHostToDevice, pack_stream_));
  EPLB_CUDA_CHECK(cudaStreamSynchronize(pack_stream_));
  layers_[static_cast<size_t>(layer)] = std::move(b);
}

uint64_t Exchange::InputHash(const int32_t* old_p, const int32_t* new_p, int32_t first,
                             int32_t n) const {
  Hasher h;
  h.Value(uint32_t{0x65706c63});  // format tag: bump when the hashed fields change
  h.Value(shape_.num_ranks);
  h.Value(shape_.num_physical_experts);
  h.Value(num_layers_);
  h.Value(static_cast<uint64_t>(staging_bytes_));
  h.Value(first);
  h.Value(n);
  h.Value(static_cast<int32_t>(comm2_ != nullptr));  // both or neither: the rounds' parity
  for (int32_t r = 0; r < shape_.num_ranks; ++r)
    h.Value(shape_.rank_node.empty() ? 0 : shape_.rank_node[static_cast<size_t>(r)]);
  const size_t P = static_cast<size_t>(shape_.num_physical_experts);
  for (int32_t l = 0; l < n; ++l) {
    const LayerBundle& b = layers_[static_cast<size_t>(first + l)];
    h.Value(b.num_tensors);
    for (int32_t t = 0; t < b.num_tensors; ++t) h.Value(b.tensors[static_cast<size_t>(t)].bytes);
  }
  h.Bytes(old_p, static_cast<size_t>(n) * P * sizeof(int32_t));
  h.Bytes(new_p, static_cast<size_t>(n) * P * sizeof(int32_t));
  return h.digest();
}

bool Exchange::AgreementCheck(uint64_t hash, cudaStream_t stream) {
  h_check_[0] = hash;
  h_check_[1] = ~hash;
  EPLB_CUDA_CHECK(
      cudaMemcpyAsync(d_check_, h_check_, 2 * sizeof(uint64_t), cudaMemcpyHostToDevice, stream));
  EPLB_NCCL_CHECK(ncclAllReduce(d_check_, d_check_, 2, ncclUint64, ncclMax, comm_, stream));
  EPLB_CUDA_CHECK(
      cudaMemcpyAsync(h_check_, d_check_, 2 * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream));
  EPLB_CUDA_CHECK(cudaStreamSynchronize(stream));
  // max(h) == h and max(~h) == ~h on a rank only when min(h) == max(h).
  return h_check_[0] == hash && h_check_[1] == ~hash;
}

Exchange::Profile Exchange::LastProfile() {
  Profile p = profile_;
  if (profile_gpu_) {
    DeviceGuard guard(device_);
    EPLB_CUDA_CHECK(cudaEventSynchronize(ev_t1_));
    EPLB_CUDA_CHECK(cudaEventElapsedTime(&p.gpu_ms, ev_t0_, ev_t1_));
  }
  return p;
}

namespace {
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}
}  // namespace

uint64_t Exchange::Prepare(const int32_t* old_p, const int32_t* new_p, int32_t first, int32_t n) {
  BeginPrepare(old_p, new_p, first, n);
  // Layers are independent: validate and plan them on a few threads (each
  // layer's plan is the same whichever thread computes it; the error
  // reported is the lowest invalid layer's, as in a serial loop).
  ParallelRanges(n, host_threads_, 8,
                 [&](int32_t lo, int32_t hi, int32_t) { PrepareLayers(lo, hi); });
  return FinishPrepare();
}

void Exchange::BeginPrepare(const int32_t* old_p, const int32_t* new_p, int32_t first, int32_t n) {
  prepared_ = Prepared();  // nothing prepared until FinishPrepare succeeds
  prep_ = Preparing();
  EPLB_CHECK_NOT_NULL(old_p);
  EPLB_CHECK_NOT_NULL(new_p);
  EPLB_CHECK_ARG(first >= 0 && first < num_layers_, "first_layer (%d) must be in [0, %d)", first,
                 num_layers_);
  EPLB_CHECK_ARG(n >= 0 && n <= num_layers_ - first,
                 "num_layers (%d) must be in [0, %d] for first_layer %d", n, num_layers_ - first,
                 first);
  prep_.start = Clock::now();
  prep_.old_p = old_p;
  prep_.new_p = new_p;
  prep_.first = first;
  prep_.n = n;
  if (plan_scratch_.size() < static_cast<size_t>(n)) plan_scratch_.resize(static_cast<size_t>(n));
  prep_.global_need.assign(static_cast<size_t>(n), 0);
  prep_.my_need.assign(static_cast<size_t>(n), 0);
  prep_.begun = true;
}

void Exchange::PrepareLayers(int32_t lo, int32_t hi) {
  EPLB_ASSERT(prep_.begun && lo >= 0 && hi <= prep_.n);
  // Validation, then this rank's part of the layer's plan in flat form
  // (PlanRankTransfer), in per-layer objects kept across calls: in steady
  // state planning allocates nothing (the vector form's allocations, on
  // several threads of several ranks of a process, cost more than the
  // planning itself); and the staging the layer needs on every rank.
  const size_t P = static_cast<size_t>(shape_.num_physical_experts);
  const int32_t N = shape_.num_ranks, first = prep_.first;
  const int32_t* old_p = prep_.old_p;
  const int32_t* new_p = prep_.new_p;
  for (int32_t l = lo; l < hi; ++l) {
    EPLB_CHECK_ARG(layers_[static_cast<size_t>(first + l)].registered,
                   "layer %d is not registered (eplbExchangeRegisterLayer)", first + l);
    ValidateTransferLayer(shape_, old_p + l * P, new_p + l * P, first + l);
    RankTransferFlat& plan = plan_scratch_[static_cast<size_t>(l)];
    PlanRankTransfer(shape_, old_p + l * P, new_p + l * P, rank_, &plan);
    const size_t pb = layers_[static_cast<size_t>(first + l)].padded_bytes;
    size_t global = 0;
    for (int32_t r = 0; r < N; ++r) {
      const size_t need = StagingRowsBytes(plan.staging_rows[r], pb);
      global = std::max(global, need);
      if (r == rank_) prep_.my_need[static_cast<size_t>(l)] = need;
    }
    prep_.global_need[static_cast<size_t>(l)] = global;
  }
}

uint64_t Exchange::FinishPrepare() {
  if (!prep_.begun) Throw(Status::kInvalidUsage, "FinishPrepare without BeginPrepare");
  DeviceGuard guard(device_);
  const auto t_finish = Clock::now();
  const size_t P = static_cast<size_t>(shape_.num_physical_experts);
  const int32_t N = shape_.num_ranks;
  const int32_t first = prep_.first, n = prep_.n;
  const int32_t* old_p = prep_.old_p;
  const int32_t* new_p = prep_.new_p;
  prep_.begun = false;
  std::vector<RankTransferFlat>& plans = plan_scratch_;
  const std::vector<size_t>& global_need = prep_.global_need;
  const std::vector<size_t>& my_need = prep_.my_need;
  std::vector<Chunk> chunks;
  eplbExchangeStats_t st = EPLB_EXCHANGE_STATS_INIT;
  size_t row = 0;
  (void)P;
  {
    for (int32_t l = 0; l < n; ++l) {
      if (global_need[l] > staging_bytes_)
        Throw(Status::kInvalidUsage,
              "config->staging_bytes (%zu) is below the %zu bytes layer %d needs on some rank "
              "(eplbExchangeStagingQuery gives the minimum); nothing moved",
              staging_bytes_, global_need[l], first + l);
    }
    // Chunks: consecutive small layers share a round; a layer larger than the
    // target is moved in column slices (PackSliceRange), each a round of its
    // own, so that staging holds the three rounds in flight (packing, on the
    // wire, unpacking) and they overlap.
    const size_t target = std::max<size_t>(
        kExchangeRowAlign, std::min(staging_bytes_ / static_cast<size_t>(tuning_.ring_rounds),
                                    tuning_.chunk_target_bytes));
    const std::vector<int32_t> layer_chunks = ChunkLayers(global_need, target);

    // The previous Run's descriptor upload must be done before h_rows_ changes.
    if (joined_once_) EPLB_CUDA_CHECK(cudaEventSynchronize(ev_upload_));
    auto push_row = [&](int32_t layer, int32_t slot, uint64_t offset) {
      EPLB_ASSERT(row < row_capacity_);
      h_rows_[row++] = kernels::PackRow{layer, slot, offset};
    };
    int32_t begin = 0;
    for (int32_t end : layer_chunks) {
      // Slices for a lone layer above the target: the fewest whose largest
      // round (max over ranks) fits the target; never more than the row bytes
      // allow, and whole rows when nothing smaller fits.
      int32_t num_slices = 1;
      std::vector<uint64_t> slice_bundle(1, 0);
      if (end - begin == 1 && global_need[begin] > target) {
        const LayerBundle& b = layers_[static_cast<size_t>(first + begin)];
        const size_t rows = global_need[begin] / b.padded_bytes;
        auto bundle_of = [&](int32_t k, int32_t K) {
          uint64_t total = 0;
          for (int32_t t = 0; t < b.num_tensors; ++t) {
            uint64_t lo, hi;
            kernels::PackSliceRange(b.tensors[t].bytes, k, K, &lo, &hi);
            total += kernels::PackRoundUp16(hi - lo);
          }
          return total;
        };
        const int32_t max_slices = static_cast<int32_t>(
            std::min<uint64_t>(1024, std::max<uint64_t>(1, b.max_tensor_bytes / 4096)));
        for (int32_t K = static_cast<int32_t>(
                 std::min<size_t>(max_slices, (global_need[begin] + target - 1) / target));
             K >= 2 && K <= max_slices; ++K) {
          if (rows * bundle_of(0, K) <= target) {
            num_slices = K;
            break;
          }
        }
        if (num_slices > 1) {
          slice_bundle.resize(static_cast<size_t>(num_slices));
          for (int32_t k = 0; k < num_slices; ++k) slice_bundle[k] = bundle_of(k, num_slices);
        }
      }
      const bool sliced = num_slices > 1;

      Chunk c;
      c.begin = begin;
      c.end = end;
      c.send_bytes.assign(N, 0);
      c.recv_bytes.assign(N, 0);
      std::vector<size_t> send_rows(N, 0), recv_rows(N, 0);
      size_t local_rows = 0;
      for (int32_t l = begin; l < end; ++l) {
        const LayerBundle& b = layers_[static_cast<size_t>(first + l)];
        const RankTransferFlat& t = plans[l];
        for (int32_t q = 0; q < N; ++q) {
          const size_t ns = static_cast<size_t>(t.send_begin[q + 1] - t.send_begin[q]);
          const size_t nr = static_cast<size_t>(t.recv_begin[q + 1] - t.recv_begin[q]);
          send_rows[q] += ns;
          recv_rows[q] += nr;
          c.send_bytes[q] += ns * b.padded_bytes;
          c.recv_bytes[q] += nr * b.padded_bytes;
        }
        local_rows += static_cast<size_t>(t.NumLocalRows());
        c.max_tensors = std::max(c.max_tensors, b.num_tensors);
        c.max_tensor_bytes = std::max(c.max_tensor_bytes, b.max_tensor_bytes);
        const int64_t sent_rows = static_cast<int64_t>(t.send_slot.size());
        const int64_t recv_rows_l = t.NumRecvRows();
        const int64_t local_slots = static_cast<int64_t>(t.local_dst.size());
        st.rows_sent += sent_rows;
        st.rows_received += recv_rows_l;
        st.bytes_sent += sent_rows * static_cast<int64_t>(b.payload_bytes);
        st.bytes_received += recv_rows_l * static_cast<int64_t>(b.payload_bytes);
        st.slots_received += static_cast<int64_t>(t.recv_dst.size());
        st.slots_copied_local += local_slots;
        st.bytes_copied_local += local_slots * static_cast<int64_t>(b.payload_bytes);
        st.slots_kept += t.kept;
      }
      // Region layout: [sends to peer 0..N-1][receives from 0..N-1][local
      // sources]; whole chunks address rows in bytes, sliced ones by index.
      std::vector<size_t> send_at(N), recv_at(N);  // bytes, or row indices when sliced
      size_t at = 0;
      for (int32_t q = 0; q < N; ++q) {
        send_at[q] = at;
        at += sliced ? send_rows[q] : c.send_bytes[q];
      }
      for (int32_t q = 0; q < N; ++q) {
        recv_at[q] = at;
        at += sliced ? recv_rows[q] : c.recv_bytes[q];
      }
      size_t local_at = at;
      const size_t total_units = at + (sliced ? local_rows : 0);
      auto unit = [&](int32_t l) {
        return sliced ? size_t{1} : layers_[static_cast<size_t>(first + l)].padded_bytes;
      };
      // Pack rows: sends per peer (layer order, then the plan's order), then
      // the local sources; unpack rows: every destination of every received
      // and local row.
      c.pack_row0 = row;
      std::vector<size_t> cursor = send_at;
      for (int32_t q = 0; q < N; ++q)
        for (int32_t l = begin; l < end; ++l) {
          const RankTransferFlat& t = plans[l];
          for (int32_t j = t.send_begin[q]; j < t.send_begin[q + 1]; ++j) {
            push_row(first + l, t.send_slot[static_cast<size_t>(j)], cursor[q]);
            cursor[q] += unit(l);
          }
        }
      // Each layer's local sources sit consecutively from local_first[l].
      std::vector<size_t> local_first(static_cast<size_t>(end - begin));
      for (int32_t l = begin; l < end; ++l) {
        local_first[static_cast<size_t>(l - begin)] = local_at;
        for (int32_t src : plans[l].local_src) {
          push_row(first + l, src, local_at);
          local_at += unit(l);
        }
      }
      c.num_pack = row - c.pack_row0;
      c.unpack_row0 = row;
      cursor = recv_at;
      for (int32_t q = 0; q < N; ++q)
        for (int32_t l = begin; l < end; ++l) {
          const RankTransferFlat& t = plans[l];
          for (int32_t k = t.recv_begin[q]; k < t.recv_begin[q + 1]; ++k) {
            for (int32_t j = t.recv_dst_begin[k]; j < t.recv_dst_begin[k + 1]; ++j)
              push_row(first + l, t.recv_dst[static_cast<size_t>(j)], cursor[q]);
            cursor[q] += unit(l);
          }
        }
      for (int32_t l = begin; l < end; ++l) {
        const RankTransferFlat& t = plans[l];
        size_t at_k = local_first[static_cast<size_t>(l - begin)];
        for (int32_t k = 0; k < t.NumLocalRows(); ++k) {
          for (int32_t j = t.local_dst_begin[k]; j < t.local_dst_begin[k + 1]; ++j)
            push_row(first + l, t.local_dst[static_cast<size_t>(j)], at_k);
          at_k += unit(l);
        }
      }
      c.num_unpack = row - c.unpack_row0;
      if (!sliced) {
        size_t expect = 0;
        for (int32_t l = begin; l < end; ++l) expect += my_need[l];
        EPLB_ASSERT(local_at == expect);
        c.bytes = local_at;
        c.send_off = send_at;
        c.recv_off = recv_at;
        for (int32_t q = 0; q < N; ++q)
          c.any_peer = c.any_peer || c.send_bytes[q] || c.recv_bytes[q];
        chunks.push_back(std::move(c));
      } else {
        EPLB_ASSERT(local_at == total_units);
        const LayerBundle& b = layers_[static_cast<size_t>(first + begin)];
        for (int32_t k = 0; k < num_slices; ++k) {
          Chunk s = c;
          s.slice = k;
          s.num_slices = num_slices;
          s.slice_bundle = slice_bundle[k];
          s.bytes = total_units * slice_bundle[k];
          s.send_off.assign(N, 0);
          s.recv_off.assign(N, 0);
          s.max_tensor_bytes = 0;
          for (int32_t t = 0; t < b.num_tensors; ++t) {
            uint64_t lo, hi;
            kernels::PackSliceRange(b.tensors[t].bytes, k, num_slices, &lo, &hi);
            s.max_tensor_bytes = std::max(s.max_tensor_bytes, hi - lo);
          }
          for (int32_t q = 0; q < N; ++q) {
            s.send_off[q] = send_at[q] * slice_bundle[k];
            s.send_bytes[q] = send_rows[q] * slice_bundle[k];
            s.recv_off[q] = recv_at[q] * slice_bundle[k];
            s.recv_bytes[q] = recv_rows[q] * slice_bundle[k];
            s.any_peer = s.any_peer || s.send_bytes[q] || s.recv_bytes[q];
          }
          chunks.push_back(std::move(s));
        }
      }
      begin = end;
    }
  }
  prepared_.chunks = std::move(chunks);
  prepared_.rows = row;
  prepared_.stats = st;
  prepared_.first = first;
  prepared_.num_layers = n;
  prepared_.hash = InputHash(old_p, new_p, first, n);
  prepared_.finish_ms = MsSince(t_finish);
  prepared_.plan_ms = MsSince(prep_.start);
  prepared_.valid = true;
  return prepared_.hash;
}

void Exchange::Run(const int32_t* old_p, const int32_t* new_p, int32_t first, int32_t n,
                   eplbExchangeStats_t* stats, cudaStream_t stream) {
  // 1. Validation and planning (host). Planning runs before the agreement
  // check so that it overlaps the GPU work still in flight (the check waits
  // for it). Any failure here still takes part in the check, with a hash no
  // valid input has, so that no rank is left waiting in the collective.
  Status local_status = Status::kSuccess;
  std::string local_error;
  uint64_t hash = kPoisonHash;
  try {
    EPLB_CHECK_ARG(stats == nullptr || stats->struct_size >= sizeof(eplbExchangeStats_t),
                   "h_stats->struct_size (%zu) must be at least sizeof(eplbExchangeStats_t) (%zu)",
                   stats ? stats->struct_size : 0, sizeof(eplbExchangeStats_t));
    hash = Prepare(old_p, new_p, first, n);
  } catch (const Error& e) {
    prepared_ = Prepared();
    local_status = e.status();
    local_error = e.what();
  }
  // 2. Agreement check: blocks until every rank's hash is known.
  DeviceGuard guard(device_);
  const auto t_check = Clock::now();
  bool agree = false;
  try {
    agree = AgreementCheck(hash, stream);
  } catch (...) {
    broken_ = true;
    throw;
  }
  if (local_status != Status::kSuccess) Throw(local_status, "%s", local_error.c_str());
  if (!agree) {
    prepared_ = Prepared();
    Throw(Status::kMismatch,
          "ranks disagree on the exchange inputs of layers [%d, %d) (shapes, staging budget, "
          "tensor sizes or phy2log differ, or another rank's input was invalid); nothing moved",
          first, first + n);
  }
  const double check_ms = MsSince(t_check);
  Execute(stats, stream);
  profile_.host_check_ms = check_ms;
}

void Exchange::OnEnqueueFailure(eplbExchangeStats_t* stats, const eplbExchangeStats_t& st,
                                cudaStream_t stream) noexcept {
  broken_ = true;
  // Keep the caller's stream ordered after whatever was enqueued (maps
  // committed on it after this call must not land before these weights);
  // where even that fails, wait for the unpacks here.
  bool joined = false;
  if (cudaEventRecord(ev_join_, unpack_stream_) == cudaSuccess) {
    joined_once_ = true;
    joined = cudaStreamWaitEvent(stream, ev_join_, 0) == cudaSuccess;
  }
  if (!joined) (void)cudaStreamSynchronize(unpack_stream_);
  WriteStats(stats, st);
}

void Exchange::Execute(eplbExchangeStats_t* stats, cudaStream_t stream) {
  if (!prepared_.valid)
    Throw(Status::kInvalidUsage, "no exchange prepared (or it was already executed)");
  const auto t_enqueue = Clock::now();
  const Prepared prep = std::move(prepared_);
  prepared_ = Prepared();
  const std::vector<Chunk>& chunks = prep.chunks;
  const size_t row = prep.rows;
  eplbExchangeStats_t st = prep.stats;
  // Past the check every error writes the stats (num_layers_done >= 0: the
  // caller knows the exchange had begun), one switching devices included.
  std::optional<DeviceGuard> guard;
  try {
    guard.emplace(device_);
  } catch (...) {
    WriteStats(stats, st);
    throw;
  }
  const int32_t N = shape_.num_ranks;
  const int32_t n = prep.num_layers;
  Profile prof;
  prof.host_plan_ms = prep.plan_ms;
  prof.host_finish_ms = prep.finish_ms;
  profile_gpu_ = false;

  // Enqueue. Errors from here on leave the layers of finished chunks moved
  // and the others untouched (but for a layer moving in column slices whose
  // first slices are enqueued: torn_layer, named in the error); stats say
  // which.
  int32_t torn_layer = -1;
  try {
    if (row > 0) {
      EPLB_CUDA_CHECK(cudaEventRecord(ev_fork_, stream));
      EPLB_CUDA_CHECK(cudaStreamWaitEvent(pack_stream_, ev_fork_, 0));
      // A Run on another caller stream must not reuse staging still in use.
      if (joined_once_) EPLB_CUDA_CHECK(cudaStreamWaitEvent(pack_stream_, ev_join_, 0));
      EPLB_CUDA_CHECK(cudaMemcpyAsync(d_rows_, h_rows_, row * sizeof(kernels::PackRow),
                                      cudaMemcpyHostToDevice, pack_stream_));
      EPLB_CUDA_CHECK(cudaEventRecord(ev_upload_, pack_stream_));
      EPLB_CUDA_CHECK(cudaEventRecord(ev_t0_, pack_stream_));
      struct InFlight {
        size_t begin, end;
        cudaEvent_t done;
      };
      std::deque<InFlight> in_flight;
      size_t head = 0, next_event = 0;
      for (size_t ci = 0; ci < chunks.size(); ++ci) {
        const Chunk& c = chunks[ci];
        if (c.bytes > 0) {
          if (head + c.bytes > staging_bytes_) head = 0;
          const size_t rb = head, re = head + c.bytes;
          // Wait for the latest earlier chunk whose staging overlaps (chunks
          // finish in order, so the ones before it are done too), and for
          // the oldest one when its event is about to be reused.
          int64_t last = in_flight.size() == ev_chunk_done_.size() ? 0 : -1;
          for (size_t k = 0; k < in_flight.size(); ++k)
            if (in_flight[k].begin < re && rb < in_flight[k].end) last = static_cast<int64_t>(k);
          if (last >= 0) {
            EPLB_CUDA_CHECK(cudaStreamWaitEvent(pack_stream_, in_flight[last].done, 0));
            in_flight.erase(in_flight.begin(), in_flight.begin() + last + 1);
          }
          char* region = d_staging_ + rb;
          EPLB_CUDA_CHECK(kernels::LaunchPackRows(
              d_tensors_, d_rows_ + c.pack_row0, static_cast<int32_t>(c.num_pack), c.max_tensors,
              c.max_tensor_bytes, region, kernels::PackDirection::kSlotsToStaging, c.slice,
              c.num_slices, c.slice_bundle, tuning_.max_copy_blocks, pack_stream_));
          EPLB_CUDA_CHECK(cudaEventRecord(ev_packed_, pack_stream_));
          if (c.any_peer) {
            // Odd chunks on the second communicator (when there is one): the
            // chunk index, the same on every rank, not this rank's count of
            // rounds (a rank idle in a chunk would shift its parity).
            const bool second = comm2_ != nullptr && (ci & 1) != 0;
            ncclComm_t comm = second ? comm2_ : comm_;
            cudaStream_t cs = second ? comm2_stream_ : comm_stream_;
            EPLB_CUDA_CHECK(cudaStreamWaitEvent(cs, ev_packed_, 0));
            EPLB_NCCL_CHECK(ncclGroupStart());
            ncclResult_t res = ncclSuccess;
            for (int32_t q = 0; q < N && res == ncclSuccess; ++q) {
              if (c.send_bytes[q] > 0)
                res = ncclSend(region + c.send_off[q], c.send_bytes[q], ncclInt8, q, comm, cs);
              if (res == ncclSuccess && c.recv_bytes[q] > 0)
                res = ncclRecv(region + c.recv_off[q], c.recv_bytes[q], ncclInt8, q, comm, cs);
            }
            ncclResult_t end_res = ncclGroupEnd();
            EPLB_NCCL_CHECK(res);
            EPLB_NCCL_CHECK(end_res);
            EPLB_CUDA_CHECK(cudaEventRecord(ev_comm_, cs));
            EPLB_CUDA_CHECK(cudaStreamWaitEvent(unpack_stream_, ev_comm_, 0));
            st.num_chunks += 1;
          } else {
            EPLB_CUDA_CHECK(cudaStreamWaitEvent(unpack_stream_, ev_packed_, 0));
          }
          if (c.num_slices > 1) torn_layer = c.begin;  // its slots are written from here on
          EPLB_CUDA_CHECK(kernels::LaunchPackRows(
              d_tensors_, d_rows_ + c.unpack_row0, static_cast<int32_t>(c.num_unpack),
              c.max_tensors, c.max_tensor_bytes, region, kernels::PackDirection::kStagingToSlots,
              c.slice, c.num_slices, c.slice_bundle, tuning_.max_copy_blocks, unpack_stream_));
          cudaEvent_t done = ev_chunk_done_[next_event];
          next_event = (next_event + 1) % ev_chunk_done_.size();
          EPLB_CUDA_CHECK(cudaEventRecord(done, unpack_stream_));
          in_flight.push_back(InFlight{rb, re, done});
          head = re;
        }
        if (c.slice == c.num_slices - 1) {
          st.num_layers_done = c.end;
          torn_layer = -1;
        }
      }
      EPLB_CUDA_CHECK(cudaEventRecord(ev_join_, unpack_stream_));
      EPLB_CUDA_CHECK(cudaEventRecord(ev_t1_, unpack_stream_));
      joined_once_ = true;
      profile_gpu_ = true;
      EPLB_CUDA_CHECK(cudaStreamWaitEvent(stream, ev_join_, 0));
    } else {
      st.num_layers_done = n;
    }
  } catch (const Error& e) {
    OnEnqueueFailure(stats, st, stream);
    if (torn_layer < 0) throw;
    Throw(e.status(),
          "%s; layer %d was moving in column slices and only its first ones were enqueued: its "
          "weights are partly new, partly old",
          e.what(), prep.first + torn_layer);
  } catch (...) {
    OnEnqueueFailure(stats, st, stream);
    throw;
  }
  prof.host_enqueue_ms = MsSince(t_enqueue);
  profile_ = prof;
  WriteStats(stats, st);
}

}  // namespace cuda
}  // namespace eplb
