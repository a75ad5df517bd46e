// An engine-like loop over the state machine on one rank, shared by the
// thread-per-GPU (state.cc) and process-per-GPU (state_procs.cc) tests.
//
// Every pass routes skewed, drifting synthetic top-k ids (with some invalid
// ones) through eplbRouteCount for every layer, then steps; some passes are
// dummy (differently on each rank), some ask for stats. After every
// rearrangement the rank checks, against independent host computations:
//   - the all-reduced load equals the sum over ranks of the last W non-dummy
//     passes' valid ids (gathered through NCCL by the test itself);
//   - the placement and the device maps equal the host planner's plan for
//     that load against the previous placement;
//   - every byte of every slot (and of the pitch padding, never written)
//     holds the pattern of its (layer, expert, tensor, byte).
// And on stats passes, the device balancedness equals the host's from the
// physical ids route + count wrote. No ASSERT inside (a rank that returned
// early would hang the others); a CUDA/NCCL failure of the test itself aborts.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "cuda/state.h"
#include "eplb/eplb.h"
#include "planner.h"
#include "state_logic.h"

namespace eplb_state_test {

#define STATE_CK(expr)                                                                         \
  do {                                                                                         \
    cudaError_t e_ = (expr);                                                                   \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorName(e_)); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)
#define STATE_NK(expr)                                                                           \
  do {                                                                                           \
    ncclResult_t r_ = (expr);                                                                    \
    if (r_ != ncclSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, ncclGetErrorString(r_)); \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)
#define STATE_OK(expr)                                                       \
  do {                                                                       \
    eplbStatus_t s_ = (expr);                                                \
    if (s_ != EPLB_SUCCESS) {                                                \
      std::fprintf(stderr, "%s:%d %s: %s (%s)\n", __FILE__, __LINE__, #expr, \
                   eplbGetStatusString(s_), eplbGetLastErrorDetail());       \
      std::abort();                                                          \
    }                                                                        \
  } while (0)

struct LoopConfig {
  int32_t L = 6, E = 16, P = 24, G = 4, M = 2;
  int32_t window = 20, interval = 40, steps = 300;
  int32_t tokens = 256, top_k = 4;
  int rank_to_tamper = -1;  // forces a plan mismatch at the first rearrangement
  bool overlap = false;     // give the state a second communicator (overlap_comm)
};

struct RankResult {
  std::vector<std::vector<int32_t>> placements;  // after each rearrangement
  int64_t rearrangements = 0;
  // Balancedness of the first rearrangement on the all-reduced window load:
  // the placement in force before it and the one it committed.
  double planned_before = -1, planned_after = -1;
  double stats_before = 0, stats_after = 0;  // mean pass balancedness before/after the first
};

constexpr int kTensors = 2;
constexpr size_t kBytes[kTensors] = {1000, 2064};
constexpr size_t kPitch[kTensors] = {1024, 2080};
constexpr uint8_t kPad = 0xEE;

inline uint8_t Pattern(int32_t l, int32_t e, int t, size_t b) {
  uint32_t x = static_cast<uint32_t>(l + 1) * 2654435761u ^ static_cast<uint32_t>(e + 7) * 40503u ^
               static_cast<uint32_t>(t + 3) * 97u ^ static_cast<uint32_t>(b) * 0x9E3779B1u;
  x ^= x >> 15;
  x *= 0x2c1b3c6du;
  x ^= x >> 12;
  return static_cast<uint8_t>(x);
}

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Skewed, drifting ids of one pass: expert (hot + j) with weight ~ 1/(j+1),
// the hot set moving with the step; about 1% invalid ids.
inline void MakeIds(const LoopConfig& c, int64_t step, int rank, std::vector<int32_t>* ids) {
  ids->resize(static_cast<size_t>(c.L) * c.tokens * c.top_k);
  for (int32_t l = 0; l < c.L; ++l)
    for (int32_t i = 0; i < c.tokens * c.top_k; ++i) {
      const uint64_t h = Mix((static_cast<uint64_t>(step) << 40) ^ (uint64_t(rank) << 32) ^
                             (uint64_t(l) << 24) ^ static_cast<uint64_t>(i));
      int32_t id;
      if (h % 100 == 0) {
        id = (h >> 8) % 2 ? -1 : c.E;  // invalid: skipped by route + count
      } else {
        // Harmonic-like skew: j = floor(E / (1 + u * (E-1))) - 1 style.
        const double u = static_cast<double>((h >> 11) % 1000003) / 1000003.0;
        int32_t j = static_cast<int32_t>(u * u * u * c.E);
        if (j >= c.E) j = c.E - 1;
        id = static_cast<int32_t>((c.E / 2 + 3 * l + step / 60 + j) % c.E);
      }
      (*ids)[static_cast<size_t>(l) * c.tokens * c.top_k + i] = id;
    }
}

