// The state machine's decisions, with no GPU: threads as ranks, host memory
// as device memory (HostBackend below), a barrier-based fabric for the
// collectives. Every rank runs the real StateLogic; the backend executes what
// it decides, and the tests check the outcome against independent
// computations (the planner on the expected window load, a pattern in every
// weight byte).
#include "state_logic.h"

#include <gtest/gtest.h>

#include <new>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "planner.h"

namespace eplb {
namespace {

// ---- the fabric: collectives between rank threads --------------------------
class Fabric {
 public:
  explicit Fabric(int n) : n_(n), slots_(n) {}
  int size() const { return n_; }

  // Every rank passes its bytes; every rank gets all ranks' bytes in rank
  // order. A rank that never arrives aborts the test instead of hanging it.
  std::vector<std::vector<uint8_t>> AllGather(int rank, const void* data, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      const uint8_t* p = static_cast<const uint8_t*>(data);
      slots_[rank].assign(p, p + bytes);
    }
    Barrier();
    std::vector<std::vector<uint8_t>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all = slots_;
    }
    Barrier();
    return all;
  }
  void Barrier() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return gen_ != gen; })) {
      std::fprintf(stderr, "fabric barrier timed out: ranks made different collective calls\n");
      std::abort();
    }
  }

 private:
  int n_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t gen_ = 0;
  std::vector<std::vector<uint8_t>> slots_;
};

// ---- expert weights: a pattern per (layer, expert, tensor, byte) ------------
constexpr int kNumTensors = 2;
constexpr size_t kTensorBytes[kNumTensors] = {24, 40};
constexpr size_t kBundleBytes = 64;

uint8_t Pattern(int32_t layer, int32_t expert, int tensor, size_t byte) {
  uint32_t x = static_cast<uint32_t>(layer) * 2654435761u ^ static_cast<uint32_t>(expert) * 40503u ^
               static_cast<uint32_t>(tensor) * 97u ^ static_cast<uint32_t>(byte) * 13u;
  x ^= x >> 13;
  x *= 0x5bd1e995u;
  return static_cast<uint8_t>(x ^ (x >> 15));
}

// All ranks' weights: weights[rank][layer] = [P/N slots][bundle bytes].
struct World {
  PlanShape shape;
  std::vector<std::vector<std::vector<uint8_t>>> weights;
  std::vector<std::vector<std::vector<uint8_t>>> snapshot;  // old weights during an exchange
  int32_t S() const { return shape.num_physical_experts / shape.num_ranks; }
  void Fill(int rank, const std::vector<int32_t>& phy2log) {
    auto& w = weights[rank];
    w.assign(shape.num_layers, std::vector<uint8_t>(S() * kBundleBytes));
    for (int32_t l = 0; l < shape.num_layers; ++l)
      for (int32_t s = 0; s < S(); ++s)
        WriteSlot(w[l].data() + s * kBundleBytes, l,
                  phy2log[l * shape.num_physical_experts + rank * S() + s]);
  }
  static void WriteSlot(uint8_t* row, int32_t layer, int32_t expert) {
    size_t off = 0;
    for (int t = 0; t < kNumTensors; ++t)
      for (size_t b = 0; b < kTensorBytes[t]; ++b) row[off++] = Pattern(layer, expert, t, b);
  }
  // Number of bytes of this rank's slots that do not hold the expert `maps`
  // says they hold.
  int64_t BadBytes(int rank, const std::vector<int32_t>& maps) const {
    int64_t bad = 0;
    std::vector<uint8_t> want(kBundleBytes);
    for (int32_t l = 0; l < shape.num_layers; ++l)
      for (int32_t s = 0; s < S(); ++s) {
        WriteSlot(want.data(), l, maps[l * shape.num_physical_experts + rank * S() + s]);
        const uint8_t* got = weights[rank][l].data() + s * kBundleBytes;
        for (size_t b = 0; b < kBundleBytes; ++b) bad += got[b] != want[b];
      }
    return bad;
  }
};

// ---- the host backend --------------------------------------------------------
class HostBackend : public StateBackend {
 public:
  HostBackend(const PlanShape& shape, int rank, int32_t window, Fabric* fabric, World* world,
              const std::vector<int32_t>& phy2log)
      : shape_(shape), rank_(rank), window_(window), fabric_(fabric), world_(world) {
    const size_t L = shape.num_layers, E = shape.num_logical_experts,
                 P = shape.num_physical_experts;
    load_pass.assign(L * P, 0);
    ring_.assign(static_cast<size_t>(window) * L * E, 0);
    dev_load_.assign(L * E, 0);
    dev_phy2log = phy2log;
    dev_logcnt.assign(L * E, 0);
    dev_log2phy.assign(L * E * (P - E + 1), 0);
    BuildLogCnt(shape, phy2log.data(), dev_logcnt.data());
    BuildLog2Phy(shape, phy2log.data(), dev_log2phy.data());
    plan_phy2log_.assign(L * P, 0);
    plan_logcnt_.assign(L * E, 0);
    plan_log2phy_.assign(L * E * (P - E + 1), 0);
  }

