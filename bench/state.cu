// The state machine's costs, each against a baseline measured in the same run
// on the same GPUs (ratios hold on a noisy machine):
//
//   StepOverhead   per forward pass of a 58-layer model: a CUDA graph of the
//                  engine's per-layer work (a stand-in kernel) plus
//                  eplbRouteCount for every layer, then eplbStateStep (not
//                  rearranging), vs the same graph without eplb. Counters:
//                  baseline_us, overhead_us (eplb - baseline per pass), and the
//                  same with EPLB_STEP_STATS. One GPU (the per-step path has no
//                  collective without STATS; with STATS a 1-rank all-reduce).
//                  Second argument 1: the engine kernel is launched early
//                  (programmatic dependent launch: it waits for the kernel
//                  before it first thing, then lets the next one launch), as
//                  in an engine written for it; run with EPLB_PDL=1 to launch
//                  eplb's kernels so too.
//   Rearrange/N    a full rearrangement on N GPUs (one thread per GPU): the
//                  stall from the call to the stream being idle again (max
//                  over ranks), split by phase (rank 0's stream time per
//                  phase), vs raw NCCL: the same bytes per peer moved with one
//                  ncclSend/ncclRecv per peer from contiguous buffers (plain
//                  cudaMalloc, and again from registered ncclMemAlloc
//                  buffers as the exchange's staging is). Targets:
//                  exchange <= 1.15x raw, everything else <= 2 ms for 58 layers.
//                  overlap:1 gives the state a second communicator
//                  (eplbStateConfig_t.overlap_comm), split once at set-up.
// Shape: L = 58, E = 256, P = 288, G = 8, one node; the expert bundle is the
// DeepSeek-V3 FP8 expert scaled by 1/16 (2.75 MB) so that 58 layers fit.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda/state.h"
#include "eplb/eplb.h"
#include "transfer_plan.h"
#include "bench_check.h"
#include "kernels/enqueue.cuh"