// The test's own collective: every rank's bytes, in rank order.
class Gather {
 public:
  Gather(ncclComm_t comm, int n, cudaStream_t s, size_t max_bytes) : comm_(comm), n_(n), s_(s) {
    STATE_CK(cudaMalloc(&d_, max_bytes * (n + 1)));
  }
  ~Gather() { (void)cudaFree(d_); }
  std::vector<uint8_t> All(const void* mine, size_t bytes) {
    std::vector<uint8_t> out(bytes * n_);
    char* d = static_cast<char*>(d_);
    STATE_CK(cudaMemcpyAsync(d, mine, bytes, cudaMemcpyHostToDevice, s_));
    STATE_NK(ncclAllGather(d, d + bytes, bytes, ncclUint8, comm_, s_));
    STATE_CK(cudaMemcpyAsync(out.data(), d + bytes, bytes * n_, cudaMemcpyDeviceToHost, s_));
    STATE_CK(cudaStreamSynchronize(s_));
    return out;
  }

 private:
  ncclComm_t comm_;
  int n_;
  cudaStream_t s_;
  void* d_ = nullptr;
};

// Runs the loop on this rank (the current device is the rank's GPU).
inline void RankLoop(int rank, int N, ncclComm_t comm, const LoopConfig& c, RankResult* res) {
  using namespace eplb;
  const int32_t L = c.L, E = c.E, P = c.P, S = P / N, W2 = P - E + 1;
  cudaStream_t stream;
  STATE_CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Gather gather(comm, N, stream, static_cast<size_t>(L) * P * 8 + 64);

  eplbStateConfig_t cfg = EPLB_STATE_CONFIG_INIT;
  cfg.num_layers = L;
  cfg.num_logical_experts = E;
  cfg.num_physical_experts = P;
  cfg.num_groups = c.G;
  cfg.num_nodes = c.M;
  cfg.num_ranks = N;
  cfg.rank = rank;
  cfg.window_size = c.window;
  cfg.step_interval = c.interval;
  {
    eplbExchangeConfig_t xc = EPLB_EXCHANGE_CONFIG_INIT;
    xc.num_layers = L;
    xc.num_physical_experts = P;
    xc.num_ranks = N;
    xc.rank = rank;
    std::vector<size_t> tb(static_cast<size_t>(L) * EPLB_EXCHANGE_MAX_TENSORS, 0);
    for (int32_t l = 0; l < L; ++l)
      for (int t = 0; t < kTensors; ++t) tb[l * EPLB_EXCHANGE_MAX_TENSORS + t] = kBytes[t];
    size_t min_bytes = 0;
    STATE_OK(eplbExchangeStagingQuery(&xc, tb.data(), nullptr, nullptr, &min_bytes, nullptr));
    cfg.staging_bytes = 2 * min_bytes;
  }
  ncclComm_t comm2 = nullptr;
  if (c.overlap) STATE_NK(ncclCommSplit(comm, 0, rank, &comm2, nullptr));
  cfg.overlap_comm = comm2;
  eplbState_t st = nullptr;
  STATE_OK(eplbStateCreate(&cfg, comm, &st));
  if (rank == c.rank_to_tamper) {
    bool once = true;
    st->impl->logic().SetPlanHookForTesting([once, P](int32_t* p) mutable {
      if (!once) return;
      once = false;
      // Swap slot 0 with a slot of the last rank holding another expert: a
      // valid plan, different from the other ranks'.
      for (int32_t j = P - 1; j >= P / 2; --j)
        if (p[j] != p[0]) {
          std::swap(p[0], p[j]);
          return;
        }
    });
  }

  // Weights: pattern of the initial placement, padding kPad.
  std::vector<int32_t> placement(static_cast<size_t>(L) * P);
  STATE_OK(eplbStateGetPlacement(st, placement.data()));
  std::vector<void*> d_w(static_cast<size_t>(L) * kTensors);
  auto fill_host = [&](int32_t l, int t, const std::vector<int32_t>& p2l) {
    std::vector<uint8_t> h(S * kPitch[t], kPad);
    for (int32_t s = 0; s < S; ++s)
      for (size_t b = 0; b < kBytes[t]; ++b)
        h[s * kPitch[t] + b] = Pattern(l, p2l[l * P + rank * S + s], t, b);
    return h;
  };
  for (int32_t l = 0; l < L; ++l) {
    eplbTensorDesc_t td[kTensors];
    for (int t = 0; t < kTensors; ++t) {
      void*& d = d_w[l * kTensors + t];
      STATE_CK(cudaMalloc(&d, S * kPitch[t]));
      std::vector<uint8_t> h = fill_host(l, t, placement);
      STATE_CK(cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice));
      td[t].d_slots = d;
      td[t].bytes_per_slot = kBytes[t];
      td[t].pitch_bytes = kPitch[t];
    }
    STATE_OK(eplbStateRegisterLayer(st, l, td, kTensors));
  }
  // Bytes of the weights w [L * kTensors][S * pitch] that differ from the
  // pattern of placement p2l.
  auto bad_bytes = [&](const std::vector<int32_t>& p2l,
                       const std::vector<std::vector<uint8_t>>& w) {
    int64_t bad = 0;
    for (int32_t l = 0; l < L; ++l)
      for (int t = 0; t < kTensors; ++t) {
        const std::vector<uint8_t> want = fill_host(l, t, p2l);
        const std::vector<uint8_t>& got = w[l * kTensors + t];
        for (size_t i = 0; i < want.size(); ++i) bad += got[i] != want[i];
      }
    return bad;
  };
  // The weights as work on `stream` sees them at this point of the stream
  // (copies in stream order; pageable, so they may block the host).
  auto weights_seen = [&] {
    std::vector<std::vector<uint8_t>> w(static_cast<size_t>(L) * kTensors);
    for (int32_t l = 0; l < L; ++l)
      for (int t = 0; t < kTensors; ++t) {
        std::vector<uint8_t>& v = w[l * kTensors + t];
        v.resize(S * kPitch[t]);
        STATE_CK(cudaMemcpyAsync(v.data(), d_w[l * kTensors + t], v.size(), cudaMemcpyDeviceToHost,
                                 stream));
      }
    return w;
  };
  auto weights_ok = [&](const std::vector<int32_t>& p2l) {
    const auto w = weights_seen();
    STATE_CK(cudaStreamSynchronize(stream));
    return bad_bytes(p2l, w);
  };

  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  STATE_OK(eplbStateGetDeviceMaps(st, &maps));
  const size_t TK = static_cast<size_t>(c.tokens) * c.top_k;
  int32_t *d_ids = nullptr, *d_phys = nullptr;
  STATE_CK(cudaMalloc(&d_ids, L * TK * sizeof(int32_t)));
  STATE_CK(cudaMalloc(&d_phys, L * TK * sizeof(int32_t)));

  const PlanShape ps = PlanningShape([&] {
    PlanShape s;
    s.num_layers = L;
    s.num_logical_experts = E;
    s.num_physical_experts = P;
    s.num_groups = c.G;
    s.num_nodes = c.M;
    s.num_ranks = N;
    return s;
  }());
  Planner planner;
  std::deque<std::vector<int64_t>> window;  // this rank's last W non-dummy passes [L][E]
  const int32_t first = c.interval - c.interval / 4;
  int64_t expected_rearrangements = 0;
  double sum_before = 0, sum_after = 0;
  int n_before = 0, n_after = 0;
  std::vector<int32_t> ids;
  for (int64_t step = 0; step < c.steps; ++step) {
    MakeIds(c, step, rank, &ids);
    std::vector<int64_t> pass(static_cast<size_t>(L) * E, 0);
    for (int32_t l = 0; l < L; ++l)
      for (size_t i = 0; i < TK; ++i) {
        const int32_t id = ids[l * TK + i];
        if (id >= 0 && id < E) ++pass[l * E + id];
      }
    STATE_CK(cudaMemcpyAsync(d_ids, ids.data(), ids.size() * sizeof(int32_t),
                             cudaMemcpyHostToDevice, stream));
    for (int32_t l = 0; l < L; ++l)
      STATE_OK(eplbRouteCount(d_ids + l * TK, EPLB_ID_INT32, c.tokens, nullptr, c.top_k,
                              maps.d_log2phy + static_cast<size_t>(l) * E * W2,
                              maps.d_logcnt + static_cast<size_t>(l) * E, E, P, maps.d_record,
                              d_phys + l * TK, maps.d_load_pass + static_cast<size_t>(l) * P,
                              maps.d_invalid_count, stream));
    const bool dummy = (step + rank) % 9 == 4;
    const bool stats = step % 10 == 5;
    if (!dummy) {
      window.push_back(pass);
      if (window.size() > static_cast<size_t>(c.window)) window.pop_front();
    }
    // Host reference of the pass's rank tokens (from the physical ids).
    std::vector<int64_t> slot_tokens(static_cast<size_t>(L) * P, 0);
    if (stats && !dummy) {
      std::vector<int32_t> phys(L * TK);
      STATE_CK(cudaMemcpyAsync(phys.data(), d_phys, phys.size() * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream));
      STATE_CK(cudaStreamSynchronize(stream));
      for (int32_t l = 0; l < L; ++l)
        for (size_t i = 0; i < TK; ++i)
          if (phys[l * TK + i] >= 0) ++slot_tokens[l * P + phys[l * TK + i]];
    }
    const std::vector<int32_t> old = placement;
    const uint32_t flags = (dummy ? EPLB_STEP_DUMMY : 0u) | (stats ? EPLB_STEP_STATS : 0u);
    const eplbStatus_t status = eplbStateStep(st, flags, stream);
    const bool scheduled = step + 1 >= first && (step + 1 - first) % c.interval == 0;
    // What work enqueued right after the step sees, before any host sync:
    // the maps must describe the weights already (the exchange is ordered
    // before the commit on the stream). Checked after the sync below.
    std::vector<int32_t> seen_p2l(scheduled ? static_cast<size_t>(L) * P : 0);
    std::vector<std::vector<uint8_t>> seen_w;
    if (scheduled) {
      STATE_CK(cudaMemcpyAsync(seen_p2l.data(), maps.d_phy2log, seen_p2l.size() * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream));
      seen_w = weights_seen();
    }
    if (scheduled) ++expected_rearrangements;
    eplbStateStats_t ss = EPLB_STATE_STATS_INIT;
    STATE_OK(eplbStateGetStats(st, &ss));
    EXPECT_EQ(ss.num_steps, step + 1);
    EXPECT_EQ(ss.num_rearrangements, expected_rearrangements) << "step " << step;
    if (stats) {
      auto all = gather.All(slot_tokens.data(), slot_tokens.size() * sizeof(int64_t));
      const int64_t* a = reinterpret_cast<const int64_t*>(all.data());
      double acc = 0;
      for (int32_t l = 0; l < L; ++l) {
        int64_t tot = 0, mx = 0;
        for (int32_t r = 0; r < N; ++r) {
          int64_t v = 0;
          for (int q = 0; q < N; ++q)
            for (int32_t s = 0; s < S; ++s)
              v += a[static_cast<size_t>(q) * L * P + l * P + r * S + s];
          tot += v;
          mx = std::max(mx, v);
        }
        acc += mx == 0 ? 1.0 : (static_cast<double>(tot) / N) / static_cast<double>(mx);
      }
      eplbStepBalance_t b;
      STATE_CK(cudaMemcpyAsync(&b, maps.d_step_balance, sizeof(b), cudaMemcpyDeviceToHost, stream));
      STATE_CK(cudaStreamSynchronize(stream));
      EXPECT_EQ(b.step, step);
      EXPECT_DOUBLE_EQ(b.balancedness, acc / L) << "step " << step;
      if (expected_rearrangements == 0) {
        sum_before += acc / L;
        ++n_before;
      } else if (step >= first + 5 && step < first + c.interval) {
        sum_after += acc / L;
        ++n_after;
      }
    }
    if (!scheduled) {
      EXPECT_EQ(status, EPLB_SUCCESS) << eplbGetLastErrorDetail();
      continue;
    }
    STATE_OK(eplbStateGetPlacement(st, placement.data()));
    STATE_CK(cudaStreamSynchronize(stream));
    EXPECT_EQ(bad_bytes(seen_p2l, seen_w), 0)
        << "rank " << rank << " step " << step << ": maps seen before their weights";
    // The device maps (after the stream's work) are those of placement p2l.
    auto expect_device_maps = [&](const std::vector<int32_t>& p2l) {
      std::vector<int32_t> cnt(static_cast<size_t>(L) * E), l2p(static_cast<size_t>(L) * E * W2);
      BuildLogCnt(ps, p2l.data(), cnt.data());
      BuildLog2Phy(ps, p2l.data(), l2p.data());
      std::vector<int32_t> dp(p2l.size()), dc(cnt.size()), dl(l2p.size());
      STATE_CK(cudaMemcpy(dp.data(), maps.d_phy2log, dp.size() * 4, cudaMemcpyDeviceToHost));
      STATE_CK(cudaMemcpy(dc.data(), maps.d_logcnt, dc.size() * 4, cudaMemcpyDeviceToHost));
      STATE_CK(cudaMemcpy(dl.data(), maps.d_log2phy, dl.size() * 4, cudaMemcpyDeviceToHost));
      EXPECT_EQ(dp, p2l) << "rank " << rank << " step " << step;
      EXPECT_EQ(dc, cnt) << "rank " << rank << " step " << step;
      EXPECT_EQ(dl, l2p) << "rank " << rank << " step " << step;
    };
    if (c.rank_to_tamper >= 0 && expected_rearrangements == 1) {
      EXPECT_EQ(status, EPLB_ERROR_MISMATCH) << "rank " << rank;
      EXPECT_EQ(ss.last_status, EPLB_ERROR_MISMATCH);
      EXPECT_EQ(placement, old);
      STATE_CK(cudaStreamSynchronize(stream));
      expect_device_maps(old);
      EXPECT_EQ(weights_ok(old), 0) << "rank " << rank;
      continue;
    }
    EXPECT_EQ(status, EPLB_SUCCESS) << "rank " << rank << ": " << eplbGetLastErrorDetail();
    STATE_CK(cudaStreamSynchronize(stream));
    // Expected load: the sum over ranks of their windows.
    std::vector<int64_t> mine(static_cast<size_t>(L) * E, 0);
    for (const auto& p : window)
      for (size_t i = 0; i < mine.size(); ++i) mine[i] += p[i];
    auto all = gather.All(mine.data(), mine.size() * sizeof(int64_t));
    std::vector<int64_t> load(mine.size(), 0);
    for (int q = 0; q < N; ++q)
      for (size_t i = 0; i < load.size(); ++i)
        load[i] += reinterpret_cast<const int64_t*>(all.data())[q * load.size() + i];
    EXPECT_EQ(st->impl->logic().last_load(), load) << "rank " << rank << " step " << step;
    std::vector<int32_t> plan(old.size()), logcnt(static_cast<size_t>(L) * E);
    planner.Plan(ps, ResolvePolicy(ps, Policy::kAuto), Migration::kFull, load.data(), old.data(),
                 plan.data(), logcnt.data(), nullptr);
    EXPECT_EQ(placement, plan) << "rank " << rank << " step " << step;
    expect_device_maps(plan);
    EXPECT_EQ(weights_ok(plan), 0) << "rank " << rank << " step " << step;
    EXPECT_EQ(ss.last_slots_moved, CountMovedSlots(ps, plan.data(), old.data()));
    // The reported balance is that of the old and new placements on the load.
    EXPECT_DOUBLE_EQ(ss.last_balancedness_before,
                     Evaluate(ps, load.data(), old.data(), nullptr, nullptr).balancedness);
    EXPECT_DOUBLE_EQ(ss.last_balancedness_after,
                     Evaluate(ps, load.data(), plan.data(), nullptr, nullptr).balancedness);
    EXPECT_EQ(ss.last_layers_committed, ss.last_slots_moved > 0 ? L : 0);
    for (int p = 0; p < EPLB_STATE_NUM_PHASES; ++p) EXPECT_GE(ss.last_device_ms[p], 0.0) << p;
    if (res->placements.empty()) {
      res->planned_before = ss.last_balancedness_before;
      res->planned_after = ss.last_balancedness_after;
    }
    res->placements.push_back(plan);
  }
  res->rearrangements = expected_rearrangements;
  res->stats_before = n_before ? sum_before / n_before : 0;
  res->stats_after = n_after ? sum_after / n_after : 0;
  unsigned long long invalid = 0;
  STATE_CK(cudaMemcpy(&invalid, maps.d_invalid_count, sizeof(invalid), cudaMemcpyDeviceToHost));
  EXPECT_GT(invalid, 0u);

  STATE_OK(eplbStateDestroy(st));
  // This rank's collectives are all done: destroying the communicator now
  // cannot wait on a peer that waits for this rank.
  if (comm2) STATE_NK(ncclCommDestroy(comm2));
  for (void* d : d_w) STATE_CK(cudaFree(d));
  STATE_CK(cudaFree(d_ids));
  STATE_CK(cudaFree(d_phys));
  STATE_CK(cudaStreamDestroy(stream));
}

}  // namespace eplb_state_test