  // Route + count of one pass on this rank: tokens[l][e] items of expert e,
  // spread over its replicas (round robin from the rank), as the device does.
  void RouteCount(const std::vector<int64_t>& tokens) {
    const int32_t E = shape_.num_logical_experts, P = shape_.num_physical_experts;
    const int32_t W = P - E + 1;
    for (int32_t l = 0; l < shape_.num_layers; ++l)
      for (int32_t e = 0; e < E; ++e) {
        const int32_t cnt = dev_logcnt[l * E + e];
        for (int64_t i = 0; i < tokens[l * E + e]; ++i) {
          const int32_t slot = dev_log2phy[(static_cast<size_t>(l) * E + e) * W +
                                           static_cast<int32_t>((i + rank_) % cnt)];
          ++load_pass[static_cast<size_t>(l) * P + slot];
        }
      }
  }

  void RecordPass(bool dummy, bool stats, int64_t step) override {
    const int32_t L = shape_.num_layers, E = shape_.num_logical_experts,
                  P = shape_.num_physical_experts, N = shape_.num_ranks;
    if (dummy) std::fill(load_pass.begin(), load_pass.end(), 0);
    if (stats) {
      // Rank tokens per layer, summed over ranks in rank order.
      std::vector<int64_t> mine(static_cast<size_t>(L) * N, 0);
      for (int32_t l = 0; l < L; ++l)
        for (int32_t p = 0; p < P; ++p) mine[l * N + p / (P / N)] += load_pass[l * P + p];
      auto all = fabric_->AllGather(rank_, mine.data(), mine.size() * sizeof(int64_t));
      std::vector<int64_t> sum(mine.size(), 0);
      for (auto& v : all)
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += reinterpret_cast<int64_t*>(v.data())[i];
      double bal = 0;
      for (int32_t l = 0; l < L; ++l) {
        int64_t tot = 0, mx = 0;
        for (int32_t r = 0; r < N; ++r) {
          tot += sum[l * N + r];
          mx = std::max(mx, sum[l * N + r]);
        }
        bal += mx == 0 ? 1.0 : (static_cast<double>(tot) / N) / static_cast<double>(mx);
      }
      last_stats_balancedness = bal / L;
      last_stats_step = step;
    }
    if (!dummy) {
      int32_t* row = ring_.data() + static_cast<size_t>(pos_) * L * E;
      std::fill(row, row + static_cast<size_t>(L) * E, 0);
      for (int32_t l = 0; l < L; ++l)
        for (int32_t p = 0; p < P; ++p) row[l * E + dev_phy2log[l * P + p]] += load_pass[l * P + p];
      pos_ = (pos_ + 1) % window_;
    }
    std::fill(load_pass.begin(), load_pass.end(), 0);
  }
  void MarkPhase(int phase) override { phases.push_back(phase); }
  void ReadoutLoad() override {
    if (fail_readout) {
      fail_readout = false;
      Throw(Status::kCuda, "injected read-out failure");
    }
    std::fill(dev_load_.begin(), dev_load_.end(), 0);
    const size_t LE = dev_load_.size();
    for (int32_t w = 0; w < window_; ++w)
      for (size_t i = 0; i < LE; ++i) dev_load_[i] += ring_[w * LE + i];
  }
  void AllReduceLoad(int64_t* h_load) override {
    auto all = fabric_->AllGather(rank_, dev_load_.data(), dev_load_.size() * sizeof(int64_t));
    for (size_t i = 0; i < dev_load_.size(); ++i) {
      h_load[i] = 0;
      for (auto& v : all) h_load[i] += reinterpret_cast<int64_t*>(v.data())[i];
    }
  }
  bool AgreeOnDigest(uint64_t digest, bool poison) override {
    uint64_t mine[2] = {digest, poison ? 1u : 0u};
    auto all = fabric_->AllGather(rank_, mine, sizeof(mine));
    bool ok = true;
    for (auto& v : all) {
      const uint64_t* x = reinterpret_cast<const uint64_t*>(v.data());
      ok = ok && x[0] == digest && x[1] == 0;
    }
    return ok;
  }
  PlanBuffers AcquirePlanBuffers() override {
    return {plan_phy2log_.data(), plan_log2phy_.data(), plan_logcnt_.data()};
  }
  // Like the real exchange: a local verdict (the real one reaches the same
  // verdict on every rank whose inputs agree), no collective.
  void BeginExchangePrepare(const int32_t* old_phy2log, const int32_t* new_phy2log) override {
    if (bad_alloc_in_prepare) {
      bad_alloc_in_prepare = false;
      throw std::bad_alloc();
    }
    begin_old_ = old_phy2log;
    begin_new_ = new_phy2log;
    layers_prepared_.assign(static_cast<size_t>(shape_.num_layers), 0);
  }
  void PrepareExchangeLayers(int32_t lo, int32_t hi) override {
    for (int32_t l = lo; l < hi; ++l) ++layers_prepared_[static_cast<size_t>(l)];  // disjoint
  }
  uint64_t FinishExchangePrepare() override {
    ++prepares;
    for (int c : layers_prepared_) EXPECT_EQ(c, 1) << "every layer planned exactly once";
    if (refuse_exchange) Throw(Status::kInvalidUsage, "injected: staging budget too small");
    const size_t LP = static_cast<size_t>(shape_.num_layers) * shape_.num_physical_experts;
    prepared_old_.assign(begin_old_, begin_old_ + LP);
    prepared_new_.assign(begin_new_, begin_new_ + LP);
    uint64_t h = 1469598103934665603ull;
    for (int32_t v : prepared_new_) h = (h ^ static_cast<uint32_t>(v)) * 1099511628211ull;
    return h;
  }
  ExchangeOutcome Exchange() override {
    const int32_t L = shape_.num_layers, P = shape_.num_physical_experts;
    const int32_t S = P / shape_.num_ranks;
    ExchangeOutcome out;
    EXPECT_FALSE(prepared_new_.empty()) << "Exchange without FinishExchangePrepare";
    const int32_t* old_phy2log = prepared_old_.data();
    const int32_t* new_phy2log = prepared_new_.data();
    world_->snapshot[rank_] = world_->weights[rank_];
    fabric_->Barrier();
    out.started = true;
    const int32_t stop = fail_exchange_at_layer >= 0 ? fail_exchange_at_layer : L;
    for (int32_t l = 0; l < L; ++l) {
      const int32_t* o = old_phy2log + static_cast<size_t>(l) * P;
      const int32_t* n = new_phy2log + static_cast<size_t>(l) * P;
      // Rows this rank serves to others (lowest old holder of the expert,
      // unless the receiver holds it itself).
      for (int32_t p = 0; p < P; ++p) {
        const int32_t recv = p / S;
        if (recv == rank_ || n[p] == o[p]) continue;
        const int32_t src = Holder(o, n[p], recv, S);
        if (src / S == rank_ && src / S != recv) out.bytes_sent += kBundleBytes;
      }
      if (l >= stop) continue;
      for (int32_t s = 0; s < S; ++s) {
        const int32_t p = rank_ * S + s;
        if (n[p] == o[p]) continue;
        const int32_t src = Holder(o, n[p], rank_, S);
        const auto& from = world_->snapshot[src / S][l];
        std::memcpy(world_->weights[rank_][l].data() + s * kBundleBytes,
                    from.data() + (src % S) * kBundleBytes, kBundleBytes);
        if (src / S != rank_) out.bytes_received += kBundleBytes;
      }
    }
    fabric_->Barrier();             // nobody reads a snapshot after this
    if (fail_exchange_unstarted) {  // as a local fault before anything moved here
      fail_exchange_unstarted = false;
      world_->weights[rank_] = world_->snapshot[rank_];
      ExchangeOutcome bad;
      bad.status = Status::kCuda;
      bad.message = "injected: cudaSetDevice failed";
      return bad;
    }
    out.layers_done = stop;
    if (stop < L) {
      out.status = Status::kNccl;
      out.message = Format("injected NCCL failure at layer %d", stop);
    }
    return out;
  }
  void CommitMaps(int32_t first, int32_t count, const PlanBuffers& plan) override {
    const size_t E = shape_.num_logical_experts, P = shape_.num_physical_experts;
    const size_t W = P - E + 1;
    std::copy(plan.phy2log + first * P, plan.phy2log + (first + count) * P,
              dev_phy2log.begin() + first * P);
    std::copy(plan.logcnt + first * E, plan.logcnt + (first + count) * E,
              dev_logcnt.begin() + first * E);
    std::copy(plan.log2phy + first * E * W, plan.log2phy + (first + count) * E * W,
              dev_log2phy.begin() + first * E * W);
  }

