// Adversarial review of the host planning C API (eplbPlanCompute,
// eplbPlanEvaluate, eplbLoadEstimateUpdate): every invalid argument returns
// its status with a detail naming the function and the field, and leaves
// every output byte untouched; struct_size versioning; in-place use; the
// per-thread scratch never leaks one call's data into the next.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "eplb/eplb.h"

namespace {

constexpr int32_t kPoison = 0x5a5a5a5a;
constexpr double kPoisonD = -12345.678;

// A valid hierarchical problem: L=2, E=16, P=24, G=4, M=2, N=8.
struct PlanIo {
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  std::vector<int64_t> load;
  std::vector<int32_t> old, phy, cnt, l2p;
  eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
  PlanIo() {
    cfg.num_layers = 2;
    cfg.num_logical_experts = 16;
    cfg.num_physical_experts = 24;
    cfg.num_groups = 4;
    cfg.num_nodes = 2;
    cfg.num_ranks = 8;
    for (int l = 0; l < 2; ++l)
      for (int e = 0; e < 16; ++e) load.push_back((e * 37 + l * 11) % 29 + 1);
    old.resize(48);
    for (int i = 0; i < 48; ++i) old[i] = (i * 5) % 16;
    Poison();
  }
  void Poison() {
    phy.assign(48, kPoison);
    cnt.assign(32, kPoison);
    l2p.assign(2 * 16 * 9, kPoison);
    info = EPLB_PLAN_INFO_INIT;
    info.moved_slots = 777;
    info.balancedness = kPoisonD;
    info.skipped = 99;
  }
  eplbStatus_t Compute(const int32_t* h_old) {
    return eplbPlanCompute(&cfg, load.data(), h_old, phy.data(), cnt.data(), l2p.data(), &info);
  }
  void ExpectUntouched() const {
    for (int32_t v : phy) ASSERT_EQ(v, kPoison);
    for (int32_t v : cnt) ASSERT_EQ(v, kPoison);
    for (int32_t v : l2p) ASSERT_EQ(v, kPoison);
    EXPECT_EQ(info.moved_slots, 777);
    EXPECT_EQ(info.skipped, 99);
    EXPECT_EQ(info.balancedness, kPoisonD);
  }
};

void ExpectDetail(const char* function, const char* field) {
  const std::string d = eplbGetLastErrorDetail();
  EXPECT_EQ(d.rfind(std::string(function) + ": ", 0), 0u) << d;
  EXPECT_NE(d.find(field), std::string::npos) << "detail '" << d << "' should name " << field;
}

struct BadCase {
  const char* what;
  const char* field;  // must appear in the detail
  std::function<void(PlanIo&)> mutate;
  bool use_old;
};

TEST(ReviewPlanCompute, EveryInvalidArgumentLeavesOutputsUntouched) {
  static eplbChurnOptions_t bad_churn[8];
  for (auto& c : bad_churn) c = EPLB_CHURN_OPTIONS_INIT;
  bad_churn[0].max_moved_fraction = 1.5;
  bad_churn[1].max_moved_fraction = std::nan("");
  bad_churn[2].min_gain = -0.1;
  bad_churn[3].min_gain_per_churn = std::numeric_limits<double>::infinity();
  bad_churn[4].single_moves = 2;
  bad_churn[5].sticky_slack = 11.0;
  bad_churn[6].struct_size = 8;
  static std::vector<double> bad_estimate(32, 1.0);
  bad_estimate[31] = -1.0;
  bad_churn[7].h_load_estimate = bad_estimate.data();

  const std::vector<BadCase> cases = {
      {"struct_size 0", "struct_size", [](PlanIo& io) { io.cfg.struct_size = 0; }, false},
      {"L = 0", "num_layers", [](PlanIo& io) { io.cfg.num_layers = 0; }, false},
      {"L = 129", "num_layers", [](PlanIo& io) { io.cfg.num_layers = 129; }, false},
      {"E = 0", "num_logical_experts", [](PlanIo& io) { io.cfg.num_logical_experts = 0; }, false},
      {"P < E", "num_physical_experts", [](PlanIo& io) { io.cfg.num_physical_experts = 8; }, false},
      {"P = 4097", "num_physical_experts", [](PlanIo& io) { io.cfg.num_physical_experts = 4097; },
       false},
      {"P % N", "num_ranks", [](PlanIo& io) { io.cfg.num_ranks = 5; }, false},
      {"N = 0", "num_ranks", [](PlanIo& io) { io.cfg.num_ranks = 0; }, false},
      {"G = 0", "num_groups", [](PlanIo& io) { io.cfg.num_groups = 0; }, false},
      {"G > E", "num_groups", [](PlanIo& io) { io.cfg.num_groups = 17; }, false},
      {"M = 0", "num_nodes", [](PlanIo& io) { io.cfg.num_nodes = 0; }, false},
      {"M > N", "num_nodes", [](PlanIo& io) { io.cfg.num_nodes = 9; }, false},
      {"N % M (AUTO)", "num_nodes", [](PlanIo& io) { io.cfg.num_nodes = 3; }, false},
      {"E % G (HIERARCHICAL)", "num_groups",
       [](PlanIo& io) {
         io.cfg.policy = EPLB_POLICY_HIERARCHICAL;
         io.cfg.num_groups = 6;
         io.cfg.num_nodes = 1;
       },
       false},
      {"policy 4", "policy", [](PlanIo& io) { io.cfg.policy = static_cast<eplbPolicy_t>(4); },
       false},
      {"policy -1", "policy", [](PlanIo& io) { io.cfg.policy = static_cast<eplbPolicy_t>(-1); },
       false},
      {"migration 3", "migration",
       [](PlanIo& io) { io.cfg.migration = static_cast<eplbMigration_t>(3); }, true},
      {"load < 0", "h_load", [](PlanIo& io) { io.load[5] = -1; }, false},
      {"load = 2^53", "h_load", [](PlanIo& io) { io.load[31] = EPLB_MAX_LOAD; }, false},
      {"layer sum = 2^53", "h_load",
       [](PlanIo& io) {
         io.load[16] = EPLB_MAX_LOAD / 2;
         io.load[17] = EPLB_MAX_LOAD / 2;
       },
       false},
      {"old entry = E", "h_old_phy2log", [](PlanIo& io) { io.old[47] = 16; }, true},
      {"old entry < 0", "h_old_phy2log", [](PlanIo& io) { io.old[0] = -1; }, true},
      {"old misses an expert", "h_old_phy2log",
       [](PlanIo& io) {
         for (int p = 24; p < 48; ++p) io.old[p] = (p - 24) % 15;  // expert 15 of layer 1 gone
       },
       true},
      {"h_info struct_size", "h_info", [](PlanIo& io) { io.info.struct_size = 8; }, false},
      {"CHURN_AWARE without old", "h_old_phy2log",
       [](PlanIo& io) { io.cfg.policy = EPLB_POLICY_CHURN_AWARE; }, false},
      {"CHURN_AWARE N % M", "num_nodes",
       [](PlanIo& io) {
         io.cfg.policy = EPLB_POLICY_CHURN_AWARE;
         io.cfg.num_nodes = 3;
       },
       true},
  };
  const char* churn_fields[8] = {"max_moved_fraction", "max_moved_fraction", "min_gain",
                                 "min_gain_per_churn", "single_moves",       "sticky_slack",
                                 "struct_size",        "h_load_estimate"};
  std::vector<BadCase> all = cases;
  for (int i = 0; i < 8; ++i) {
    all.push_back({churn_fields[i], churn_fields[i],
                   [i](PlanIo& io) {
                     io.cfg.policy = EPLB_POLICY_CHURN_AWARE;
                     io.cfg.churn = &bad_churn[i];
                   },
                   true});
  }
  for (const BadCase& c : all) {
    SCOPED_TRACE(c.what);
    PlanIo io;
    c.mutate(io);
    const std::vector<int32_t> old_before = io.old;
    const std::vector<int64_t> load_before = io.load;
    EXPECT_EQ(io.Compute(c.use_old ? io.old.data() : nullptr), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbPlanCompute", c.field);
    io.ExpectUntouched();
    EXPECT_EQ(io.old, old_before);
    EXPECT_EQ(io.load, load_before);
  }
}

TEST(ReviewPlanCompute, NullArgumentsAreRejectedWithOutputsUntouched) {
  PlanIo io;
  EXPECT_EQ(eplbPlanCompute(nullptr, io.load.data(), nullptr, io.phy.data(), io.cnt.data(),
                            io.l2p.data(), &io.info),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanCompute", "config");
  io.ExpectUntouched();
  EXPECT_EQ(eplbPlanCompute(&io.cfg, nullptr, nullptr, io.phy.data(), io.cnt.data(), io.l2p.data(),
                            &io.info),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanCompute", "h_load");
  io.ExpectUntouched();
  EXPECT_EQ(eplbPlanCompute(&io.cfg, io.load.data(), nullptr, nullptr, io.cnt.data(), io.l2p.data(),
                            &io.info),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanCompute", "h_phy2log");
  io.ExpectUntouched();
  EXPECT_EQ(eplbPlanCompute(&io.cfg, io.load.data(), nullptr, io.phy.data(), nullptr, io.l2p.data(),
                            &io.info),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanCompute", "h_logcnt");
  io.ExpectUntouched();
}

TEST(ReviewPlanCompute, SuccessClearsDetailAndFillsInfo) {
  PlanIo io;
  io.cfg.struct_size = 0;
  ASSERT_EQ(io.Compute(nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ASSERT_STRNE(eplbGetLastErrorDetail(), "");
  io.cfg.struct_size = sizeof(eplbPlanConfig_t);
  ASSERT_EQ(io.Compute(nullptr), EPLB_SUCCESS);
  EXPECT_STREQ(eplbGetLastErrorDetail(), "");
  EXPECT_EQ(io.info.policy, EPLB_POLICY_HIERARCHICAL);  // AUTO resolved
  EXPECT_EQ(io.info.moved_slots, -1);                   // no old placement
  EXPECT_EQ(io.info.skipped, 0);
  EXPECT_GT(io.info.balancedness, 0.0);
  EXPECT_LE(io.info.balancedness, 1.0);
  // logcnt agrees with phy2log and log2phy is ascending, -1 padded.
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 16; ++e) {
      int count = 0;
      for (int p = 0; p < 24; ++p) count += io.phy[l * 24 + p] == e;
      EXPECT_EQ(io.cnt[l * 16 + e], count);
      const int32_t* row = &io.l2p[(l * 16 + e) * 9];
      for (int k = 0; k < 9; ++k) {
        if (k < count) {
          EXPECT_EQ(io.phy[l * 24 + row[k]], e);
          if (k > 0) EXPECT_LT(row[k - 1], row[k]);
        } else {
          EXPECT_EQ(row[k], -1);
        }
      }
    }
  }
}

// The outputs may alias the old placement: the plan is computed into scratch
// first, so planning in place equals planning into separate buffers.
TEST(ReviewPlanCompute, InPlaceUpdateOfTheOldPlacementEqualsSeparateOutput) {
  for (eplbPolicy_t policy : {EPLB_POLICY_AUTO, EPLB_POLICY_GLOBAL, EPLB_POLICY_CHURN_AWARE}) {
    for (eplbMigration_t mig :
         {EPLB_MIGRATION_NONE, EPLB_MIGRATION_PRESERVE, EPLB_MIGRATION_FULL}) {
      SCOPED_TRACE(static_cast<int>(policy) * 10 + static_cast<int>(mig));
      PlanIo io;
      io.cfg.policy = policy;
      io.cfg.migration = mig;
      ASSERT_EQ(io.Compute(io.old.data()), EPLB_SUCCESS) << eplbGetLastErrorDetail();
      const std::vector<int32_t> expect = io.phy;
      const int64_t expect_moved = io.info.moved_slots;
      std::vector<int32_t> inplace = io.old;
      eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
      ASSERT_EQ(eplbPlanCompute(&io.cfg, io.load.data(), inplace.data(), inplace.data(),
                                io.cnt.data(), nullptr, &info),
                EPLB_SUCCESS)
          << eplbGetLastErrorDetail();
      EXPECT_EQ(inplace, expect);
      EXPECT_EQ(info.moved_slots, expect_moved);
    }
  }
}

// The C API keeps per-thread scratch that only grows: a call after a larger
// shape must give exactly what a fresh thread gives.
TEST(ReviewPlanCompute, ScratchFromALargerShapeDoesNotLeakIntoASmallerOne) {
  PlanIo small;
  std::vector<int32_t> fresh_phy, fresh_l2p;
  std::thread t([&] {
    PlanIo io;
    ASSERT_EQ(io.Compute(io.old.data()), EPLB_SUCCESS);
    fresh_phy = io.phy;
    fresh_l2p = io.l2p;
  });
  t.join();

  eplbPlanConfig_t big = EPLB_PLAN_CONFIG_INIT;
  big.num_layers = 3;
  big.num_logical_experts = 64;
  big.num_physical_experts = 128;
  big.num_groups = 8;
  big.num_nodes = 2;
  big.num_ranks = 16;
  std::vector<int64_t> big_load(3 * 64);
  for (size_t i = 0; i < big_load.size(); ++i) big_load[i] = static_cast<int64_t>((i * 7919) % 101);
  std::vector<int32_t> bp(3 * 128), bc(3 * 64), bl(3 * 64 * 65);
  ASSERT_EQ(
      eplbPlanCompute(&big, big_load.data(), nullptr, bp.data(), bc.data(), bl.data(), nullptr),
      EPLB_SUCCESS);
  ASSERT_EQ(small.Compute(small.old.data()), EPLB_SUCCESS);
  EXPECT_EQ(small.phy, fresh_phy);
  EXPECT_EQ(small.l2p, fresh_l2p);
}

// struct_size versioning: eplbPlanConfig_t's `churn` field was appended after
// `migration`, and plan_api.cc accepts a struct that ends at `migration`
// (kConfigMinSize). A caller built against that layout does not have the
// field, so the library must not read it (plan_api.cc's own comment: "`churn`
// only where struct_size covers it"). Here the bytes after struct_size hold
// a pointer to invalid options; they must be ignored (defaults used).
// Regression test (was a bug): churn_api.cc reads config->churn whatever struct_size says, so this
// call fails with "churn->max_moved_fraction (5) must be in [0, 1]".
TEST(ReviewPlanCompute, ChurnFieldBeyondStructSizeIsNotRead) {
  PlanIo io;
  eplbChurnOptions_t bad = EPLB_CHURN_OPTIONS_INIT;
  bad.max_moved_fraction = 5.0;
  io.cfg.policy = EPLB_POLICY_CHURN_AWARE;
  io.cfg.churn = &bad;  // beyond struct_size: must be ignored
  io.cfg.struct_size = offsetof(eplbPlanConfig_t, migration) + sizeof(eplbMigration_t);
  ASSERT_LE(io.cfg.struct_size, offsetof(eplbPlanConfig_t, churn));
  ASSERT_EQ(io.Compute(io.old.data()), EPLB_SUCCESS) << eplbGetLastErrorDetail();
  // And it equals the plan with NULL (default) options.
  const std::vector<int32_t> got = io.phy;
  PlanIo ref;
  ref.cfg.policy = EPLB_POLICY_CHURN_AWARE;
  ASSERT_EQ(ref.Compute(ref.old.data()), EPLB_SUCCESS);
  EXPECT_EQ(got, ref.phy);
}

// The header bounds the estimate (finite, >= 0, below 9.0e15; only ratios
// matter): an accumulator that outgrows it is rejected naming the field with
// the outputs untouched, and the same estimate scaled down is accepted.
TEST(ReviewPlanCompute, EstimateAboveItsDocumentedBoundIsRejected) {
  PlanIo io;
  std::vector<double> est(32, 0.0);
  std::vector<int64_t> step(32);
  for (int e = 0; e < 32; ++e) step[e] = 1 + e % 5;
  step[3] = EPLB_MAX_LOAD - 1000;
  step[20] = EPLB_MAX_LOAD - 1000;
  for (int s = 0; s < 2; ++s)
    ASSERT_EQ(eplbLoadEstimateUpdate(2, 16, 1.0, step.data(), est.data()), EPLB_SUCCESS);
  eplbChurnOptions_t opt = EPLB_CHURN_OPTIONS_INIT;
  opt.h_load_estimate = est.data();
  io.cfg.policy = EPLB_POLICY_CHURN_AWARE;
  io.cfg.churn = &opt;
  EXPECT_EQ(io.Compute(io.old.data()), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanCompute", "h_load_estimate");
  io.ExpectUntouched();
  for (double& v : est) v /= 4.0;  // ratios unchanged, now inside the bound
  EXPECT_EQ(io.Compute(io.old.data()), EPLB_SUCCESS) << eplbGetLastErrorDetail();
}

// ---- eplbPlanEvaluate -------------------------------------------------------

struct EvalIo {
  PlanIo p;
  std::vector<int32_t> placement;
  std::vector<double> layer;
  eplbPlanMetrics_t m = EPLB_PLAN_METRICS_INIT;
  EvalIo() {
    placement = p.old;
    layer.assign(2, kPoisonD);
    m.balancedness = kPoisonD;
    m.max_load_sum = kPoisonD;
    m.moved_slots = 4242;
  }
  eplbStatus_t Run(const int32_t* old) {
    return eplbPlanEvaluate(&p.cfg, p.load.data(), placement.data(), old, layer.data(), &m);
  }
  void ExpectUntouched() const {
    EXPECT_EQ(layer[0], kPoisonD);
    EXPECT_EQ(layer[1], kPoisonD);
    EXPECT_EQ(m.balancedness, kPoisonD);
    EXPECT_EQ(m.max_load_sum, kPoisonD);
    EXPECT_EQ(m.moved_slots, 4242);
  }
};

TEST(ReviewPlanEvaluate, EveryInvalidArgumentLeavesOutputsUntouched) {
  struct Case {
    const char* what;
    const char* field;
    std::function<eplbStatus_t(EvalIo&)> run;
  };
  const std::vector<Case> cases = {
      {"NULL config", "config",
       [](EvalIo& io) {
         return eplbPlanEvaluate(nullptr, io.p.load.data(), io.placement.data(), nullptr,
                                 io.layer.data(), &io.m);
       }},
      {"NULL h_load", "h_load",
       [](EvalIo& io) {
         return eplbPlanEvaluate(&io.p.cfg, nullptr, io.placement.data(), nullptr, io.layer.data(),
                                 &io.m);
       }},
      {"NULL h_phy2log", "h_phy2log",
       [](EvalIo& io) {
         return eplbPlanEvaluate(&io.p.cfg, io.p.load.data(), nullptr, nullptr, io.layer.data(),
                                 &io.m);
       }},
      {"struct_size", "struct_size",
       [](EvalIo& io) {
         io.p.cfg.struct_size = 4;
         return io.Run(nullptr);
       }},
      {"h_metrics struct_size", "h_metrics",
       [](EvalIo& io) {
         io.m.struct_size = 8;
         return io.Run(nullptr);
       }},
      {"shape P % N", "num_ranks",
       [](EvalIo& io) {
         io.p.cfg.num_ranks = 7;
         return io.Run(nullptr);
       }},
      {"load < 0", "h_load",
       [](EvalIo& io) {
         io.p.load[9] = -3;
         return io.Run(nullptr);
       }},
      {"placement entry = E", "h_phy2log",
       [](EvalIo& io) {
         io.placement[30] = 16;
         return io.Run(nullptr);
       }},
      {"placement misses an expert", "h_phy2log",
       [](EvalIo& io) {
         for (int p = 0; p < 24; ++p) io.placement[p] = p % 8;
         return io.Run(nullptr);
       }},
      {"old entry < 0", "h_old_phy2log",
       [](EvalIo& io) {
         std::vector<int32_t> old = io.placement;
         old[2] = -7;
         return io.Run(old.data());
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    EvalIo io;
    EXPECT_EQ(c.run(io), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbPlanEvaluate", c.field);
    io.ExpectUntouched();
  }
  // NULL h_metrics: nothing to write, the layer array stays untouched.
  EvalIo io;
  EXPECT_EQ(eplbPlanEvaluate(&io.p.cfg, io.p.load.data(), io.placement.data(), nullptr,
                             io.layer.data(), nullptr),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanEvaluate", "h_metrics");
  EXPECT_EQ(io.layer[0], kPoisonD);
}

TEST(ReviewPlanEvaluate, MetricsFollowTheHeaderFormula) {
  EvalIo io;
  ASSERT_EQ(io.Run(nullptr), EPLB_SUCCESS);
  EXPECT_EQ(io.m.moved_slots, -1);  // no old placement given
  // Recompute the header's formula here: rank load = sum over its slots of
  // w[e] / count[e], in slot order; balancedness = mean(mean/max).
  const int N = 8, S = 3;
  double bal = 0.0, max_sum = 0.0;
  for (int l = 0; l < 2; ++l) {
    int count[16] = {0};
    for (int p = 0; p < 24; ++p) ++count[io.placement[l * 24 + p]];
    double mx = 0.0, total = 0.0;
    for (int r = 0; r < N; ++r) {
      double s = 0.0;
      for (int k = 0; k < S; ++k) {
        const int e = io.placement[l * 24 + r * S + k];
        s += static_cast<double>(io.p.load[l * 16 + e]) / count[e];
      }
      mx = s > mx ? s : mx;
      total += s;
    }
    const double lb = mx == 0.0 ? 1.0 : (total / N) / mx;
    EXPECT_NEAR(io.layer[l], lb, 1e-12);
    bal += lb;
    max_sum += mx;
  }
  EXPECT_NEAR(io.m.balancedness, bal / 2, 1e-12);
  EXPECT_NEAR(io.m.max_load_sum, max_sum, 1e-9);
  // An all-zero layer counts as balancedness 1.
  std::fill(io.p.load.begin(), io.p.load.begin() + 16, 0);
  ASSERT_EQ(io.Run(io.placement.data()), EPLB_SUCCESS);
  EXPECT_EQ(io.layer[0], 1.0);
  EXPECT_EQ(io.m.moved_slots, 0);
  // h_layer_balancedness is optional.
  ASSERT_EQ(
      eplbPlanEvaluate(&io.p.cfg, io.p.load.data(), io.placement.data(), nullptr, nullptr, &io.m),
      EPLB_SUCCESS);
}

// ---- eplbLoadEstimateUpdate -----------------------------------------------

TEST(ReviewLoadEstimateUpdate, InvalidArgumentsLeaveTheEstimateUntouched) {
  std::vector<int64_t> load(2 * 16, 3);
  struct Case {
    const char* what;
    const char* field;
    int32_t L, E;
    double decay;
    int bad_index;  // -1: none
    int64_t bad_value;
    bool null_load, null_est;
  };
  const double nan = std::nan("");
  const Case cases[] = {
      {"L = 0", "num_layers", 0, 16, 0.5, -1, 0, false, false},
      {"L = 129", "num_layers", 129, 16, 0.5, -1, 0, false, false},
      {"E = 0", "num_logical_experts", 2, 0, 0.5, -1, 0, false, false},
      {"E = 1025", "num_logical_experts", 2, 1025, 0.5, -1, 0, false, false},
      {"decay < 0", "decay", 2, 16, -0.01, -1, 0, false, false},
      {"decay > 1", "decay", 2, 16, 1.0000001, -1, 0, false, false},
      {"decay NaN", "decay", 2, 16, nan, -1, 0, false, false},
      {"last load < 0", "h_load", 2, 16, 0.5, 31, -1, false, false},
      {"first load = 2^53", "h_load", 2, 16, 0.5, 0, EPLB_MAX_LOAD, false, false},
      {"NULL h_load", "h_load", 2, 16, 0.5, -1, 0, true, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<int64_t> l = load;
    if (c.bad_index >= 0) l[c.bad_index] = c.bad_value;
    std::vector<double> est(32, kPoisonD);
    EXPECT_EQ(
        eplbLoadEstimateUpdate(c.L, c.E, c.decay, c.null_load ? nullptr : l.data(), est.data()),
        EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbLoadEstimateUpdate", c.field);
    for (double v : est) ASSERT_EQ(v, kPoisonD);
  }
  EXPECT_EQ(eplbLoadEstimateUpdate(2, 16, 0.5, load.data(), nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbLoadEstimateUpdate", "h_estimate");
}

TEST(ReviewLoadEstimateUpdate, IsTheDecayedSumInIndexOrder) {
  std::vector<double> est(3 * 5, 0.0);
  std::vector<int64_t> load(15);
  const double decay = std::pow(0.5, 1.0 / EPLB_CHURN_DEFAULT_HALF_LIFE_STEPS);
  std::vector<double> ref(15, 0.0);
  for (int s = 0; s < 7; ++s) {
    for (int i = 0; i < 15; ++i) load[i] = (s * 31 + i * 17) % 23;
    ASSERT_EQ(eplbLoadEstimateUpdate(3, 5, decay, load.data(), est.data()), EPLB_SUCCESS);
    for (int i = 0; i < 15; ++i) ref[i] = decay * ref[i] + static_cast<double>(load[i]);
  }
  for (int i = 0; i < 15; ++i) EXPECT_EQ(est[i], ref[i]) << i;  // bit-exact
  // decay 0 keeps the last step only; decay 1 is a plain sum.
  ASSERT_EQ(eplbLoadEstimateUpdate(3, 5, 0.0, load.data(), est.data()), EPLB_SUCCESS);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(est[i], static_cast<double>(load[i]));
}

}  // namespace
