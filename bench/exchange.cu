// The packed exchange (eplbExchangeRun) on a realistic rearrangement, against
// two baselines measured in the same benchmark loop on the same GPUs:
//   raw_nccl    the same bytes per peer, one ncclSend/ncclRecv per peer per
//               direction, from preallocated contiguous buffers (no packing,
//               no local moves): the speed of the links; measured twice,
//               with plain cudaMalloc buffers (vs_raw) and with buffers from
//               ncclMemAlloc registered with ncclCommRegister, as the
//               exchange's staging is (vs_raw_registered);
//   per_tensor  one message per (expert, tensor) straight from the slot into
//               the receiving slot, one NCCL group per layer, duplicates and
//               local moves by cudaMemcpyAsync (what the reference does).
// Workload: E = 256 routed experts + 32 redundant (P = 288), the planner's
// placement for a skewed load and then for the next window's load (migration
// aware); every iteration moves A -> B and back B -> A. Expert bundle: the
// DeepSeek-V3 FP8 shape (gate/up 2*7168*2048, down 7168*2048, block scales):
// 44 MB, or scaled by 1/16 so that 58 layers fit. One thread per GPU (each
// Run blocks in its agreement check), communicators from ncclCommInitAll
// and, for the overlap_comm variants, a second one split from each.
// Time: per phase the max over ranks of CUDA-event time on the rank's stream.
// Counters: vs_raw = raw_nccl time / exchange time (1.0 = link speed),
// vs_per_tensor = per_tensor time / exchange time, GB/s of payload sent by
// the busiest rank.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "eplb/eplb.h"
#include "cuda/exchange.h"
#include "transfer_plan.h"
#include "bench_check.h"

namespace {

constexpr int kT = 3;

struct Workload {
  const char* name;
  int32_t L;
  size_t bytes[kT];
};

// DeepSeek-V3 expert: gate/up 2*7168*2048 fp8, down 7168*2048 fp8, fp32
// 128x128 block scales of both (2*56*16*4 + 56*16*4 bytes).
const Workload kFull = {"L58_expert2.75MB", 58, {29360128 / 16, 14680064 / 16, 10752 / 16}};
const Workload kBig = {"L5_expert44MB", 5, {29360128, 14680064, 10752}};

// Persistent worker per rank; Each() runs fn(rank) on all concurrently.
class Workers {
 public:
  explicit Workers(int n) : n_(n) {
    for (int r = 0; r < n; ++r) th_.emplace_back([this, r] { Loop(r); });
  }
  ~Workers() {
    {
      std::lock_guard<std::mutex> g(m_);
      stop_ = true;
      ++gen_;
    }
    cv_.notify_all();
    for (auto& t : th_) t.join();
  }
  void Each(const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> g(m_);
    fn_ = fn;
    done_ = 0;
    ++gen_;
    cv_.notify_all();
    done_cv_.wait(g, [&] { return done_ == n_; });
  }

 private:
  void Loop(int r) {
    CK(cudaSetDevice(r));
    uint64_t seen = 0;
    for (;;) {
      std::function<void(int)> fn;
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return gen_ != seen; });
        seen = gen_;
        if (stop_) return;
        fn = fn_;
      }
      fn(r);
      {
        std::lock_guard<std::mutex> g(m_);
        if (++done_ == n_) done_cv_.notify_all();
      }
    }
  }
  int n_;
  std::vector<std::thread> th_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::function<void(int)> fn_;
  uint64_t gen_ = 0;
  int done_ = 0;
  bool stop_ = false;
};

std::vector<int64_t> SkewedLoad(std::mt19937_64& rng, int32_t L, int32_t E,
                                const std::vector<int64_t>* base) {
  std::vector<int64_t> w(static_cast<size_t>(L) * E);
  std::lognormal_distribution<double> noise(0.0, 0.35);
  for (int32_t l = 0; l < L; ++l) {
    std::vector<int32_t> perm(E);
    for (int32_t e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int32_t e = 0; e < E; ++e) {
      size_t i = static_cast<size_t>(l) * E + e;
      if (base) {
        w[i] = static_cast<int64_t>(static_cast<double>((*base)[i]) * noise(rng)) + 1;
      } else {
        w[i] = static_cast<int64_t>(100000.0 / std::pow(perm[e] + 1.0, 0.9)) + 1;  // Zipf-like
      }
    }
  }
  return w;
}