  // "Device" state, visible to the tests.
  std::vector<int32_t> load_pass, dev_phy2log, dev_logcnt, dev_log2phy;
  std::vector<int> phases;
  double last_stats_balancedness = -1;
  int64_t last_stats_step = -1;
  // Fault injection.
  bool fail_readout = false;
  bool refuse_exchange = false;
  bool bad_alloc_in_prepare = false;     // std::bad_alloc from BeginExchangePrepare
  bool fail_exchange_unstarted = false;  // Exchange fails with started = false
  int32_t fail_exchange_at_layer = -1;
  int prepares = 0;  // FinishExchangePrepare calls

 private:
  // Old slot the receiver gets expert e from: its own when it has one, else
  // the lowest slot holding it.
  static int32_t Holder(const int32_t* o, int32_t e, int32_t recv, int32_t S) {
    for (int32_t s = 0; s < S; ++s)
      if (o[recv * S + s] == e) return recv * S + s;
    for (int32_t p = 0;; ++p)
      if (o[p] == e) return p;
  }

  PlanShape shape_;
  int rank_;
  int32_t window_;
  Fabric* fabric_;
  World* world_;
  std::vector<int32_t> ring_;
  int32_t pos_ = 0;
  std::vector<int64_t> dev_load_;
  std::vector<int32_t> plan_phy2log_, plan_logcnt_, plan_log2phy_;
  std::vector<int32_t> prepared_old_, prepared_new_;  // the prepared exchange's inputs
  const int32_t* begin_old_ = nullptr;
  const int32_t* begin_new_ = nullptr;
  std::vector<int> layers_prepared_;  // PrepareExchangeLayers calls per layer
};

// ---- a cluster of rank threads ------------------------------------------------
struct Rank {
  std::unique_ptr<HostBackend> backend;
  std::unique_ptr<StateLogic> logic;
};

struct Cluster {
  StateConfig config;
  Fabric fabric;
  World world;
  std::vector<Rank> ranks;