namespace {

constexpr int32_t kL = 58, kE = 256, kP = 288, kG = 8;
constexpr int kTensors = 3;
constexpr size_t kBytes[kTensors] = {29360128 / 16, 14680064 / 16, 10752 / 16};
constexpr size_t kPayload = kBytes[0] + kBytes[1] + kBytes[2];

eplbStateConfig_t MakeConfig(int n, int rank, int32_t window, int32_t interval) {
  eplbStateConfig_t c = EPLB_STATE_CONFIG_INIT;
  c.num_layers = kL;
  c.num_logical_experts = kE;
  c.num_physical_experts = kP;
  c.num_groups = kG;
  c.num_nodes = 1;
  c.num_ranks = n;
  c.rank = rank;
  c.window_size = window;
  c.step_interval = interval;
  return c;
}

size_t StagingBytes(int n) {
  eplbExchangeConfig_t xc = EPLB_EXCHANGE_CONFIG_INIT;
  xc.num_layers = kL;
  xc.num_physical_experts = kP;
  xc.num_ranks = n;
  std::vector<size_t> tb(static_cast<size_t>(kL) * EPLB_EXCHANGE_MAX_TENSORS, 0);
  for (int32_t l = 0; l < kL; ++l)
    for (int t = 0; t < kTensors; ++t) tb[l * EPLB_EXCHANGE_MAX_TENSORS + t] = kBytes[t];
  size_t min_bytes = 0;
  EK(eplbExchangeStagingQuery(&xc, tb.data(), nullptr, nullptr, &min_bytes, nullptr));
  return min_bytes;
}

// Registers weight arrays (contents irrelevant to the timing); `tiny` bundles
// for the per-step benchmark, which never moves them.
void RegisterWeights(eplbState_t st, int n, bool tiny, std::vector<void*>* owned) {
  const int32_t S = kP / n;
  for (int32_t l = 0; l < kL; ++l) {
    eplbTensorDesc_t td[kTensors];
    for (int t = 0; t < kTensors; ++t) {
      const size_t bytes = tiny ? 256 : kBytes[t];
      void* d = nullptr;
      CK(cudaMalloc(&d, S * bytes));
      CK(cudaMemset(d, l + t, S * bytes));
      owned->push_back(d);
      td[t] = {d, bytes, bytes};
    }
    EK(eplbStateRegisterLayer(st, l, td, kTensors));
  }
}

// ---- per-step overhead -------------------------------------------------------

// Stand-in for an engine's per-layer work around routing: reads the top-k ids
// and writes them out (a dispatch-layout-like pass).
template <bool kEarly>
__global__ void EngineLayerKernel(const int32_t* ids, int32_t n, int32_t* out) {
  if constexpr (kEarly) {
    eplb::GridDependencyWait();
    eplb::GridDependentsLaunch();
  }
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = ids[i] ^ 1;
}

void BM_StepOverhead(benchmark::State& state) {
  const int32_t tokens = static_cast<int32_t>(state.range(0)), top_k = 8;
  const bool early_engine = state.range(1) != 0;
  const size_t TK = static_cast<size_t>(tokens) * top_k;
  CK(cudaSetDevice(0));
  ncclComm_t comm;
  int dev0 = 0;
  NK(ncclCommInitAll(&comm, 1, &dev0));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  eplbStateConfig_t cfg = MakeConfig(1, 0, 1000, 1 << 30);
  cfg.staging_bytes = StagingBytes(1);
  eplbState_t st;
  EK(eplbStateCreate(&cfg, comm, &st));
  std::vector<void*> weights;
  RegisterWeights(st, 1, /*tiny=*/true, &weights);
  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  EK(eplbStateGetDeviceMaps(st, &maps));

  int32_t *d_ids, *d_out, *d_phys;
  CK(cudaMalloc(&d_ids, kL * TK * sizeof(int32_t)));
  CK(cudaMalloc(&d_out, kL * TK * sizeof(int32_t)));
  CK(cudaMalloc(&d_phys, kL * TK * sizeof(int32_t)));
  std::vector<int32_t> ids(kL * TK);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int32_t>((i * 2654435761u >> 7) % kE) / (1 + (i % 3));  // skewed
  CK(cudaMemcpy(d_ids, ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice));

  const int32_t W2 = kP - kE + 1;
  auto capture = [&](bool with_eplb) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int32_t l = 0; l < kL; ++l) {
      if (early_engine)
        CK(eplb::EnqueueKernelPdl(true, EngineLayerKernel<true>, dim3(64), dim3(256), 0, s,
                                  static_cast<const int32_t*>(d_ids + l * TK),
                                  static_cast<int32_t>(TK), d_out + l * TK));
      else
        EngineLayerKernel<false>
            <<<64, 256, 0, s>>>(d_ids + l * TK, static_cast<int32_t>(TK), d_out + l * TK);
      if (with_eplb)
        EK(eplbRouteCount(d_ids + l * TK, EPLB_ID_INT32, tokens, nullptr, top_k,
                          maps.d_log2phy + static_cast<size_t>(l) * kE * W2,
                          maps.d_logcnt + static_cast<size_t>(l) * kE, kE, kP, maps.d_record,
                          d_phys + l * TK, maps.d_load_pass + static_cast<size_t>(l) * kP,
                          maps.d_invalid_count, s));
    }
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphDestroy(g));
    return ge;
  };
  cudaGraphExec_t base = capture(false), with = capture(true);
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  constexpr int kPasses = 50;
  auto time_passes = [&](int mode) {  // 0 baseline, 1 eplb, 2 eplb + stats
    CK(cudaEventRecord(e0, s));
    for (int i = 0; i < kPasses; ++i) {
      CK(cudaGraphLaunch(mode == 0 ? base : with, s));
      if (mode > 0) EK(eplbStateStep(st, mode == 2 ? EPLB_STEP_STATS : 0u, s));
    }
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return static_cast<double>(ms) / kPasses * 1e3;  // us per pass
  };
  for (int m = 0; m < 3; ++m) time_passes(m);  // warm-up
  double t_base = 0, t_eplb = 0, t_stats = 0;
  int64_t it = 0;
  for (auto _ : state) {
    const double b = time_passes(0), e = time_passes(1), x = time_passes(2);
    t_base += b;
    t_eplb += e;
    t_stats += x;
    ++it;
    state.SetIterationTime(e * 1e-6);
  }
  state.counters["baseline_us"] = t_base / it;
  state.counters["eplb_us"] = t_eplb / it;
  state.counters["overhead_us"] = (t_eplb - t_base) / it;
  state.counters["overhead_stats_us"] = (t_stats - t_base) / it;
  state.counters["ratio"] = t_eplb / t_base;

  CK(cudaGraphExecDestroy(base));
  CK(cudaGraphExecDestroy(with));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  EK(eplbStateDestroy(st));
  for (void* w : weights) CK(cudaFree(w));
  CK(cudaFree(d_ids));
  CK(cudaFree(d_out));
  CK(cudaFree(d_phys));
  CK(cudaStreamDestroy(s));
  NK(ncclCommDestroy(comm));
}