struct RankCtx {
  ncclComm_t comm = nullptr;
  ncclComm_t comm2 = nullptr;  // split from comm: the overlap variants' second communicator
  cudaStream_t stream = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  std::vector<std::array<char*, kT>> w;  // [L] slot arrays
  std::unique_ptr<eplb::cuda::Exchange> ex;
  double host_s = 0;
  char* raw_send = nullptr;
  char* raw_recv = nullptr;
  char* reg_send = nullptr;  // ncclMemAlloc + ncclCommRegister
  char* reg_recv = nullptr;
  void* reg_h[2] = {nullptr, nullptr};
  float ms = 0;
};

class Bench {
 public:
  Bench(int n, const Workload& wl) : n_(n), wl_(wl), workers_(n) {
    const int32_t E = 256, P = 288, L = wl.L;
    S_ = P / n;
    P_ = P;
    // Placements: A for window 1, B for window 2 (migration aware against A).
    std::mt19937_64 rng(20261127);
    std::vector<int64_t> w1 = SkewedLoad(rng, L, E, nullptr);
    std::vector<int64_t> w2 = SkewedLoad(rng, L, E, &w1);
    eplbPlanConfig_t pc = EPLB_PLAN_CONFIG_INIT;
    pc.num_layers = L;
    pc.num_logical_experts = E;
    pc.num_physical_experts = P;
    pc.num_groups = 8;
    pc.num_nodes = 1;
    pc.num_ranks = n;
    A_.resize(static_cast<size_t>(L) * P);
    B_.resize(A_.size());
    std::vector<int32_t> cnt(static_cast<size_t>(L) * E);
    EK(eplbPlanCompute(&pc, w1.data(), nullptr, A_.data(), cnt.data(), nullptr, nullptr));
    EK(eplbPlanCompute(&pc, w2.data(), A_.data(), B_.data(), cnt.data(), nullptr, nullptr));
    // Host plans of both directions (the same as the exchange computes).
    shape_.num_physical_experts = P;
    shape_.num_ranks = n;
    payload_ = wl.bytes[0] + wl.bytes[1] + wl.bytes[2];
    for (int dir = 0; dir < 2; ++dir) {
      const auto& from = dir == 0 ? A_ : B_;
      const auto& to = dir == 0 ? B_ : A_;
      plans_[dir].resize(L);
      raw_bytes_[dir].assign(n, std::vector<size_t>(n, 0));
      for (int32_t l = 0; l < L; ++l) {
        plans_[dir][l] = eplb::PlanLayerTransfer(shape_, from.data() + l * P, to.data() + l * P);
        for (int r = 0; r < n; ++r)
          for (int q = 0; q < n; ++q)
            raw_bytes_[dir][r][q] += plans_[dir][l][r].send_rows[q].size() * payload_;
      }
    }
    for (int r = 0; r < n; ++r) {
      size_t s = 0;
      for (int q = 0; q < n; ++q) s += raw_bytes_[0][r][q];
      max_sent_ = std::max(max_sent_, s);
    }
    // Staging: the exact minimum for both directions, times 4 (room for
    // chunks to overlap), at most 2 GiB, never below the minimum.
    eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
    cfg.num_layers = L;
    cfg.num_physical_experts = P;
    cfg.num_ranks = n;
    std::vector<size_t> tb(static_cast<size_t>(L) * EPLB_EXCHANGE_MAX_TENSORS, 0);
    for (int32_t l = 0; l < L; ++l)
      for (int t = 0; t < kT; ++t) tb[l * EPLB_EXCHANGE_MAX_TENSORS + t] = wl.bytes[t];
    size_t m1 = 0, m2 = 0;
    EK(eplbExchangeStagingQuery(&cfg, tb.data(), A_.data(), B_.data(), &m1, nullptr));
    EK(eplbExchangeStagingQuery(&cfg, tb.data(), B_.data(), A_.data(), &m2, nullptr));
    min_staging_ = std::max(m1, m2);
    cfg_ = cfg;
    staging_ = std::max(min_staging_, std::min<size_t>(4 * min_staging_, size_t{2} << 30));

    ncclUniqueId unused;
    (void)unused;
    std::vector<ncclComm_t> comms(n);
    std::vector<int> devs(n);
    for (int r = 0; r < n; ++r) devs[r] = r;
    NK(ncclCommInitAll(comms.data(), n, devs.data()));
    ranks_.resize(n);
    workers_.Each([&](int r) {
      RankCtx& c = ranks_[r];
      c.comm = comms[r];
      // Collective over the ranks' threads, once per process (an engine
      // makes its second communicator once, at start-up).
      NK(ncclCommSplit(c.comm, 0, r, &c.comm2, nullptr));
      CK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
      CK(cudaEventCreate(&c.a));
      CK(cudaEventCreate(&c.b));
      c.w.resize(L);
      for (int32_t l = 0; l < L; ++l)
        for (int t = 0; t < kT; ++t) {
          CK(cudaMalloc(&c.w[l][t], wl.bytes[t] * S_));
          CK(cudaMemsetAsync(c.w[l][t], (l + t) & 0xff, wl.bytes[t] * S_, c.stream));
        }
      size_t sb = 0, rb = 0;
      for (int dir = 0; dir < 2; ++dir) {
        size_t s = 0, rr = 0;
        for (int q = 0; q < n; ++q) {
          s += raw_bytes_[dir][r][q];
          rr += raw_bytes_[dir][q][r];
        }
        sb = std::max(sb, s);
        rb = std::max(rb, rr);
      }
      CK(cudaMalloc(&c.raw_send, std::max<size_t>(sb, 16)));
      CK(cudaMalloc(&c.raw_recv, std::max<size_t>(rb, 16)));
      // The registered baseline only where memory allows (the 44 MB case on
      // 2 GPUs does not leave room for a second pair of buffers).
      size_t free_b = 0, total_b = 0;
      CK(cudaMemGetInfo(&free_b, &total_b));
      const size_t reserve = staging_ + (size_t{2} << 30);  // the exchange's staging + slack
      if (free_b > sb + rb + reserve &&
          ncclMemAlloc(reinterpret_cast<void**>(&c.reg_send), std::max<size_t>(sb, 16)) ==
              ncclSuccess &&
          ncclMemAlloc(reinterpret_cast<void**>(&c.reg_recv), std::max<size_t>(rb, 16)) ==
              ncclSuccess) {
        NK(ncclCommRegister(c.comm, c.reg_send, std::max<size_t>(sb, 16), &c.reg_h[0]));
        NK(ncclCommRegister(c.comm, c.reg_recv, std::max<size_t>(rb, 16), &c.reg_h[1]));
      } else {
        (void)cudaGetLastError();
        if (c.reg_send) ncclMemFree(c.reg_send);
        c.reg_send = c.reg_recv = nullptr;
      }
      CK(cudaStreamSynchronize(c.stream));
    });
  }

