// Orchestration of the packed expert-weight exchange (stage 6 of DESIGN.md):
// executes the transfer plans of host/transfer_plan.h with pack/unpack
// kernels (kernels/pack.cuh), CUDA streams and events, and one
// ncclSend/ncclRecv per peer per chunk of layers. The C API
// (host/capi/exchange_api.cc) is a thin shim over this class.
//
// Streams: work forks from the caller's stream into internal streams (pack,
// comm, unpack, and comm2 for the odd chunks when the caller gave a second
// communicator) and joins back, so that chunk c+1 is packed while chunk c is
// on the wire and chunk c-1 is unpacked; staging is a ring, and a chunk waits
// only for the earlier chunks whose staging bytes it reuses.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eplb/eplb.h"
#include "kernels/pack.cuh"
#include "transfer_plan.h"

namespace eplb {
namespace cuda {

// Checks an eplbExchangeConfig_t (host only, no GPU): struct_size, L, P, N,
// rank, h_rank_node; staging_bytes and device only when `for_create`.
// Returns the transfer shape. Throws kInvalidArgument naming the field.
TransferShape ValidateExchangeConfig(const eplbExchangeConfig_t& config, bool for_create);

// Device bytes Create allocates for a config (host only): staging plus the
// row-descriptor buffer, the tensor table and the agreement-check word.
size_t ExchangeDeviceBytes(int32_t num_layers, int32_t num_physical_experts, int32_t num_ranks,
                           size_t staging_bytes);

// Internal knobs (not in the C API; the benchmark compares settings).
struct ExchangeTuning {
  // Blocks per pack/unpack launch (0 = as many as the rows need). A cap
  // leaves SMs and memory bandwidth to the NCCL kernels running beside the
  // copies of the neighbouring chunks (32 measured best on H100, 2 and 4
  // GPUs, beside 16 and 64; on H200, 64 beat 32 on 2 GPUs in three runs,
  // 0.866-0.872 vs 0.853-0.856 of raw NCCL, and matched or beat it on 4,
  // 0.809-0.835 vs 0.808-0.811).
  int32_t max_copy_blocks = 64;
  // Staging a round aims for, capped at a share of the budget (below) so
  // that the ring holds the rounds in flight. Large enough that an NCCL group costs little
  // per byte, small enough that packing the first round and unpacking the
  // last are short. Layers above it are sliced.
  size_t chunk_target_bytes = size_t{512} << 20;
  // The cap on a round: staging_bytes / ring_rounds. 3 (packing, on the
  // wire, unpacking) measured better than 4 at the smallest budget on 4x
  // H200 (0.779 vs 0.744 of raw NCCL on 4 GPUs, 0.804 vs 0.774 on 2) and
  // the same at 4x that budget (0.853 vs 0.854, 0.881 vs 0.879).
  int32_t ring_rounds = 3;
  // Staging from ncclMemAlloc, registered with ncclCommRegister on every
  // rank: NCCL then moves intra-node bytes straight from the sender's staging
  // into the receiver's (one copy instead of two through its FIFO), with
  // fewer SMs and a smaller cost per group, which is what lets packing and
  // unpacking hide behind the transfer. Every rank of a communicator must
  // agree (NCCL forbids mixing registered and plain buffers in one call).
  bool register_staging = true;
  // NCCL's stream at the highest priority, pack/unpack at the lowest. Off:
  // on H100 (2 and 4 GPUs, two runs each) it measured 1-4% slower than
  // equal priorities; kept for the benchmark's comparison.
  bool stream_priorities = false;
};

class Exchange {
 public:
  // Validates, checks the communicator's size and rank, allocates every
  // device and pinned buffer, streams and events. Blocks. Throws.
  Exchange(const eplbExchangeConfig_t& config, ncclComm_t comm,
           const ExchangeTuning& tuning = ExchangeTuning());
  ~Exchange();
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  // The communicator failed or will be aborted: Release makes no NCCL call.
  void MarkBroken() { broken_ = true; }