  explicit Cluster(const StateConfig& c, bool register_all = true)
      : config(c), fabric(c.shape.num_ranks) {
    const PlanShape& s = c.shape;
    world.shape = s;
    world.weights.resize(s.num_ranks);
    world.snapshot.resize(s.num_ranks);
    std::vector<int32_t> init(static_cast<size_t>(s.num_layers) * s.num_physical_experts);
    InitialPlacement(c, nullptr, nullptr, init.data());
    ranks.resize(s.num_ranks);
    for (int r = 0; r < s.num_ranks; ++r) {
      StateConfig rc = c;
      rc.rank = r;
      world.Fill(r, init);
      ranks[r].backend.reset(new HostBackend(s, r, c.window_size, &fabric, &world, init));
      ranks[r].logic.reset(new StateLogic(rc, init.data(), ranks[r].backend.get()));
      if (register_all)
        for (int32_t l = 0; l < s.num_layers; ++l) ranks[r].logic->MarkRegistered(l);
    }
  }
  // Runs fn(rank) on one thread per rank.
  template <typename F>
  void Run(F fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < config.shape.num_ranks; ++r) threads.emplace_back([&, r] { fn(r); });
    for (auto& t : threads) t.join();
  }
};

StateConfig MakeConfig(int32_t L, int32_t E, int32_t P, int32_t G, int32_t M, int32_t N,
                       int32_t window, int32_t interval) {
  StateConfig c;
  c.shape.num_layers = L;
  c.shape.num_logical_experts = E;
  c.shape.num_physical_experts = P;
  c.shape.num_groups = G;
  c.shape.num_nodes = M;
  c.shape.num_ranks = N;
  c.window_size = window;
  c.step_interval = interval;
  return c;
}

// Skewed, drifting synthetic routing of one pass on one rank: a few hot
// experts whose identity drifts with the step.
std::vector<int64_t> Tokens(const PlanShape& s, int64_t step, int rank) {
  std::vector<int64_t> t(static_cast<size_t>(s.num_layers) * s.num_logical_experts);
  const int32_t E = s.num_logical_experts;
  for (int32_t l = 0; l < s.num_layers; ++l)
    for (int32_t e = 0; e < E; ++e) {
      const int32_t d = static_cast<int32_t>((e + 3 * l + step / 23) % E);
      t[l * E + e] = 2 + 60 / (1 + d) + ((e * 7 + rank * 3 + step) % 5);
    }
  return t;
}

Status StatusOf(const std::function<void()>& fn, std::string* message = nullptr) {
  try {
    fn();
    return Status::kSuccess;
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.status();
  }
}

// ---- tests -----------------------------------------------------------------------

TEST(StateLogic, ValidatesConfig) {
  StateConfig c = MakeConfig(2, 8, 12, 4, 2, 4, 4, 10);
  EXPECT_NO_THROW(ValidateStateConfig(c));
  auto expect = [](StateConfig bad, Status st, const char* field) {
    std::string msg;
    EXPECT_EQ(StatusOf([&] { ValidateStateConfig(bad); }, &msg), st) << field;
    EXPECT_NE(msg.find(field), std::string::npos) << msg;
  };
  StateConfig b = c;
  b.window_size = 0;
  expect(b, Status::kInvalidArgument, "window_size");
  b = c;
  b.step_interval = 0;
  expect(b, Status::kInvalidArgument, "step_interval");
  b = c;
  b.rank = 4;
  expect(b, Status::kInvalidArgument, "rank");
  b = c;
  b.shape.num_physical_experts = 13;
  expect(b, Status::kInvalidArgument, "num_physical_experts");
  b = c;
  b.policy = Policy::kChurnAware;
  expect(b, Status::kNotSupported, "CHURN_AWARE");
  b = c;
  b.migration = static_cast<Migration>(7);
  expect(b, Status::kInvalidArgument, "migration");
}

TEST(StateLogic, InitialPlacements) {
  StateConfig c = MakeConfig(2, 8, 12, 4, 2, 4, 4, 10);
  std::vector<int32_t> p(24);
  InitialPlacement(c, nullptr, nullptr, p.data());
  const std::vector<int32_t> want = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3};
  EXPECT_EQ(std::vector<int32_t>(p.begin(), p.begin() + 12), want);
  EXPECT_EQ(std::vector<int32_t>(p.begin() + 12, p.end()), want);

  // From a load: the planner's plan for it (planning shape, no old one).
  std::vector<int64_t> load(16);
  for (int i = 0; i < 16; ++i) load[i] = (i * 37) % 11 + (i == 3 ? 100 : 0);
  InitialPlacement(c, nullptr, load.data(), p.data());
  std::vector<int32_t> ref(24), cnt(16);
  Planner planner;
  planner.Plan(c.shape, Policy::kHierarchical, Migration::kFull, load.data(), nullptr, ref.data(),
               cnt.data(), nullptr);
  EXPECT_EQ(p, ref);
  std::vector<int32_t> def(24);
  DefaultPlacement(c.shape, def.data());
  EXPECT_GT(Evaluate(c.shape, load.data(), p.data(), nullptr, nullptr).balancedness,
            Evaluate(c.shape, load.data(), def.data(), nullptr, nullptr).balancedness);

  // Given: copied; invalid: named; both: refused.
  std::vector<int32_t> given(ref.rbegin(), ref.rend());
  InitialPlacement(c, given.data(), nullptr, p.data());
  EXPECT_EQ(p, given);
  given[5] = 8;
  std::string msg;
  EXPECT_EQ(StatusOf([&] { InitialPlacement(c, given.data(), nullptr, p.data()); }, &msg),
            Status::kInvalidArgument);
  EXPECT_NE(msg.find("h_initial_phy2log"), std::string::npos) << msg;
  EXPECT_EQ(StatusOf([&] { InitialPlacement(c, ref.data(), load.data(), p.data()); }, &msg),
            Status::kInvalidArgument);
  EXPECT_NE(msg.find("h_initial_load"), std::string::npos) << msg;

  // N % M != 0: planned with one node (like the reference), not refused.
  StateConfig odd = MakeConfig(2, 8, 12, 4, 2, 3, 4, 10);
  EXPECT_EQ(PlanningShape(odd.shape).num_nodes, 1);
  EXPECT_NO_THROW(ValidateStateConfig(odd));
  EXPECT_NO_THROW(InitialPlacement(odd, nullptr, load.data(), p.data()));
}