  ~Bench() {
    workers_.Each([&](int r) {
      RankCtx& c = ranks_[r];
      c.ex.reset();
      for (auto& l : c.w)
        for (char* p : l) cudaFree(p);
      cudaFree(c.raw_send);
      cudaFree(c.raw_recv);
      for (void* h : c.reg_h)
        if (h) ncclCommDeregister(c.comm, h);
      if (c.reg_send) ncclMemFree(c.reg_send);
      if (c.reg_recv) ncclMemFree(c.reg_recv);
      cudaEventDestroy(c.a);
      cudaEventDestroy(c.b);
      cudaStreamDestroy(c.stream);
      ncclCommDestroy(c.comm2);
      ncclCommDestroy(c.comm);
    });
  }

  // Runs fn on every rank between two events on its stream; returns the
  // max over ranks in seconds.
  double Timed(const std::function<void(int, RankCtx&)>& fn) {
    workers_.Each([&](int r) {
      RankCtx& c = ranks_[r];
      CK(cudaEventRecord(c.a, c.stream));
      fn(r, c);
      CK(cudaEventRecord(c.b, c.stream));
      CK(cudaEventSynchronize(c.b));
      CK(cudaEventElapsedTime(&c.ms, c.a, c.b));
    });
    double mx = 0;
    for (auto& c : ranks_) mx = std::max(mx, static_cast<double>(c.ms));
    return mx * 1e-3;
  }