  // See eplbExchangeRegisterLayer. Waits for the exchange's work in flight
  // (the tensor table it rewrites may be in use). Throws.
  void RegisterLayer(int32_t layer, const eplbTensorDesc_t* tensors, int32_t num_tensors,
                     int32_t num_local_slots);

  // Where the last successful Run's time went: host phases (validation and
  // planning, agreement check, enqueueing) and the GPU time from the first
  // enqueued copy to the join (blocks until that work is done; 0 when the
  // Run moved nothing). For benchmarks and tuning.
  struct Profile {
    double host_plan_ms = 0;    // BeginPrepare to the end of FinishPrepare
    double host_finish_ms = 0;  // of which FinishPrepare (rounds, descriptors, hash)
    double host_check_ms = 0;   // Run's agreement check (0 after a bare Execute)
    double host_enqueue_ms = 0;
    float gpu_ms = 0;
  };
  Profile LastProfile();

  // See eplbExchangeRun: Prepare, the agreement check on `stream`, Execute.
  // Throws eplb::Error; `stats` (may be null) is written on success and on
  // failures after the agreement check.
  void Run(const int32_t* old_phy2log, const int32_t* new_phy2log, int32_t first_layer,
           int32_t num_layers, eplbExchangeStats_t* stats, cudaStream_t stream);

  // The two halves of Run for a caller that runs its own agreement (the
  // state machine folds the hash into its plan check, one collective for
  // both). Prepare: validation, transfer plans and descriptors on the host;
  // local (no collective, no GPU work; may wait for the previous Run's
  // descriptor upload). Returns the hash every rank must agree on before
  // Execute. Throws on invalid input (kInvalidArgument; kInvalidUsage for a
  // budget too small, the same verdict on every rank whose inputs agree),
  // leaving nothing prepared. Execute: enqueues the prepared exchange (as
  // Run's step 3) and consumes it; collective. The caller must have
  // established that every rank's Prepare returned the same hash; kInvalidUsage
  // when nothing is prepared.
  uint64_t Prepare(const int32_t* old_phy2log, const int32_t* new_phy2log, int32_t first_layer,
                   int32_t num_layers);
  void Execute(eplbExchangeStats_t* stats, cudaStream_t stream);

  // Collective (every rank, in the same order as its other collectives),
  // blocks: a round of 1 MiB (less when the staging is small) between every
  // pair of ranks on each communicator, from and into the staging, so that
  // NCCL connects the peers and maps each peer's registered staging now
  // rather than inside the first Run (hundreds of ms on the first
  // rearrangement otherwise). Moves no weights.
  void Warmup();

  // Prepare in three steps, for a caller that computes new_phy2log layer by
  // layer on its own threads and plans each layer's transfers as soon as it
  // has it: BeginPrepare checks the range and keeps the two pointers (both
  // must stay valid until FinishPrepare; new_phy2log's rows may still be
  // written); PrepareLayers(lo, hi) plans layers [lo, hi) of the range
  // (relative; thread safe for disjoint ranges, after those rows are final;
  // every layer exactly once); FinishPrepare builds the rounds and
  // descriptors and returns the hash. A throw from any step leaves nothing
  // prepared.
  void BeginPrepare(const int32_t* old_phy2log, const int32_t* new_phy2log, int32_t first_layer,
                    int32_t num_layers);
  void PrepareLayers(int32_t lo, int32_t hi);
  uint64_t FinishPrepare();

 private:
  // One round of staging (a chunk of layers, or a column slice of one).
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
  // What Prepare computed for Execute (the descriptors are in h_rows_).
  struct Prepared {
    bool valid = false;
    int32_t first = 0, num_layers = 0;
    std::vector<Chunk> chunks;
    size_t rows = 0;  // descriptors in h_rows_
    eplbExchangeStats_t stats = EPLB_EXCHANGE_STATS_INIT;
    uint64_t hash = 0;
    double plan_ms = 0, finish_ms = 0;
  };

  struct LayerBundle {
    bool registered = false;
    int32_t num_tensors = 0;
    std::vector<kernels::PackTensor> tensors;  // [kPackMaxTensors]
    size_t payload_bytes = 0;                  // sum of row bytes
    size_t padded_bytes = 0;                   // PaddedBundleBytes
    uint64_t max_tensor_bytes = 0;
  };

