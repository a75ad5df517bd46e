// The packed exchange on real GPUs: one thread per GPU (ncclCommInitRank) and
// one process per GPU (fork/exec of this binary). Every expert's tensors are
// filled with a pattern of (layer, logical expert, tensor, byte); after every
// exchange every byte of every slot on every rank is checked against its new
// expert, and the bytes between rows (pitch padding) must stay untouched.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "eplb/eplb.h"
#include "gpu_env.h"

namespace {

// Three tensors of different row sizes: a large one within one tile, one
// spanning tiles with a tail (16-byte aligned rows), and a scales-like row of
// odd size and pitch (byte path).
constexpr int kNumTensors = 3;
constexpr size_t kBytes[kNumTensors] = {12288, 40008, 37};
constexpr size_t kPitch[kNumTensors] = {12288, 40064, 37};
constexpr uint8_t kPadByte = 0xEE;

struct Shape {
  int32_t L = 5, E = 0, P = 0, N = 0, S = 6;
  std::vector<int32_t> rank_node;  // empty = one node
};

Shape MakeShape(int32_t N, bool two_nodes) {
  Shape s;
  s.N = N;
  s.P = N * s.S;
  s.E = s.P * 3 / 4;
  if (two_nodes)
    for (int32_t r = 0; r < N; ++r) s.rank_node.push_back(r < N / 2 ? 0 : 1);
  return s;
}

uint8_t Pattern(int32_t layer, int32_t expert, int32_t tensor, size_t byte) {
  uint32_t x =
      static_cast<uint32_t>(layer) * 0x9E3779B1u ^ static_cast<uint32_t>(expert) * 0x85EBCA77u ^
      static_cast<uint32_t>(tensor) * 0xC2B2AE3Du ^ static_cast<uint32_t>(byte) * 0x27D4EB2Fu;
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  return static_cast<uint8_t>(x);
}

#define RETURN_IF(cond, ...)                          \
  do {                                                \
    if (cond) {                                       \
      char buf_[512];                                 \
      std::snprintf(buf_, sizeof(buf_), __VA_ARGS__); \
      return std::string(buf_);                       \
    }                                                 \
  } while (0)
#define CUDA_OR_RETURN(expr)                                                                 \
  do {                                                                                       \
    cudaError_t e_ = (expr);                                                                 \
    RETURN_IF(e_ != cudaSuccess, "%s: %s (line %d)", #expr, cudaGetErrorName(e_), __LINE__); \
  } while (0)

// One rank: its device, communicator, stream, weights and exchange handle.
class Rank {
 public:
  Rank(const Shape& s, int32_t rank) : s_(s), rank_(rank) {}
  ~Rank() {
    cudaSetDevice(rank_);
    if (ex_) eplbExchangeDestroy(ex_);
    for (auto& l : d_)
      for (void* p : l)
        if (p) cudaFree(p);
    if (stream_) cudaStreamDestroy(stream_);
    if (small_comm_) ncclCommDestroy(small_comm_);
    if (comm2_) ncclCommDestroy(comm2_);
    if (comm_) ncclCommDestroy(comm_);
  }

  // Device, communicator (collective: call on every rank concurrently),
  // stream and weights; with `overlap`, also a second communicator split
  // from the first (once: an engine makes it at start-up), which the
  // exchanges created from then on get as their overlap_comm.
  std::string Init(const ncclUniqueId& id, bool overlap = false) {
    CUDA_OR_RETURN(cudaSetDevice(rank_));
    ncclResult_t r = ncclCommInitRank(&comm_, s_.N, id, rank_);
    RETURN_IF(r != ncclSuccess, "ncclCommInitRank: %s", ncclGetErrorString(r));
    if (overlap) {
      r = ncclCommSplit(comm_, 0, rank_, &comm2_, nullptr);
      RETURN_IF(r != ncclSuccess, "ncclCommSplit: %s", ncclGetErrorString(r));
      overlap_ = comm2_;
    }
    CUDA_OR_RETURN(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    d_.assign(s_.L, {});
    for (int32_t l = 0; l < s_.L; ++l)
      for (int t = 0; t < kNumTensors; ++t) CUDA_OR_RETURN(cudaMalloc(&d_[l][t], kPitch[t] * s_.S));
    return "";
  }

  std::string CreateExchange(size_t staging_bytes) {
    if (ex_) eplbExchangeDestroy(ex_);
    ex_ = nullptr;
    eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
    cfg.num_layers = s_.L;
    cfg.num_physical_experts = s_.P;
    cfg.num_ranks = s_.N;
    cfg.rank = rank_;
    cfg.h_rank_node = s_.rank_node.empty() ? nullptr : s_.rank_node.data();
    cfg.staging_bytes = staging_bytes;
    cfg.device = rank_;
    cfg.overlap_comm = overlap_;
    eplbStatus_t st = eplbExchangeCreate(&cfg, comm_, &ex_);
    RETURN_IF(st != EPLB_SUCCESS, "eplbExchangeCreate: %s", eplbGetLastErrorDetail());
    for (int32_t l = 0; l < s_.L; ++l) {
      eplbTensorDesc_t t[kNumTensors];
      for (int k = 0; k < kNumTensors; ++k) t[k] = {d_[l][k], kBytes[k], kPitch[k]};
      st = eplbExchangeRegisterLayer(ex_, l, t, kNumTensors, s_.S);
      RETURN_IF(st != EPLB_SUCCESS, "eplbExchangeRegisterLayer: %s", eplbGetLastErrorDetail());
    }
    return "";
  }

  // Writes the pattern of `placement` [L][P] into this rank's slots.
  std::string Fill(const std::vector<int32_t>& placement) {
    CUDA_OR_RETURN(cudaSetDevice(rank_));
    for (int32_t l = 0; l < s_.L; ++l)
      for (int t = 0; t < kNumTensors; ++t) {
        std::vector<uint8_t> h(kPitch[t] * s_.S, kPadByte);
        for (int32_t i = 0; i < s_.S; ++i) {
          int32_t e = placement[static_cast<size_t>(l) * s_.P + rank_ * s_.S + i];
          for (size_t b = 0; b < kBytes[t]; ++b) h[i * kPitch[t] + b] = Pattern(l, e, t, b);
        }
        CUDA_OR_RETURN(cudaMemcpy(d_[l][t], h.data(), h.size(), cudaMemcpyHostToDevice));
      }
    return "";
  }

  // Every byte of every slot against `placement`; padding untouched.
  std::string Verify(const std::vector<int32_t>& placement) {
    CUDA_OR_RETURN(cudaSetDevice(rank_));
    CUDA_OR_RETURN(cudaStreamSynchronize(stream_));
    for (int32_t l = 0; l < s_.L; ++l)
      for (int t = 0; t < kNumTensors; ++t) {
        std::vector<uint8_t> h(kPitch[t] * s_.S);
        CUDA_OR_RETURN(cudaMemcpy(h.data(), d_[l][t], h.size(), cudaMemcpyDeviceToHost));
        for (int32_t i = 0; i < s_.S; ++i) {
          int32_t e = placement[static_cast<size_t>(l) * s_.P + rank_ * s_.S + i];
          for (size_t b = 0; b < kPitch[t]; ++b) {
            uint8_t want = b < kBytes[t] ? Pattern(l, e, t, b) : kPadByte;
            RETURN_IF(h[i * kPitch[t] + b] != want,
                      "rank %d layer %d slot %d tensor %d byte %zu: got %u, want %u (expert %d)",
                      rank_, l, i, t, b, h[i * kPitch[t] + b], want, e);
          }
        }
      }
    return "";
  }

  eplbStatus_t Run(const std::vector<int32_t>& old_p, const std::vector<int32_t>& new_p,
                   int32_t first, int32_t n, eplbExchangeStats_t* stats) {
    return eplbExchangeRun(ex_, old_p.data() + static_cast<size_t>(first) * s_.P,
                           new_p.data() + static_cast<size_t>(first) * s_.P, first, n, stats,
                           stream_);
  }

  int32_t rank() const { return rank_; }
  ncclComm_t comm() const { return comm_; }
  ncclComm_t comm2() const { return comm2_; }
  // The overlap_comm of the exchanges created from now on (may be any
  // communicator, to test the checks).
  void SetOverlap(ncclComm_t c) { overlap_ = c; }
  // A communicator kept until the rank is destroyed (after every thread has
  // joined: tearing one down while the other ranks of this process wait in
  // a collective can block).
  void Keep(ncclComm_t c) { small_comm_ = c; }

 private:
  Shape s_;
  int32_t rank_;
  ncclComm_t comm_ = nullptr;
  ncclComm_t comm2_ = nullptr;       // split from comm_ when Init(.., true)
  ncclComm_t overlap_ = nullptr;     // the exchanges' overlap_comm
  ncclComm_t small_comm_ = nullptr;  // see Keep
  cudaStream_t stream_ = nullptr;
  eplbExchange_t ex_ = nullptr;
  std::vector<std::array<void*, kNumTensors>> d_;
};

// ---- placements (identical on every rank: same seed, same sequence) ----

std::vector<int32_t> RandomPlacement(std::mt19937_64& rng, const Shape& s) {
  std::vector<int32_t> out;
  for (int32_t l = 0; l < s.L; ++l) {
    std::vector<int32_t> p(s.P);
    for (int32_t i = 0; i < s.P; ++i)
      p[i] = i < s.E ? i : static_cast<int32_t>(rng() % static_cast<uint64_t>(s.E));
    std::shuffle(p.begin(), p.end(), rng);
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// The planner's migration-aware output for a random skewed load.
std::string PlannedPlacement(std::mt19937_64& rng, const Shape& s,
                             const std::vector<int32_t>& old_p, std::vector<int32_t>* out) {
  std::vector<int64_t> load(static_cast<size_t>(s.L) * s.E);
  for (auto& w : load) {
    double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    w = static_cast<int64_t>(1000.0 * u * u * u * u) + 1;  // skewed
  }
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  cfg.num_layers = s.L;
  cfg.num_logical_experts = s.E;
  cfg.num_physical_experts = s.P;
  cfg.num_groups = 1;
  cfg.num_nodes = 1;
  cfg.num_ranks = s.N;
  cfg.policy = EPLB_POLICY_GLOBAL;
  std::vector<int32_t> phy(static_cast<size_t>(s.L) * s.P), cnt(static_cast<size_t>(s.L) * s.E);
  eplbStatus_t st =
      eplbPlanCompute(&cfg, load.data(), old_p.data(), phy.data(), cnt.data(), nullptr, nullptr);
  RETURN_IF(st != EPLB_SUCCESS, "eplbPlanCompute: %s", eplbGetLastErrorDetail());
  *out = phy;
  return "";
}

std::vector<int32_t> Perturb(std::mt19937_64& rng, const Shape& s, std::vector<int32_t> p) {
  int swaps = 1 + static_cast<int>(rng() % (s.P / 2));
  for (int k = 0; k < swaps; ++k) {
    int32_t l = static_cast<int32_t>(rng() % s.L);
    size_t a = static_cast<size_t>(l) * s.P + rng() % s.P,
           b = static_cast<size_t>(l) * s.P + rng() % s.P;
    std::swap(p[a], p[b]);
  }
  return p;
}

// Runs fn(rank) on every rank concurrently (each Run is collective and
// blocks in its agreement check); returns the ranks' error texts.
std::vector<std::string> OnAllRanks(std::vector<Rank*>& ranks,
                                    const std::function<std::string(Rank&)>& fn) {
  std::vector<std::string> errs(ranks.size());
  std::vector<std::thread> th;
  for (size_t r = 0; r < ranks.size(); ++r)
    th.emplace_back([&, r] {
      cudaSetDevice(ranks[r]->rank());
      errs[r] = fn(*ranks[r]);
    });
  for (auto& t : th) t.join();
  return errs;
}

std::string Join(const std::vector<std::string>& errs) {
  std::string all;
  for (size_t r = 0; r < errs.size(); ++r)
    if (!errs[r].empty()) all += "[rank " + std::to_string(r) + "] " + errs[r] + "\n";
  return all;
}

size_t QueryBudget(const Shape& s, const std::vector<int32_t>* old_p,
                   const std::vector<int32_t>* new_p) {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  cfg.num_layers = s.L;
  cfg.num_physical_experts = s.P;
  cfg.num_ranks = s.N;
  cfg.h_rank_node = s.rank_node.empty() ? nullptr : s.rank_node.data();
  std::vector<size_t> tb(static_cast<size_t>(s.L) * EPLB_EXCHANGE_MAX_TENSORS, 0);
  for (int32_t l = 0; l < s.L; ++l)
    for (int t = 0; t < kNumTensors; ++t) tb[l * EPLB_EXCHANGE_MAX_TENSORS + t] = kBytes[t];
  size_t min_bytes = 0;
  eplbStatus_t st = eplbExchangeStagingQuery(&cfg, tb.data(), old_p ? old_p->data() : nullptr,
                                             new_p ? new_p->data() : nullptr, &min_bytes, nullptr);
  return st == EPLB_SUCCESS ? min_bytes : 0;
}

enum class Budget { kWorstCase, kExactMin, kLarge };

// The scenario every rank runs (threads or processes): `iters` successive
// rearrangements from one seed; budgets per `mode`; every 10th iteration the
// move is undone and redone and the redo's stats must equal the first's.
std::string RandomRearrangements(Rank& rank, const Shape& s, uint64_t seed, int iters,
                                 Budget mode) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> cur = RandomPlacement(rng, s);
  std::string err = rank.Fill(cur);
  if (!err.empty()) return err;
  const size_t worst = QueryBudget(s, nullptr, nullptr);
  RETURN_IF(worst == 0, "staging query failed: %s", eplbGetLastErrorDetail());
  if (mode != Budget::kExactMin) {
    err = rank.CreateExchange(mode == Budget::kLarge ? 4 * worst : worst);
    if (!err.empty()) return err;
  }
  for (int it = 0; it < iters; ++it) {
    std::vector<int32_t> next;
    switch (it % 4) {
      case 0:
        next = RandomPlacement(rng, s);
        break;
      case 1:
        next = Perturb(rng, s, cur);
        break;
      case 2:
        err = PlannedPlacement(rng, s, cur, &next);
        if (!err.empty()) return err;
        break;
      default:
        next = it % 8 == 3 ? cur : Perturb(rng, s, cur);
        break;  // sometimes nothing moves
    }
    int32_t first = 0, n = s.L;
    if (it % 5 == 4) {  // a sub-range: the other layers keep their placement
      first = static_cast<int32_t>(rng() % s.L);
      n = 1 + static_cast<int32_t>(rng() % (s.L - first));
      for (int32_t l = 0; l < s.L; ++l)
        if (l < first || l >= first + n)
          std::copy(cur.begin() + l * s.P, cur.begin() + (l + 1) * s.P, next.begin() + l * s.P);
    }
    if (mode == Budget::kExactMin) {
      const size_t min_bytes = QueryBudget(s, &cur, &next);
      RETURN_IF(min_bytes == 0, "staging query failed: %s", eplbGetLastErrorDetail());
      if (it % 3 == 0 && min_bytes > 16) {
        // One byte below the minimum: refused on every rank, nothing moves.
        err = rank.CreateExchange(min_bytes - 1);
        if (!err.empty()) return err;
        eplbStatus_t st = rank.Run(cur, next, first, n, nullptr);
        RETURN_IF(st != EPLB_ERROR_INVALID_USAGE,
                  "iteration %d: budget %zu below minimum %zu: "
                  "status %d (%s)",
                  it, min_bytes - 1, min_bytes, st, eplbGetLastErrorDetail());
        err = rank.Verify(cur);
        if (!err.empty()) return "after refused run: " + err;
      }
      err = rank.CreateExchange(min_bytes);
      if (!err.empty()) return err;
    }
    eplbExchangeStats_t st1 = EPLB_EXCHANGE_STATS_INIT;
    eplbStatus_t st = rank.Run(cur, next, first, n, &st1);
    RETURN_IF(st != EPLB_SUCCESS, "iteration %d: eplbExchangeRun: %s", it,
              eplbGetLastErrorDetail());
    RETURN_IF(st1.num_layers_done != n, "iteration %d: num_layers_done %d != %d", it,
              st1.num_layers_done, n);
    RETURN_IF(st1.slots_kept + st1.slots_copied_local + st1.slots_received !=
                  static_cast<int64_t>(n) * s.S,
              "iteration %d: slot counts do not add up", it);
    err = rank.Verify(next);
    if (!err.empty()) return "iteration " + std::to_string(it) + ": " + err;
    if (it % 10 == 0) {
      // Determinism: undo, redo, same stats. The undo's staging need differs
      // from the move's (senders and duplicates differ): size for both.
      if (mode == Budget::kExactMin) {
        const size_t back_bytes = QueryBudget(s, &next, &cur);
        RETURN_IF(back_bytes == 0, "staging query failed: %s", eplbGetLastErrorDetail());
        err = rank.CreateExchange(std::max(back_bytes, QueryBudget(s, &cur, &next)));
        if (!err.empty()) return err;
      }
      eplbExchangeStats_t back = EPLB_EXCHANGE_STATS_INIT, st2 = EPLB_EXCHANGE_STATS_INIT;
      RETURN_IF(rank.Run(next, cur, first, n, &back) != EPLB_SUCCESS, "undo: %s",
                eplbGetLastErrorDetail());
      err = rank.Verify(cur);
      if (!err.empty()) return "undo: " + err;
      RETURN_IF(rank.Run(cur, next, first, n, &st2) != EPLB_SUCCESS, "redo: %s",
                eplbGetLastErrorDetail());
      err = rank.Verify(next);
      if (!err.empty()) return "redo: " + err;
      // The exact-minimum mode redid it with a larger budget: the rounds
      // (num_chunks) may differ, the moves may not.
      RETURN_IF(
          st1.bytes_sent != st2.bytes_sent || st1.bytes_received != st2.bytes_received ||
              st1.bytes_copied_local != st2.bytes_copied_local || st1.rows_sent != st2.rows_sent ||
              st1.rows_received != st2.rows_received || st1.slots_received != st2.slots_received ||
              st1.slots_copied_local != st2.slots_copied_local ||
              st1.slots_kept != st2.slots_kept || st1.num_layers_done != st2.num_layers_done ||
              (mode != Budget::kExactMin && st1.num_chunks != st2.num_chunks),
          "iteration %d: redo stats differ", it);
    }
    cur = next;
  }
  return "";
}

// Forced disagreement: every rank must refuse and nothing may move; then an
// invalid input on one rank; then a valid run still works.
std::string MismatchScenario(Rank& rank, const Shape& s) {
  std::mt19937_64 rng(99);
  std::vector<int32_t> cur = RandomPlacement(rng, s);
  std::vector<int32_t> next = RandomPlacement(rng, s);
  std::string err = rank.Fill(cur);
  if (!err.empty()) return err;
  err = rank.CreateExchange(QueryBudget(s, nullptr, nullptr));
  if (!err.empty()) return err;
  std::vector<int32_t> mine = next;
  if (rank.rank() == 1) mine[s.P] = (mine[s.P] + 1) % s.E;  // layer 1 differs, still valid
  eplbStatus_t st = rank.Run(cur, mine, 0, s.L, nullptr);
  RETURN_IF(st != EPLB_ERROR_MISMATCH, "different plans: status %d (%s)", st,
            eplbGetLastErrorDetail());
  err = rank.Verify(cur);
  if (!err.empty()) return "after mismatch: " + err;
  // Rank 0 passes an expert id outside [0, P): it reports the argument, the
  // others the mismatch; nobody hangs.
  mine = next;
  if (rank.rank() == 0) mine[3] = s.P;
  st = rank.Run(cur, mine, 0, s.L, nullptr);
  eplbStatus_t want = rank.rank() == 0 ? EPLB_ERROR_INVALID_ARGUMENT : EPLB_ERROR_MISMATCH;
  RETURN_IF(st != want, "invalid on rank 0: status %d, want %d (%s)", st, want,
            eplbGetLastErrorDetail());
  err = rank.Verify(cur);
  if (!err.empty()) return "after invalid input: " + err;
  // Different first_layer on one rank.
  st = rank.Run(cur, next, rank.rank() == 0 ? 1 : 0, s.L - 1, nullptr);
  RETURN_IF(st != EPLB_ERROR_MISMATCH, "different range: status %d (%s)", st,
            eplbGetLastErrorDetail());
  err = rank.Verify(cur);
  if (!err.empty()) return "after range mismatch: " + err;
  st = rank.Run(cur, next, 0, s.L, nullptr);
  RETURN_IF(st != EPLB_SUCCESS, "valid run after mismatches: %s", eplbGetLastErrorDetail());
  return rank.Verify(next);
}

// The second communicator's checks and agreement: one the exchange must
// refuse at Create (the communicator itself, one of another size), one rank
// with it and the others without (every rank refuses the Run, nothing
// moves), then every rank with it.
std::string OverlapScenario(Rank& rank, const Shape& s) {
  std::mt19937_64 rng(4711);
  std::vector<int32_t> cur = RandomPlacement(rng, s);
  std::vector<int32_t> next = RandomPlacement(rng, s);
  std::string err = rank.Fill(cur);
  if (!err.empty()) return err;
  const size_t budget = QueryBudget(s, nullptr, nullptr);
  rank.SetOverlap(rank.comm());
  err = rank.CreateExchange(budget);
  RETURN_IF(err.find("overlap_comm must be a second communicator") == std::string::npos,
            "overlap_comm == comm accepted or wrong message: '%s'", err.c_str());
  // Rank 0 alone in a communicator of its own (collective split; the other
  // ranks get none).
  ncclComm_t small = nullptr;
  ncclResult_t r =
      ncclCommSplit(rank.comm(), rank.rank() == 0 ? 0 : NCCL_SPLIT_NOCOLOR, 0, &small, nullptr);
  RETURN_IF(r != ncclSuccess, "ncclCommSplit: %s", ncclGetErrorString(r));
  rank.Keep(small);
  if (rank.rank() == 0) {
    rank.SetOverlap(small);
    err = rank.CreateExchange(budget);
    RETURN_IF(err.find("must match the communicator") == std::string::npos,
              "overlap_comm of size 1 accepted or wrong message: '%s'", err.c_str());
  }
  // Disagreement: only rank 0 alternates communicators.
  rank.SetOverlap(rank.rank() == 0 ? rank.comm2() : nullptr);
  err = rank.CreateExchange(budget);
  if (!err.empty()) return err;
  eplbStatus_t st = rank.Run(cur, next, 0, s.L, nullptr);
  RETURN_IF(st != EPLB_ERROR_MISMATCH, "overlap on rank 0 only: status %d (%s)", st,
            eplbGetLastErrorDetail());
  err = rank.Verify(cur);
  if (!err.empty()) return "after overlap mismatch: " + err;
  rank.SetOverlap(rank.comm2());
  err = rank.CreateExchange(budget);
  if (!err.empty()) return err;
  st = rank.Run(cur, next, 0, s.L, nullptr);
  RETURN_IF(st != EPLB_SUCCESS, "overlap on every rank: %s", eplbGetLastErrorDetail());
  return rank.Verify(next);
}

// Threads: one per GPU.
void RunThreaded(int32_t N, bool two_nodes,
                 const std::function<std::string(Rank&, const Shape&)>& scenario,
                 bool overlap = false) {
  Shape s = MakeShape(N, two_nodes);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  std::vector<std::unique_ptr<Rank>> owned;
  std::vector<Rank*> ranks;
  for (int32_t r = 0; r < N; ++r) {
    owned.push_back(std::make_unique<Rank>(s, r));
    ranks.push_back(owned.back().get());
  }
  std::string init = Join(OnAllRanks(ranks, [&](Rank& r) { return r.Init(id, overlap); }));
  ASSERT_TRUE(init.empty()) << init;
  std::string errs = Join(OnAllRanks(ranks, [&](Rank& r) { return scenario(r, s); }));
  EXPECT_TRUE(errs.empty()) << errs;
}

int32_t RanksForTest() {
  return std::min(eplb_test::GpuCount(), 4);
}

TEST(ExchangeThreads, RandomRearrangementsWorstCaseBudget) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(RanksForTest(), false, [](Rank& r, const Shape& s) {
    return RandomRearrangements(r, s, 1234, 200, Budget::kWorstCase);
  });
}

TEST(ExchangeThreads, RandomRearrangementsExactMinimumBudget) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(RanksForTest(), false, [](Rank& r, const Shape& s) {
    return RandomRearrangements(r, s, 777, 60, Budget::kExactMin);
  });
}

TEST(ExchangeThreads, RandomRearrangementsLargeBudgetPipelined) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(RanksForTest(), false, [](Rank& r, const Shape& s) {
    return RandomRearrangements(r, s, 4242, 100, Budget::kLarge);
  });
}

TEST(ExchangeThreads, TwoRanksOnly) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(2, false, [](Rank& r, const Shape& s) {
    return RandomRearrangements(r, s, 55, 60, Budget::kWorstCase);
  });
}