  // Exchanges of every rank with `tuning` (the staging budget as above).
  void CreateExchanges(const eplb::cuda::ExchangeTuning& tuning, size_t staging, bool overlap) {
    workers_.Each([&](int r) {
      RankCtx& c = ranks_[r];
      c.ex.reset();
      eplbExchangeConfig_t rc = cfg_;
      rc.rank = r;
      rc.device = r;
      rc.staging_bytes = staging;
      rc.overlap_comm = overlap ? c.comm2 : nullptr;
      try {
        c.ex = std::make_unique<eplb::cuda::Exchange>(rc, c.comm, tuning);
        for (int32_t l = 0; l < wl_.L; ++l) {
          eplbTensorDesc_t td[kT];
          for (int t = 0; t < kT; ++t) td[t] = {c.w[l][t], wl_.bytes[t], wl_.bytes[t]};
          c.ex->RegisterLayer(l, td, kT, S_);
        }
      } catch (const eplb::Error& e) {
        std::fprintf(stderr, "exchange setup: %s\n", e.what());
        std::abort();
      }
    });
  }

  // A -> B then B -> A; host_s_ gets the slowest rank's host time in Run.
  double Packed() {
    double t = Timed([&](int, RankCtx& c) {
      auto h0 = std::chrono::steady_clock::now();
      try {
        c.ex->Run(A_.data(), B_.data(), 0, wl_.L, nullptr, c.stream);
        c.ex->Run(B_.data(), A_.data(), 0, wl_.L, nullptr, c.stream);
      } catch (const eplb::Error& e) {
        std::fprintf(stderr, "exchange run: %s\n", e.what());
        std::abort();
      }
      c.host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - h0).count();
    });
    host_s_ = 0;
    for (auto& c : ranks_) host_s_ = std::max(host_s_, c.host_s);
    return t;
  }

  bool HaveRegistered() const {
    for (const RankCtx& c : ranks_)
      if (c.reg_send == nullptr) return false;
    return true;
  }

  double Raw(bool registered) {
    return Timed([&](int r, RankCtx& c) {
      char* send = registered ? c.reg_send : c.raw_send;
      char* recv = registered ? c.reg_recv : c.raw_recv;
      for (int dir = 0; dir < 2; ++dir) {
        NK(ncclGroupStart());
        size_t so = 0, ro = 0;
        for (int q = 0; q < n_; ++q) {
          if (raw_bytes_[dir][r][q])
            NK(ncclSend(send + so, raw_bytes_[dir][r][q], ncclInt8, q, c.comm, c.stream));
          if (raw_bytes_[dir][q][r])
            NK(ncclRecv(recv + ro, raw_bytes_[dir][q][r], ncclInt8, q, c.comm, c.stream));
          so += raw_bytes_[dir][r][q];
          ro += raw_bytes_[dir][q][r];
        }
        NK(ncclGroupEnd());
      }
    });
  }

  // One message per (row, tensor); like the reference, no care for a slot
  // that is both a source and a destination (timing only).
  double PerTensor() {
    return Timed([&](int r, RankCtx& c) {
      for (int dir = 0; dir < 2; ++dir)
        for (int32_t l = 0; l < wl_.L; ++l) {
          const eplb::RankTransfer& t = plans_[dir][l][r];
          auto row = [&](int tensor, int32_t slot) {
            return c.w[l][tensor] + wl_.bytes[tensor] * slot;
          };
          NK(ncclGroupStart());
          for (int q = 0; q < n_; ++q) {
            for (int32_t slot : t.send_rows[q])
              for (int k = 0; k < kT; ++k)
                NK(ncclSend(row(k, slot), wl_.bytes[k], ncclInt8, q, c.comm, c.stream));
            for (const auto& rv : t.recv_rows[q])
              for (int k = 0; k < kT; ++k)
                NK(ncclRecv(row(k, rv.dst_slots[0]), wl_.bytes[k], ncclInt8, q, c.comm, c.stream));
          }
          NK(ncclGroupEnd());
          for (int q = 0; q < n_; ++q)
            for (const auto& rv : t.recv_rows[q])
              for (size_t d = 1; d < rv.dst_slots.size(); ++d)
                for (int k = 0; k < kT; ++k)
                  CK(cudaMemcpyAsync(row(k, rv.dst_slots[d]), row(k, rv.dst_slots[0]), wl_.bytes[k],
                                     cudaMemcpyDeviceToDevice, c.stream));
          for (const auto& lr : t.local_rows)
            for (int32_t d : lr.dst_slots)
              for (int k = 0; k < kT; ++k)
                CK(cudaMemcpyAsync(row(k, d), row(k, lr.src_slot), wl_.bytes[k],
                                   cudaMemcpyDeviceToDevice, c.stream));
        }
    });
  }

  int n_;
  Workload wl_;
  Workers workers_;
  int32_t S_ = 0, P_ = 0;
  std::vector<int32_t> A_, B_;
  eplb::TransferShape shape_;
  std::vector<eplb::LayerTransfer> plans_[2];
  std::vector<std::vector<size_t>> raw_bytes_[2];
  size_t payload_ = 0, max_sent_ = 0, min_staging_ = 0, staging_ = 0;
  eplbExchangeConfig_t cfg_ = EPLB_EXCHANGE_CONFIG_INIT;
  double host_s_ = 0;
  std::vector<RankCtx> ranks_;
};

