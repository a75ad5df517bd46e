#include "cuda/exchange.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>

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

size_t RoundUp(size_t v, size_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace

TransferShape ValidateExchangeConfig(const eplbExchangeConfig_t& c, bool for_create) {
  EPLB_CHECK_ARG(c.struct_size == sizeof(eplbExchangeConfig_t),
                 "config->struct_size (%zu) must be sizeof(eplbExchangeConfig_t) (%zu); use "
                 "EPLB_EXCHANGE_CONFIG_INIT",
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
  if (staging_reg_) (void)ncclCommDeregister(comm_, staging_reg_);
  staging_reg_ = nullptr;
  if (staging_reg2_) (void)ncclCommDeregister(comm2_, staging_reg2_);
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

void Exchange::Run(const int32_t* old_p, const int32_t* new_p, int32_t first, int32_t n,
                   eplbExchangeStats_t* stats, cudaStream_t stream) {
  DeviceGuard guard(device_);
  using Clock = std::chrono::steady_clock;
  auto ms_since = [](Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  };
  Profile prof;
  auto t_phase = Clock::now();
  const size_t P = static_cast<size_t>(shape_.num_physical_experts);
  const int32_t N = shape_.num_ranks;

  // 1. Validation and planning (host). Planning runs before the agreement check so that it overlaps
  // the GPU work still in flight (the check waits for it). Any failure here still takes part in the
  // check, with a hash no valid input has, so that no rank is left waiting in the collective.
  struct Chunk {
    int32_t begin = 0, end = 0;  // layers, relative to first
    int32_t slice = 0, num_slices = 1;
    uint64_t slice_bundle = 0;  // 0: whole rows at byte offsets
    size_t bytes = 0;           // this rank's staging
    size_t pack_row0 = 0, num_pack = 0, unpack_row0 = 0, num_unpack = 0;  // in h_rows_
    std::vector<size_t> send_off, send_bytes, recv_off, recv_bytes;       // within the region
    int32_t max_tensors = 0;
    uint64_t max_tensor_bytes = 0;
    bool any_peer = false;
  };
  std::vector<Chunk> chunks;
  eplbExchangeStats_t st = EPLB_EXCHANGE_STATS_INIT;
  size_t row = 0;
  Status local_status = Status::kSuccess;
  std::string local_error;
  try {
    EPLB_CHECK_NOT_NULL(old_p);
    EPLB_CHECK_NOT_NULL(new_p);
    EPLB_CHECK_ARG(first >= 0 && first < num_layers_, "first_layer (%d) must be in [0, %d)", first,
                   num_layers_);
    EPLB_CHECK_ARG(n >= 0 && n <= num_layers_ - first,
                   "num_layers (%d) must be in [0, %d] for first_layer %d", n, num_layers_ - first,
                   first);
    EPLB_CHECK_ARG(stats == nullptr || stats->struct_size == sizeof(eplbExchangeStats_t),
                   "h_stats->struct_size (%zu) must be sizeof(eplbExchangeStats_t) (%zu)",
                   stats ? stats->struct_size : 0, sizeof(eplbExchangeStats_t));
    for (int32_t l = 0; l < n; ++l) {
      EPLB_CHECK_ARG(layers_[static_cast<size_t>(first + l)].registered,
                     "layer %d is not registered (eplbExchangeRegisterLayer)", first + l);
      ValidateTransferLayer(shape_, old_p + l * P, new_p + l * P, first + l);
    }
    // Plans (identical on every rank) and the staging each layer needs.
    // Layers are independent: plan them on a few threads (each layer's plan
    // is the same whichever thread computes it).
    std::vector<LayerTransfer> plans(static_cast<size_t>(n));
    std::vector<size_t> global_need(static_cast<size_t>(n)), my_need(static_cast<size_t>(n));
    ParallelRanges(n, host_threads_, 8, [&](int32_t lo, int32_t hi, int32_t) {
      for (int32_t l = lo; l < hi; ++l) {
        plans[l] = PlanLayerTransfer(shape_, old_p + l * P, new_p + l * P);
        const size_t pb = layers_[static_cast<size_t>(first + l)].padded_bytes;
        for (int32_t r = 0; r < N; ++r) {
          const size_t need = LayerStagingBytes(plans[l][r], pb);
          global_need[l] = std::max(global_need[l], need);
          if (r == rank_) my_need[l] = need;
        }
      }
    });
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
        const RankTransfer& t = plans[l][rank_];
        for (int32_t q = 0; q < N; ++q) {
          send_rows[q] += t.send_rows[q].size();
          recv_rows[q] += t.recv_rows[q].size();
          c.send_bytes[q] += t.send_rows[q].size() * b.padded_bytes;
          c.recv_bytes[q] += t.recv_rows[q].size() * b.padded_bytes;
        }
        local_rows += t.local_rows.size();
        c.max_tensors = std::max(c.max_tensors, b.num_tensors);
        c.max_tensor_bytes = std::max(c.max_tensor_bytes, b.max_tensor_bytes);
        st.rows_sent += t.NumSendRows();
        st.rows_received += t.NumRecvRows();
        st.bytes_sent += t.NumSendRows() * static_cast<int64_t>(b.payload_bytes);
        st.bytes_received += t.NumRecvRows() * static_cast<int64_t>(b.payload_bytes);
        st.slots_received += t.NumRecvSlots();
        st.slots_copied_local += t.NumLocalSlots();
        st.bytes_copied_local += t.NumLocalSlots() * static_cast<int64_t>(b.payload_bytes);
        st.slots_kept += static_cast<int64_t>(t.kept_slots.size());
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
        for (int32_t l = begin; l < end; ++l)
          for (int32_t slot : plans[l][rank_].send_rows[q]) {
            push_row(first + l, slot, cursor[q]);
            cursor[q] += unit(l);
          }
      std::vector<std::vector<size_t>> local_pos(static_cast<size_t>(end - begin));
      for (int32_t l = begin; l < end; ++l)
        for (const auto& lr : plans[l][rank_].local_rows) {
          local_pos[l - begin].push_back(local_at);
          push_row(first + l, lr.src_slot, local_at);
          local_at += unit(l);
        }
      c.num_pack = row - c.pack_row0;
      c.unpack_row0 = row;
      cursor = recv_at;
      for (int32_t q = 0; q < N; ++q)
        for (int32_t l = begin; l < end; ++l)
          for (const auto& rv : plans[l][rank_].recv_rows[q]) {
            for (int32_t d : rv.dst_slots) push_row(first + l, d, cursor[q]);
            cursor[q] += unit(l);
          }
      for (int32_t l = begin; l < end; ++l) {
        const auto& locals = plans[l][rank_].local_rows;
        for (size_t k = 0; k < locals.size(); ++k)
          for (int32_t d : locals[k].dst_slots) push_row(first + l, d, local_pos[l - begin][k]);
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
  } catch (const Error& e) {
    local_status = e.status();
    local_error = e.what();
  }

  // 2. Agreement check: blocks until every rank's hash is known.
  prof.host_plan_ms = ms_since(t_phase);
  t_phase = Clock::now();
  const uint64_t hash =
      local_status == Status::kSuccess ? InputHash(old_p, new_p, first, n) : kPoisonHash;
  const bool agree = AgreementCheck(hash, stream);
  if (local_status != Status::kSuccess) Throw(local_status, "%s", local_error.c_str());
  if (!agree)
    Throw(Status::kMismatch,
          "ranks disagree on the exchange inputs of layers [%d, %d) (shapes, staging budget, "
          "tensor sizes or phy2log differ, or another rank's input was invalid); nothing moved",
          first, first + n);

  prof.host_check_ms = ms_since(t_phase);
  t_phase = Clock::now();
  profile_gpu_ = false;

  // 5. Enqueue. Errors from here on leave the layers of finished chunks moved
  // and the others untouched; stats say which.
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
        if (c.slice == c.num_slices - 1) st.num_layers_done = c.end;
      }
      EPLB_CUDA_CHECK(cudaEventRecord(ev_join_, unpack_stream_));
      EPLB_CUDA_CHECK(cudaEventRecord(ev_t1_, unpack_stream_));
      joined_once_ = true;
      profile_gpu_ = true;
      EPLB_CUDA_CHECK(cudaStreamWaitEvent(stream, ev_join_, 0));
    } else {
      st.num_layers_done = n;
    }
  } catch (...) {
    // Keep the caller's stream ordered after whatever was enqueued.
    if (cudaEventRecord(ev_join_, unpack_stream_) == cudaSuccess) {
      joined_once_ = true;
      (void)cudaStreamWaitEvent(stream, ev_join_, 0);
    }
    if (stats) *stats = st;
    throw;
  }
  prof.host_enqueue_ms = ms_since(t_phase);
  profile_ = prof;
  if (stats) *stats = st;
}

}  // namespace cuda
}  // namespace eplb