  void Release() noexcept;
  // Folds `hash` across ranks (ncclAllReduce max of hash and ~hash on
  // `stream`) and blocks until the result is on the host: true when every
  // rank passed the same hash.
  bool AgreementCheck(uint64_t hash, cudaStream_t stream);
  uint64_t InputHash(const int32_t* old_p, const int32_t* new_p, int32_t first, int32_t n) const;
  void WaitIdle();

  ExchangeTuning tuning_;
  TransferShape shape_;
  int32_t num_layers_ = 0;
  int32_t rank_ = 0;
  int32_t device_ = 0;
  int32_t slots_per_rank_ = 0;
  size_t staging_bytes_ = 0;
  int32_t host_threads_ = 1;  // for the per-layer transfer planning
  ncclComm_t comm_ = nullptr;
  // config.overlap_comm (the caller's; may be null): odd rounds go to it, on
  // comm2_stream_. The staging is registered with it too.
  ncclComm_t comm2_ = nullptr;
  void* staging_reg2_ = nullptr;
  std::vector<LayerBundle> layers_;

  // Device memory (all allocated by the constructor).
  char* d_staging_ = nullptr;
  bool staging_from_nccl_ = false;            // ncclMemAlloc (else cudaMalloc)
  void* staging_reg_ = nullptr;               // ncclCommRegister handle
  kernels::PackTensor* d_tensors_ = nullptr;  // [L][kPackMaxTensors]
  kernels::PackRow* d_rows_ = nullptr;        // [row_capacity_]
  uint64_t* d_check_ = nullptr;               // [2]
  // Pinned host mirrors.
  kernels::PackRow* h_rows_ = nullptr;  // [row_capacity_]
  uint64_t* h_check_ = nullptr;         // [2]
  size_t row_capacity_ = 0;

  cudaStream_t pack_stream_ = nullptr, comm_stream_ = nullptr, unpack_stream_ = nullptr;
  cudaStream_t comm2_stream_ = nullptr;  // comm2_'s rounds
  cudaEvent_t ev_fork_ = nullptr, ev_upload_ = nullptr, ev_join_ = nullptr;
  cudaEvent_t ev_packed_ = nullptr, ev_comm_ = nullptr;
  std::vector<cudaEvent_t> ev_chunk_done_;  // pool, reused round robin
  // After a failed enqueue in Execute: marks the exchange broken, orders
  // `stream` after what was enqueued (or waits for it), writes the stats.
  void OnEnqueueFailure(eplbExchangeStats_t* stats, const eplbExchangeStats_t& st,
                        cudaStream_t stream) noexcept;
  bool joined_once_ = false;
  // Set once a collective or a transfer failed (or the owner says so): the
  // communicator is then to be aborted, so Release makes no NCCL call on it
  // (the registrations go with the communicator).
  bool broken_ = false;
  cudaEvent_t ev_t0_ = nullptr, ev_t1_ = nullptr;  // timing: first copy, join
  Profile profile_;
  bool profile_gpu_ = false;  // ev_t0_/ev_t1_ bracket the last Run
  Prepared prepared_;
  // A preparation in progress (BeginPrepare .. FinishPrepare).
  struct Preparing {
    bool begun = false;
    const int32_t* old_p = nullptr;
    const int32_t* new_p = nullptr;
    int32_t first = 0, n = 0;
    std::vector<size_t> global_need, my_need;  // [n] staging per layer: max over ranks, this rank
    std::chrono::steady_clock::time_point start;
  };
  Preparing prep_;
  // Prepare's per-layer transfer plans (this rank's part), reused.
  std::vector<RankTransferFlat> plan_scratch_;
};

}  // namespace cuda
}  // namespace eplb

// The C handle of an exchange (host/capi/exchange_api.cc); the state machine
// reaches the class through it.
struct eplbExchange_s {
  std::unique_ptr<eplb::cuda::Exchange> impl;
};