TEST(StateLogic, ScheduleFirstAtThreeQuartersThenEveryInterval) {
  for (int32_t interval : {1, 2, 3, 4, 8, 13}) {
    StateConfig c = MakeConfig(2, 8, 12, 4, 2, 2, 3, interval);
    Cluster cl(c);
    const int32_t first = interval - interval / 4;
    cl.Run([&](int r) {
      StateLogic& logic = *cl.ranks[r].logic;
      int64_t expected = 0;
      for (int64_t step = 1; step <= 6 * interval + 3; ++step) {
        cl.ranks[r].backend->RouteCount(Tokens(c.shape, step, r));
        // Dummy passes differ between ranks and still count.
        const uint32_t flags = ((step + r) % 3 == 0) ? kStepDummy : 0;
        EXPECT_EQ(logic.steps_to_next_rearrangement(),
                  step <= first ? first - step + 1 : interval - (step - first - 1) % interval);
        logic.Step(flags);
        if (step >= first && (step - first) % interval == 0) ++expected;
        EXPECT_EQ(logic.num_rearrangements(), expected)
            << "interval " << interval << " step " << step;
        EXPECT_EQ(logic.num_steps(), step);
      }
      EXPECT_EQ(logic.num_failed_rearrangements(), 0);
    });
  }
}

// Hundreds of steps of skewed, drifting routing with dummy passes: after every
// rearrangement the all-reduced load equals the window of non-dummy passes,
// the placement equals the planner's plan for it, and every weight byte of
// every rank matches the maps.
void RunLongLoop(const StateConfig& c, std::vector<std::vector<int32_t>>* placements) {
  Cluster cl(c);
  const PlanShape ps = PlanningShape(c.shape);
  const size_t LE = static_cast<size_t>(c.shape.num_layers) * c.shape.num_logical_experts;
  // Per rank: the logical tokens of its recorded (non-dummy) passes, newest last.
  std::vector<std::vector<std::vector<int64_t>>> recorded(c.shape.num_ranks);
  std::vector<std::vector<int32_t>> seen;
  std::mutex seen_mu;
  cl.Run([&](int r) {
    StateLogic& logic = *cl.ranks[r].logic;
    HostBackend& be = *cl.ranks[r].backend;
    Planner planner;
    int64_t rearrangements = 0;
    for (int64_t step = 0; step < 400; ++step) {
      const bool dummy = (step + 2 * r) % 7 == 0;
      const std::vector<int64_t> t = Tokens(c.shape, step, r);
      be.RouteCount(t);
      if (!dummy) recorded[r].push_back(t);
      const std::vector<int32_t> old = logic.placement();
      const uint32_t flags = (dummy ? kStepDummy : 0) | (step % 50 == 0 ? kStepStats : 0);
      logic.Step(flags);
      if (flags & kStepStats) {
        EXPECT_EQ(be.last_stats_step, step);
        EXPECT_GT(be.last_stats_balancedness, 0.0);
        EXPECT_LE(be.last_stats_balancedness, 1.0);
      }
      if (logic.num_rearrangements() == rearrangements) continue;
      rearrangements = logic.num_rearrangements();
      cl.fabric.Barrier();  // every rank has recorded its passes
      std::vector<int64_t> want(LE, 0);
      for (int q = 0; q < c.shape.num_ranks; ++q) {
        const auto& rec = recorded[q];
        const size_t from =
            rec.size() > static_cast<size_t>(c.window_size) ? rec.size() - c.window_size : 0;
        for (size_t i = from; i < rec.size(); ++i)
          for (size_t k = 0; k < LE; ++k) want[k] += rec[i][k];
      }
      cl.fabric.Barrier();
      EXPECT_EQ(logic.last_load(), want) << "rank " << r << " step " << step;
      std::vector<int32_t> plan(old.size()), cnt(LE);
      planner.Plan(ps, ResolvePolicy(ps, c.policy), c.migration, want.data(), old.data(),
                   plan.data(), cnt.data(), nullptr);
      EXPECT_EQ(logic.placement(), plan) << "rank " << r << " step " << step;
      EXPECT_EQ(be.dev_phy2log, plan);
      std::vector<int32_t> log2phy(be.dev_log2phy.size()), logcnt(LE);
      BuildLog2Phy(ps, plan.data(), log2phy.data());
      BuildLogCnt(ps, plan.data(), logcnt.data());
      EXPECT_EQ(be.dev_log2phy, log2phy);
      EXPECT_EQ(be.dev_logcnt, logcnt);
      const RearrangeReport& rep = logic.last_report();
      EXPECT_EQ(rep.status, Status::kSuccess);
      EXPECT_EQ(rep.slots_moved, CountMovedSlots(ps, plan.data(), old.data()));
      EXPECT_EQ(rep.layers_committed, rep.slots_moved > 0 ? c.shape.num_layers : 0);
      // The initial placement ignores the skew: the first plan must fix it.
      if (rearrangements == 1) {
        EXPECT_GE(rep.balancedness_after, rep.balancedness_before);
        if (rep.balancedness_before < 0.9)
          EXPECT_GT(rep.balancedness_after, rep.balancedness_before + 0.05);
      }
      // The phases ran in order, each marked once.
      const std::vector<int> want_phases = {0, 1, 2, 3, 4, 5, 6};
      EXPECT_EQ(std::vector<int>(be.phases.end() - 7, be.phases.end()), want_phases);
      cl.fabric.Barrier();  // weights settled on every rank
      EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0) << "rank " << r << " step " << step;
      if (r == 0) {
        std::lock_guard<std::mutex> lock(seen_mu);
        seen.push_back(logic.placement());
      }
      cl.fabric.Barrier();
    }
    EXPECT_EQ(logic.num_steps(), 400);
    EXPECT_EQ(logic.num_rearrangements(),
              1 + (400 - (c.step_interval - c.step_interval / 4)) / c.step_interval);
  });
  *placements = seen;
}