TEST(ExchangeThreads, FourRanksAsTwoNodes) {
  EPLB_REQUIRE_GPUS(4);
  RunThreaded(4, true, [](Rank& r, const Shape& s) {
    return RandomRearrangements(r, s, 31337, 150, Budget::kWorstCase);
  });
}

TEST(ExchangeThreads, InputMismatchMovesNothing) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(RanksForTest(), false, MismatchScenario);
}

// The same scenarios with a second communicator (overlap_comm). The exact
// minimum one re-creates the exchange several times per iteration while the
// other ranks' threads are already in their next Run's collective.
TEST(ExchangeThreads, OverlapCommExactMinimumBudget) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(
      RanksForTest(), false,
      [](Rank& r, const Shape& s) {
        return RandomRearrangements(r, s, 778, 60, Budget::kExactMin);
      },
      true);
}

TEST(ExchangeThreads, OverlapCommLargeBudgetPipelined) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(
      RanksForTest(), false,
      [](Rank& r, const Shape& s) { return RandomRearrangements(r, s, 4243, 60, Budget::kLarge); },
      true);
}

TEST(ExchangeThreads, OverlapCommFourRanksAsTwoNodes) {
  EPLB_REQUIRE_GPUS(4);
  RunThreaded(
      4, true,
      [](Rank& r, const Shape& s) {
        return RandomRearrangements(r, s, 31338, 60, Budget::kWorstCase);
      },
      true);
}