// ---- full rearrangement on N GPUs ----------------------------------------------

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  int n_, count_ = 0;
  uint64_t gen_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

struct RankCtx {
  ncclComm_t comm = nullptr;
  ncclComm_t comm2 = nullptr;  // overlap_comm, split from comm (the /overlap:1 runs)
  cudaStream_t s = nullptr;
  eplbState_t st = nullptr;
  std::vector<void*> weights;
  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  int32_t* d_counts[2] = {nullptr, nullptr};  // two synthetic passes [L][P]
  char* d_raw = nullptr;                      // raw baseline buffers: [send | recv]
  char* d_reg = nullptr;                      // the same from ncclMemAlloc, registered
  void* reg_handle = nullptr;
  size_t raw_cap = 0;  // per direction and peer chunk
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  // Results of the last iteration.
  double stall_ms = 0, raw_ms = 0, raw_reg_ms = 0;
  eplbStateStats_t stats = EPLB_STATE_STATS_INIT;
};

constexpr int32_t kWindow = 8;

void BM_Rearrange(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool overlap = state.range(1) != 0;
  const int32_t S = kP / n;
  std::vector<RankCtx> ranks(n);
  std::vector<ncclComm_t> comms(n);
  std::vector<int> devs(n);
  for (int r = 0; r < n; ++r) devs[r] = r;
  NK(ncclCommInitAll(comms.data(), n, devs.data()));
  const size_t staging = StagingBytes(n);
  Barrier barrier(n);
  auto each = [&](auto fn) {
    std::vector<std::thread> th;
    for (int r = 0; r < n; ++r)
      th.emplace_back([&, r] {
        CK(cudaSetDevice(r));
        fn(r, ranks[r]);
      });
    for (auto& t : th) t.join();
  };
  each([&](int r, RankCtx& c) {
    c.comm = comms[r];
    if (overlap) NK(ncclCommSplit(c.comm, 0, r, &c.comm2, nullptr));
    CK(cudaStreamCreateWithFlags(&c.s, cudaStreamNonBlocking));
    eplbStateConfig_t cfg = MakeConfig(n, r, kWindow, 1 << 30);
    cfg.staging_bytes = staging;
    cfg.overlap_comm = c.comm2;
    EK(eplbStateCreate(&cfg, c.comm, &c.st));
    RegisterWeights(c.st, n, /*tiny=*/false, &c.weights);
    EK(eplbStateGetDeviceMaps(c.st, &c.maps));
    // Two skewed passes with different hot sets, so that consecutive
    // rearrangements move many slots.
    for (int h = 0; h < 2; ++h) {
      std::vector<int32_t> counts(static_cast<size_t>(kL) * kP);
      for (int32_t l = 0; l < kL; ++l)
        for (int32_t p = 0; p < kP; ++p) {
          const int32_t d = (p * 37 + l * 11 + h * 101) % kP;
          counts[l * kP + p] = 1 + 4000 / (1 + d);
        }
      CK(cudaMalloc(&c.d_counts[h], counts.size() * sizeof(int32_t)));
      CK(cudaMemcpy(c.d_counts[h], counts.data(), counts.size() * sizeof(int32_t),
                    cudaMemcpyHostToDevice));
    }
    c.raw_cap = size_t{512} << 20;
    CK(cudaMalloc(&c.d_raw, 2 * c.raw_cap));
    NK(ncclMemAlloc(reinterpret_cast<void**>(&c.d_reg), 2 * c.raw_cap));
    NK(ncclCommRegister(c.comm, c.d_reg, 2 * c.raw_cap, &c.reg_handle));
    CK(cudaEventCreate(&c.e0));
    CK(cudaEventCreate(&c.e1));
  });

  const std::vector<size_t> tensor_bytes(kBytes, kBytes + kTensors);
  auto iteration = [&](int h) {
    each([&](int r, RankCtx& c) {
      for (int32_t w = 0; w < kWindow; ++w) {
        CK(cudaMemcpyAsync(c.maps.d_load_pass, c.d_counts[h],
                           static_cast<size_t>(kL) * kP * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                           c.s));
        EK(eplbStateStep(c.st, 0, c.s));
      }
      std::vector<int32_t> before(static_cast<size_t>(kL) * kP), after(before.size());
      EK(eplbStateGetPlacement(c.st, before.data()));
      CK(cudaStreamSynchronize(c.s));
      barrier.Wait();
      const auto t0 = std::chrono::steady_clock::now();
      EK(eplbStateRearrange(c.st, c.s));
      CK(cudaStreamSynchronize(c.s));
      c.stall_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      c.stats = EPLB_STATE_STATS_INIT;
      EK(eplbStateGetStats(c.st, &c.stats));
      EK(eplbStateGetPlacement(c.st, after.data()));

      // Raw NCCL: the same payload per peer as the exchange moved, one
      // send/recv per peer (in chunks of raw_cap), from contiguous buffers.
      eplb::TransferShape ts;
      ts.num_physical_experts = kP;
      ts.num_ranks = n;
      std::vector<size_t> send(n, 0), recv(n, 0);
      for (int32_t l = 0; l < kL; ++l) {
        const eplb::LayerTransfer lt =
            eplb::PlanLayerTransfer(ts, before.data() + l * kP, after.data() + l * kP);
        for (int q = 0; q < n; ++q) {
          send[q] += lt[r].send_rows[q].size() * kPayload;
          recv[q] += lt[r].recv_rows[q].size() * kPayload;
        }
      }
      auto raw = [&](char* buf) {
        barrier.Wait();
        CK(cudaEventRecord(c.e0, c.s));
        for (size_t off = 0;; off += c.raw_cap) {
          bool any = false;
          NK(ncclGroupStart());
          for (int q = 0; q < n; ++q) {
            if (q == r) continue;
            if (send[q] > off) {
              NK(ncclSend(buf, std::min(c.raw_cap, send[q] - off), ncclUint8, q, c.comm, c.s));
              any = true;
            }
            if (recv[q] > off) {
              NK(ncclRecv(buf + c.raw_cap, std::min(c.raw_cap, recv[q] - off), ncclUint8, q, c.comm,
                          c.s));
              any = true;
            }
          }
          NK(ncclGroupEnd());
          if (!any) break;
        }
        CK(cudaEventRecord(c.e1, c.s));
        CK(cudaEventSynchronize(c.e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, c.e0, c.e1));
        return static_cast<double>(ms);
      };
      c.raw_ms = raw(c.d_raw);
      c.raw_reg_ms = raw(c.d_reg);
    });
  };
  iteration(0);  // warm-up (also moves away from the initial placement)
  double t_stall = 0, t_raw = 0, t_raw_reg = 0, t_exchange = 0, t_other = 0, slots = 0, sent = 0;
  double phase[EPLB_STATE_NUM_PHASES] = {0}, host_phase[EPLB_STATE_NUM_PHASES] = {0};
  double x_finish = 0, x_enqueue = 0, x_gpu = 0;  // rank 0's exchange
  int64_t it = 0;
  for (auto _ : state) {
    iteration(static_cast<int>((it + 1) % 2));
    double stall = 0, raw = 0, raw_reg = 0, exch = 0;
    for (const RankCtx& c : ranks) {
      stall = std::max(stall, c.stall_ms);
      raw = std::max(raw, c.raw_ms);
      raw_reg = std::max(raw_reg, c.raw_reg_ms);
      exch = std::max(exch, c.stats.last_device_ms[EPLB_STATE_PHASE_EXCHANGE]);
      sent = std::max(sent, static_cast<double>(c.stats.last_bytes_sent));
    }
    t_stall += stall;
    t_raw += raw;
    t_raw_reg += raw_reg;
    t_exchange += exch;
    t_other += stall - exch;
    slots += static_cast<double>(ranks[0].stats.last_slots_moved);
    for (int p = 0; p < EPLB_STATE_NUM_PHASES; ++p) {
      phase[p] += ranks[0].stats.last_device_ms[p];
      host_phase[p] += ranks[0].stats.last_host_ms[p];
    }
    const eplb::cuda::Exchange::Profile xp = ranks[0].st->impl->ExchangeProfile();
    x_finish += xp.host_finish_ms;
    x_enqueue += xp.host_enqueue_ms;
    x_gpu += xp.gpu_ms;
    ++it;
    state.SetIterationTime(stall * 1e-3);
  }
  const char* names[EPLB_STATE_NUM_PHASES] = {"readout_ms", "allreduce_ms", "plan_ms",
                                              "check_ms",   "exchange_ms",  "commit_ms"};
  for (int p = 0; p < EPLB_STATE_NUM_PHASES; ++p) state.counters[names[p]] = phase[p] / it;
  // Host time of the phases that run on the host (rank 0): planning, the
  // agreement check (all-reduce + evaluation), the exchange call.
  state.counters["plan_host_ms"] = host_phase[EPLB_STATE_PHASE_PLAN] / it;
  state.counters["check_host_ms"] = host_phase[EPLB_STATE_PHASE_CHECK] / it;
  state.counters["exchange_host_ms"] = host_phase[EPLB_STATE_PHASE_EXCHANGE] / it;
  // Inside them, rank 0's exchange: the serial end of its transfer planning
  // (rounds and descriptors, in the plan phase; the per-layer plans run on
  // the planner's threads beside the placement); enqueueing and GPU time
  // from the first copy to the join (the exchange phase).
  state.counters["xfer_finish_ms"] = x_finish / it;
  state.counters["xfer_enqueue_ms"] = x_enqueue / it;
  state.counters["xfer_gpu_ms"] = x_gpu / it;
  state.counters["stall_ms"] = t_stall / it;
  state.counters["exchange_max_ms"] = t_exchange / it;
  state.counters["raw_nccl_ms"] = t_raw / it;
  state.counters["exchange_vs_raw"] = t_exchange / t_raw;  // target <= 1.15
  state.counters["raw_nccl_registered_ms"] = t_raw_reg / it;
  state.counters["exchange_vs_raw_registered"] = t_exchange / t_raw_reg;
  state.counters["other_ms"] = t_other / it;  // target <= 2
  state.counters["slots_moved"] = slots / it;
  state.counters["sent_GB_last"] = sent / 1e9;

  each([&](int, RankCtx& c) {
    EK(eplbStateDestroy(c.st));
    for (void* w : c.weights) CK(cudaFree(w));
    for (int32_t* d : c.d_counts) CK(cudaFree(d));
    CK(cudaFree(c.d_raw));
    NK(ncclCommDeregister(c.comm, c.reg_handle));
    NK(ncclMemFree(c.d_reg));
    CK(cudaEventDestroy(c.e0));
    CK(cudaEventDestroy(c.e1));
    CK(cudaStreamDestroy(c.s));
    if (c.comm2) NK(ncclCommDestroy(c.comm2));
    NK(ncclCommDestroy(c.comm));
  });
  (void)S;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 1) {
    std::fprintf(stderr, "bench_state: no GPU; nothing to run\n");
    return 0;
  }
  benchmark::RegisterBenchmark("StepOverhead/L58", BM_StepOverhead)
      ->ArgNames({"tokens", "early_engine"})
      ->ArgsProduct({{64, 512}, {0, 1}})
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond)
      ->Iterations(20);
  for (int n : {2, 4}) {
    if (n > gpus) continue;
    benchmark::RegisterBenchmark("Rearrange/L58_expert2.75MB", BM_Rearrange)
        ->ArgNames({"N", "overlap"})
        ->Args({n, 0})
        ->Args({n, 1})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond)
        ->Iterations(4);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