TEST(StateLogic, LongLoopHierarchical) {
  StateConfig c = MakeConfig(3, 16, 24, 4, 2, 4, 10, 40);
  std::vector<std::vector<int32_t>> a, b;
  RunLongLoop(c, &a);
  EXPECT_EQ(a.size(), 10u);
  RunLongLoop(c, &b);  // deterministic: the same placements again
  EXPECT_EQ(a, b);
}

TEST(StateLogic, LongLoopOneNodeWhenRanksNotMultipleOfNodes) {
  std::vector<std::vector<int32_t>> a;
  RunLongLoop(MakeConfig(2, 12, 18, 4, 2, 3, 6, 32), &a);  // N % M != 0
  EXPECT_FALSE(a.empty());
}

TEST(StateLogic, LongLoopGlobalNoMigration) {
  StateConfig c = MakeConfig(2, 8, 12, 1, 1, 2, 5, 24);
  c.policy = Policy::kGlobal;
  c.migration = Migration::kNone;
  std::vector<std::vector<int32_t>> a;
  RunLongLoop(c, &a);
  EXPECT_FALSE(a.empty());
}

// Drives all ranks to the step before their first rearrangement.
void WarmUp(Cluster& cl, int r) {
  const int32_t first = cl.config.step_interval - cl.config.step_interval / 4;
  for (int64_t step = 0; step + 1 < first; ++step) {
    cl.ranks[r].backend->RouteCount(Tokens(cl.config.shape, step, r));
    cl.ranks[r].logic->Step(0);
  }
}

TEST(StateLogic, PlanMismatchOnOneRankFailsEverywhereNothingMoves) {
  StateConfig c = MakeConfig(2, 8, 12, 4, 2, 4, 4, 8);
  Cluster cl(c);
  bool tamper = true;
  cl.ranks[2].logic->SetPlanHookForTesting([&](int32_t* phy2log) {
    if (!tamper) return;
    tamper = false;
    // Slot 0 (rank 0) swaps with a rank-3 slot holding another expert: a
    // valid plan that differs from the other ranks'.
    for (int j = 11; j >= 9; --j)
      if (phy2log[j] != phy2log[0]) {
        std::swap(phy2log[0], phy2log[j]);
        return;
      }
    FAIL() << "no slot to swap";
  });
  cl.Run([&](int r) {
    StateLogic& logic = *cl.ranks[r].logic;
    HostBackend& be = *cl.ranks[r].backend;
    WarmUp(cl, r);
    const std::vector<int32_t> before = logic.placement();
    const std::vector<int32_t> dev_before = be.dev_phy2log;
    be.RouteCount(Tokens(c.shape, 99, r));
    std::string msg;
    EXPECT_EQ(StatusOf([&] { logic.Step(0); }, &msg), Status::kMismatch) << msg;
    EXPECT_EQ(logic.num_rearrangements(), 1);
    EXPECT_EQ(logic.num_failed_rearrangements(), 1);
    EXPECT_EQ(logic.last_report().status, Status::kMismatch);
    EXPECT_EQ(logic.last_report().layers_committed, 0);
    EXPECT_EQ(logic.placement(), before);
    EXPECT_EQ(be.dev_phy2log, dev_before);
    cl.fabric.Barrier();
    EXPECT_EQ(cl.world.BadBytes(r, before), 0);
    EXPECT_FALSE(logic.broken());
    cl.fabric.Barrier();
    // The state stays usable: the next rearrangement (on demand) succeeds.
    EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }), Status::kSuccess);
    EXPECT_NE(logic.placement(), before);
    cl.fabric.Barrier();
    EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0);
  });
}