TEST(ExchangeThreads, OverlapCommChecksAndAgreement) {
  EPLB_REQUIRE_GPUS(2);
  RunThreaded(RanksForTest(), false, OverlapScenario, true);
}

// A tensor whose last slot would lie past the end of the address space
// (d_slots + (slots - 1) * pitch wraps in the kernels' 64-bit arithmetic)
// is refused at registration; one GPU, a one-rank communicator.
TEST(ExchangeArgs, RegisterLayerRefusesAPitchThatWraps) {
  EPLB_REQUIRE_GPUS(1);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ncclComm_t comm = nullptr;
  int dev = 0;
  ASSERT_EQ(ncclCommInitAll(&comm, 1, &dev), ncclSuccess);
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  cfg.num_layers = 1;
  cfg.num_physical_experts = 4;
  cfg.num_ranks = 1;
  cfg.rank = 0;
  cfg.staging_bytes = size_t{1} << 20;
  cfg.device = 0;
  eplbExchange_t ex = nullptr;
  ASSERT_EQ(eplbExchangeCreate(&cfg, comm, &ex), EPLB_SUCCESS) << eplbGetLastErrorDetail();
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 4 * 256), cudaSuccess);
  eplbTensorDesc_t t = {d, 256, size_t{1} << 63};
  EXPECT_EQ(eplbExchangeRegisterLayer(ex, 0, &t, 1, 4), EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("address space"), std::string::npos)
      << eplbGetLastErrorDetail();
  t.pitch_bytes = 256;
  EXPECT_EQ(eplbExchangeRegisterLayer(ex, 0, &t, 1, 4), EPLB_SUCCESS) << eplbGetLastErrorDetail();
  EXPECT_EQ(eplbExchangeDestroy(ex), EPLB_SUCCESS);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