void BM_Exchange(benchmark::State& state, Bench* b, eplb::cuda::ExchangeTuning tuning,
                 bool per_tensor, bool min_staging, bool overlap) {
  const size_t staging = min_staging ? b->min_staging_ : b->staging_;
  b->CreateExchanges(tuning, staging, overlap);
  // Warm-up: NCCL connects peers lazily on the first send/recv.
  b->Packed();
  const bool have_reg = b->HaveRegistered();
  b->Raw(false);
  if (have_reg) b->Raw(true);
  if (per_tensor) b->PerTensor();
  double t_packed = 0, t_raw = 0, t_reg = 0, t_per = 0, t_host = 0;
  int64_t it = 0;
  for (auto _ : state) {
    double p = b->Packed();
    t_host += b->host_s_;
    t_raw += b->Raw(false);
    if (have_reg) t_reg += b->Raw(true);
    if (per_tensor) t_per += b->PerTensor();
    t_packed += p;
    ++it;
    state.SetIterationTime(p);
  }
  const double bytes = 2.0 * static_cast<double>(b->max_sent_);  // A->B and B->A
  state.counters["vs_raw"] = t_raw / t_packed;
  if (have_reg) {
    state.counters["vs_raw_registered"] = t_reg / t_packed;
    state.counters["raw_reg_ms"] = t_reg / it * 1e3;
  }
  // Where a Run's time goes (rank 0, last iteration, the B -> A run).
  const eplb::cuda::Exchange::Profile pr = b->ranks_[0].ex->LastProfile();
  state.counters["run_plan_ms"] = pr.host_plan_ms;
  state.counters["run_check_ms"] = pr.host_check_ms;
  state.counters["run_enqueue_ms"] = pr.host_enqueue_ms;
  state.counters["run_gpu_ms"] = pr.gpu_ms;
  state.counters["packed_GBps"] = bytes * it / t_packed / 1e9;
  state.counters["raw_GBps"] = bytes * it / t_raw / 1e9;
  state.counters["raw_ms"] = t_raw / it * 1e3;
  state.counters["host_ms"] = t_host / it * 1e3;
  if (per_tensor) {
    state.counters["vs_per_tensor"] = t_per / t_packed;
    state.counters["per_tensor_GBps"] = bytes * it / t_per / 1e9;
    state.counters["per_tensor_ms"] = t_per / it * 1e3;
  }
  state.counters["sent_GB_busiest"] = static_cast<double>(b->max_sent_) / 1e9;
  state.counters["staging_MB"] = static_cast<double>(staging) / 1e6;
  state.counters["min_staging_MB"] = static_cast<double>(b->min_staging_) / 1e6;
}