// A local failure on one rank before the plan check (an eplb error in the
// read-out; a std::bad_alloc while planning, which once escaped and left the
// others waiting in the check): that rank joins the check poisoned, every
// rank fails, nothing moves, the states stay usable and the next one
// succeeds.
TEST(StateLogic, LocalFailureBeforeCheckFailsEverywhere) {
  for (int injection = 0; injection < 2; ++injection) {
    SCOPED_TRACE(injection);
    StateConfig c = MakeConfig(2, 8, 12, 4, 2, 4, 4, 8);
    Cluster cl(c);
    if (injection == 0)
      cl.ranks[1].backend->fail_readout = true;
    else
      cl.ranks[1].backend->bad_alloc_in_prepare = true;
    const Status own = injection == 0 ? Status::kCuda : Status::kOutOfMemory;
    cl.Run([&](int r) {
      StateLogic& logic = *cl.ranks[r].logic;
      WarmUp(cl, r);
      const std::vector<int32_t> before = logic.placement();
      std::string msg;
      const Status st = StatusOf([&] { logic.Step(0); }, &msg);
      EXPECT_EQ(st, r == 1 ? own : Status::kMismatch) << msg;
      if (r == 1 && injection == 0)
        EXPECT_NE(msg.find("injected read-out failure"), std::string::npos) << msg;
      EXPECT_EQ(logic.last_report().status, st);
      EXPECT_EQ(logic.num_failed_rearrangements(), 1);
      EXPECT_FALSE(logic.broken());
      EXPECT_EQ(logic.placement(), before);
      EXPECT_EQ(cl.ranks[r].backend->dev_phy2log, before);
      cl.fabric.Barrier();
      EXPECT_EQ(cl.world.BadBytes(r, before), 0);
      cl.fabric.Barrier();
      EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }), Status::kSuccess);
      cl.fabric.Barrier();
      EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0);
    });
  }
}

// The exchange refuses the plan on every rank (what a staging budget too
// small gives: the same verdict everywhere), then on one rank only (its own
// status there, a mismatch on the others); nothing moves, the state stays
// usable, and the refusal comes before the plan check (no exchange runs).
TEST(StateLogic, ExchangeRefusedNothingMovesStateUsable) {
  StateConfig c = MakeConfig(2, 8, 12, 4, 2, 4, 4, 8);
  Cluster cl(c);
  for (auto& rk : cl.ranks) rk.backend->refuse_exchange = true;
  cl.Run([&](int r) {
    StateLogic& logic = *cl.ranks[r].logic;
    WarmUp(cl, r);
    const std::vector<int32_t> before = logic.placement();
    auto nothing_moved = [&] {
      EXPECT_EQ(logic.placement(), before);
      EXPECT_EQ(cl.ranks[r].backend->dev_phy2log, before);
      EXPECT_FALSE(logic.broken());
      cl.fabric.Barrier();
      EXPECT_EQ(cl.world.BadBytes(r, before), 0);
      cl.fabric.Barrier();
    };
    std::string msg;
    EXPECT_EQ(StatusOf([&] { logic.Step(0); }, &msg), Status::kInvalidUsage);
    EXPECT_NE(msg.find("exchange refused the plan; nothing moved"), std::string::npos) << msg;
    EXPECT_GT(cl.ranks[r].backend->prepares, 0);
    nothing_moved();
    if (r != 3) cl.ranks[r].backend->refuse_exchange = false;
    cl.fabric.Barrier();
    EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }),
              r == 3 ? Status::kInvalidUsage : Status::kMismatch);
    nothing_moved();
    if (r == 3) cl.ranks[r].backend->refuse_exchange = false;
    EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }), Status::kSuccess);
    cl.fabric.Barrier();
    EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0);
  });
}

// Rank 0's exchange fails after the plans agreed: at layer 2 (layers 0 and
// 1 moved: their maps are committed, the others keep the old ones), or
// before anything moved there (a device switch failing: the other ranks'
// transfers wait on it, so the state is broken all the same, not "refused,
// usable"). Either way its maps describe its weights and it is broken.
TEST(StateLogic, ExchangeFailureKeepsMapsConsistentWithWeights) {
  for (int injection = 0; injection < 2; ++injection) {
    SCOPED_TRACE(injection);
    StateConfig c = MakeConfig(4, 8, 12, 4, 2, 4, 4, 8);
    Cluster cl(c);
    if (injection == 0)
      cl.ranks[0].backend->fail_exchange_at_layer = 2;
    else
      cl.ranks[0].backend->fail_exchange_unstarted = true;
    const int32_t moved = injection == 0 ? 2 : 0;
    cl.Run([&](int r) {
      StateLogic& logic = *cl.ranks[r].logic;
      HostBackend& be = *cl.ranks[r].backend;
      WarmUp(cl, r);
      const std::vector<int32_t> before = logic.placement();
      std::string msg;
      const Status st = StatusOf([&] { logic.Step(0); }, &msg);
      const size_t P = c.shape.num_physical_experts;
      if (r == 0) {
        EXPECT_EQ(st, injection == 0 ? Status::kNccl : Status::kCuda) << msg;
        if (injection == 1) EXPECT_NE(msg.find("after the plans agreed"), std::string::npos) << msg;
        EXPECT_TRUE(logic.broken());
        EXPECT_EQ(logic.last_report().layers_committed, moved);
        // Layers [0, moved) new (and moved), the others old.
        EXPECT_TRUE(std::equal(before.begin() + moved * P, before.end(),
                               logic.placement().begin() + moved * P));
        EXPECT_EQ(std::equal(before.begin(), before.begin() + 2 * P, logic.placement().begin()),
                  moved == 0);
        EXPECT_EQ(StatusOf([&] { logic.Step(0); }, &msg), Status::kInvalidUsage);
        EXPECT_NE(msg.find("broken"), std::string::npos) << msg;
        EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }), Status::kInvalidUsage);
      } else {
        EXPECT_EQ(st, Status::kSuccess) << msg;
        EXPECT_EQ(logic.last_report().layers_committed, 4);
      }
      EXPECT_EQ(be.dev_phy2log, logic.placement());
      std::vector<int32_t> logcnt(be.dev_logcnt.size());
      BuildLogCnt(c.shape, be.dev_phy2log.data(), logcnt.data());
      EXPECT_EQ(be.dev_logcnt, logcnt);
      cl.fabric.Barrier();
      EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0) << "rank " << r;
    });
  }
}