// ---- one process per GPU ----

constexpr const char* kChildEnv = "EPLB_EXCHANGE_TEST_CHILD";  // "rank:N:idfile"

// When this binary was started as a child by the test below (after main has
// started, so every static of the library exists): joins the communicator
// through the id file, runs the scenarios and exits with 0 (pass) or 1,
// before any test runs.
void MaybeRunChild() {
  const char* env = std::getenv(kChildEnv);
  if (env == nullptr) return;
  int rank = -1, n = 0;
  char path[4096] = {0};
  if (std::sscanf(env, "%d:%d:%4095s", &rank, &n, path) != 3) std::_Exit(2);
  ncclUniqueId id;
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(&id), sizeof(id));
  if (!f) std::_Exit(3);
  std::string err;
  {
    Shape s = MakeShape(n, false);
    Rank r(s, rank);
    err = r.Init(id, /*overlap=*/true);
    if (err.empty()) err = RandomRearrangements(r, s, 2024, 60, Budget::kWorstCase);
    if (err.empty()) err = MismatchScenario(r, s);
    if (err.empty()) err = OverlapScenario(r, s);  // ends with the second communicator set
    if (err.empty()) err = RandomRearrangements(r, s, 2025, 30, Budget::kExactMin);
  }
  if (!err.empty()) std::fprintf(stderr, "[child rank %d] %s\n", rank, err.c_str());
  std::fflush(stderr);
  std::_Exit(err.empty() ? 0 : 1);
}
class ChildEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { MaybeRunChild(); }
};
::testing::Environment* const g_child_env =
    ::testing::AddGlobalTestEnvironment(new ChildEnvironment);