void OnCrash(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  std::fprintf(stderr, "bench_exchange: signal %d\n", sig);
  backtrace_symbols_fd(frames, n, 2);
  _exit(128 + sig);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 2) {
    std::fprintf(stderr, "bench_exchange: needs 2 GPUs, found %d; nothing to run\n", gpus);
    return 0;
  }
  signal(SIGSEGV, OnCrash);
  signal(SIGABRT, OnCrash);
  struct Variant {
    const char* name;
    int32_t blocks;
    size_t target;
    bool per_tensor;
    bool registered;
    bool priorities = false;
    int32_t rounds = 4;
    bool min_staging = false;  // the smallest budget the workload allows
    bool overlap = false;      // eplbExchangeConfig_t.overlap_comm given
  };
  const eplb::cuda::ExchangeTuning kTuning;
  const Variant kDefault = {"default",
                            kTuning.max_copy_blocks,
                            kTuning.chunk_target_bytes,
                            true,
                            kTuning.register_staging,
                            kTuning.stream_priorities,
                            kTuning.ring_rounds,
                            false,
                            false};
  const size_t MB = size_t{1} << 20;
  const std::vector<Variant> kVariants = {
      {"min_staging", 64, 512 * MB, false, true, false, kTuning.ring_rounds, true},
      {"overlap_comm", 64, 512 * MB, false, true, false, kTuning.ring_rounds, false, true},
      {"min_staging_overlap_comm", 64, 512 * MB, false, true, false, kTuning.ring_rounds, true,
       true}};
  // EPLB_BENCH_N=2|4 and EPLB_BENCH_WORKLOAD=full|big select one case (one
  // process per case keeps each case's GPU memory to itself).
  const char* env_n = std::getenv("EPLB_BENCH_N");
  const char* env_wl = std::getenv("EPLB_BENCH_WORKLOAD");
  for (int n : {2, 4}) {
    if (n > gpus || (env_n && std::atoi(env_n) != n)) continue;
    for (const Workload* wl : {&kFull, &kBig}) {
      if (env_wl && std::string(env_wl) != (wl == &kFull ? "full" : "big")) continue;
      Bench* b = new Bench(n, *wl);
      std::vector<Variant> vs = {kDefault};
      if (wl == &kFull)
        vs.insert(vs.end(), kVariants.begin(), kVariants.end());
      else
        vs.push_back(kVariants[1]);  // overlap_comm
      for (const Variant& v : vs) {
        eplb::cuda::ExchangeTuning tuning;
        tuning.max_copy_blocks = v.blocks;
        tuning.chunk_target_bytes = v.target;
        tuning.register_staging = v.registered;
        tuning.stream_priorities = v.priorities;
        tuning.ring_rounds = v.rounds;
        std::string name =
            std::string("Exchange/N=") + std::to_string(n) + "/" + wl->name + "/" + v.name;
        benchmark::RegisterBenchmark(name.c_str(), BM_Exchange, b, tuning, v.per_tensor,
                                     v.min_staging, v.overlap)
            ->UseManualTime()
            ->Unit(benchmark::kMillisecond)
            ->Iterations(5);
      }
      benchmark::RunSpecifiedBenchmarks();
      benchmark::ClearRegisteredBenchmarks();
      delete b;
    }
  }
  benchmark::Shutdown();
  return 0;
}