TEST(StateLogic, StepBeforeRegistrationAndBadFlags) {
  StateConfig c = MakeConfig(3, 8, 12, 4, 2, 1, 4, 8);
  Cluster cl(c, /*register_all=*/false);
  StateLogic& logic = *cl.ranks[0].logic;
  logic.MarkRegistered(0);
  logic.MarkRegistered(2);
  std::string msg;
  // The misuse is reported, but the step counts and the rearrangement takes
  // part in its collectives (poisoned), so the ranks stay in step.
  EXPECT_EQ(StatusOf([&] { logic.Step(0); }, &msg), Status::kInvalidUsage);
  EXPECT_NE(msg.find("layer 1"), std::string::npos) << msg;
  EXPECT_EQ(logic.num_steps(), 1);
  EXPECT_EQ(StatusOf([&] { logic.Rearrange(); }, &msg), Status::kInvalidUsage);
  EXPECT_NE(msg.find("layer 1"), std::string::npos) << msg;
  EXPECT_EQ(logic.num_rearrangements(), 1);
  EXPECT_EQ(logic.num_failed_rearrangements(), 1);
  const std::vector<int32_t> before = logic.placement();
  logic.MarkRegistered(1);
  EXPECT_EQ(StatusOf([&] { logic.Step(0x4); }, &msg), Status::kInvalidArgument);
  EXPECT_NE(msg.find("flags"), std::string::npos) << msg;
  EXPECT_EQ(logic.num_steps(), 1);
  EXPECT_EQ(StatusOf([&] { logic.Step(kStepDummy | kStepStats); }), Status::kSuccess);
  EXPECT_EQ(logic.num_steps(), 2);
  EXPECT_EQ(logic.num_dummy_steps(), 1);
  EXPECT_EQ(logic.placement(), before);  // the failed rearrangement moved nothing
}

// Two ranks; rank 1 forgot to register layer 2. Its steps report the misuse
// but still count and join every collective, so the rearrangement fails on
// both ranks (rank 0: mismatch, rank 1: invalid usage) with nothing moved,
// and nobody waits forever. Once it registers, the next one succeeds.
TEST(StateLogic, OneRankUnregisteredFailsEveryRankWithoutHanging) {
  StateConfig c = MakeConfig(3, 8, 12, 4, 2, 2, 4, 4);
  Cluster cl(c, /*register_all=*/false);
  for (int r = 0; r < 2; ++r)
    for (int32_t l = 0; l < 3; ++l)
      if (r == 0 || l != 2) cl.ranks[r].logic->MarkRegistered(l);
  const int32_t first = c.step_interval - c.step_interval / 4;
  std::vector<std::vector<Status>> got(2);
  std::vector<std::vector<int32_t>> before(2);
  cl.Run([&](int r) {
    StateLogic& logic = *cl.ranks[r].logic;
    before[r] = logic.placement();
    for (int32_t s = 0; s < first; ++s) got[r].push_back(StatusOf([&] { logic.Step(kStepStats); }));
  });
  for (int32_t s = 0; s + 1 < first; ++s) {
    EXPECT_EQ(got[0][s], Status::kSuccess) << s;
    EXPECT_EQ(got[1][s], Status::kInvalidUsage) << s;
  }
  EXPECT_EQ(got[0].back(), Status::kMismatch);
  EXPECT_EQ(got[1].back(), Status::kInvalidUsage);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(cl.ranks[r].logic->num_steps(), first) << r;
    EXPECT_EQ(cl.ranks[r].logic->num_failed_rearrangements(), 1) << r;
    EXPECT_EQ(cl.ranks[r].logic->placement(), before[r]) << r;
    EXPECT_EQ(cl.world.BadBytes(r, before[r]), 0) << r;
  }
  cl.ranks[1].logic->MarkRegistered(2);
  std::vector<Status> last(2);
  cl.Run([&](int r) { last[r] = StatusOf([&] { cl.ranks[r].logic->Rearrange(); }); });
  EXPECT_EQ(last[0], Status::kSuccess);
  EXPECT_EQ(last[1], Status::kSuccess);
  EXPECT_EQ(cl.ranks[0].logic->placement(), cl.ranks[1].logic->placement());
}

// One rank, interval 1: a rearrangement every step, with the window holding
// only dummy passes in between: an empty window plans from zero load and must
// still succeed (and move nothing on a repeat).
TEST(StateLogic, EmptyWindowRearrangesWithoutMoving) {
  StateConfig c = MakeConfig(2, 8, 12, 4, 2, 2, 2, 1);
  Cluster cl(c);
  cl.Run([&](int r) {
    StateLogic& logic = *cl.ranks[r].logic;
    for (int i = 0; i < 5; ++i)
      EXPECT_EQ(StatusOf([&] { logic.Step(kStepDummy); }), Status::kSuccess);
    EXPECT_EQ(logic.num_rearrangements(), 5);
    EXPECT_EQ(logic.last_report().slots_moved, 0);
    EXPECT_EQ(logic.last_report().layers_committed, 0);
    for (int64_t v : logic.last_load()) EXPECT_EQ(v, 0);
    cl.fabric.Barrier();
    EXPECT_EQ(cl.world.BadBytes(r, logic.placement()), 0);
  });
}

}  // namespace
}  // namespace eplb