TEST(ExchangeProcesses, OneProcessPerGpu) {
  EPLB_REQUIRE_GPUS(2);
  const int32_t N = RanksForTest();
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  char path[] = "/tmp/eplb_exchange_idXXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, &id, sizeof(id)), static_cast<ssize_t>(sizeof(id)));
  close(fd);
  std::vector<pid_t> kids;
  for (int32_t r = 0; r < N; ++r) {
    std::string env = std::to_string(r) + ":" + std::to_string(N) + ":" + path;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      setenv(kChildEnv, env.c_str(), 1);
      char* argv[] = {const_cast<char*>("/proc/self/exe"), nullptr};
      execv("/proc/self/exe", argv);
      _exit(127);
    }
    kids.push_back(pid);
  }
  // Wait with a deadline so a hang fails instead of blocking the suite.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  std::vector<int> status(kids.size(), -1);
  size_t done = 0;
  while (done < kids.size() && std::chrono::steady_clock::now() < deadline) {
    for (size_t k = 0; k < kids.size(); ++k) {
      if (status[k] != -1) continue;
      int st = 0;
      if (waitpid(kids[k], &st, WNOHANG) == kids[k]) {
        status[k] = st;
        ++done;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (size_t k = 0; k < kids.size(); ++k)
    if (status[k] == -1) {
      kill(kids[k], SIGKILL);
      waitpid(kids[k], nullptr, 0);
      ADD_FAILURE() << "child rank " << k << " timed out";
    }
  unlink(path);
  for (size_t k = 0; k < kids.size(); ++k)
    if (status[k] != -1)
      EXPECT_TRUE(WIFEXITED(status[k]) && WEXITSTATUS(status[k]) == 0)
          << "child rank " << k << " status " << status[k];
  (void)g_child_env;
}

}  // namespace
