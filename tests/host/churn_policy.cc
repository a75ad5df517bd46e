// Churn-aware policy: structural invariants of every plan, the budget and
// the skip threshold on every call of a replayed history, determinism, and
// the C API (options validation, eplbLoadEstimateUpdate).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <vector>

#include "churn_policy.h"
#include "eplb/eplb.h"
#include "error.h"
#include "planner.h"
#include "replay.h"

namespace {

void CheckInvariants(const eplb::PlanShape& s, const std::vector<int32_t>& pl,
                     const std::vector<int32_t>& logcnt, bool hier) {
  const int L = s.num_layers, E = s.num_logical_experts, P = s.num_physical_experts;
  const int S = P / s.num_ranks, rpn = s.num_ranks / s.num_nodes, epg = E / s.num_groups;
  ASSERT_EQ(pl.size(), static_cast<size_t>(L) * P);  // exactly P/N slots per rank
  std::vector<int32_t> l2p(static_cast<size_t>(L) * E * (P - E + 1));
  eplb::BuildLog2Phy(s, pl.data(), l2p.data());
  for (int l = 0; l < L; ++l) {
    std::vector<int> cnt(E, 0), node(s.num_groups, -1);
    for (int p = 0; p < P; ++p) {
      const int e = pl[l * P + p];
      ASSERT_TRUE(e >= 0 && e < E);
      ++cnt[e];
      if (hier) {
        const int n = (p / S) / rpn;
        if (node[e / epg] < 0) node[e / epg] = n;
        EXPECT_EQ(node[e / epg], n) << "layer " << l << " group " << e / epg << " split";
      }
    }
    for (int e = 0; e < E; ++e) {
      EXPECT_GE(cnt[e], 1);
      EXPECT_EQ(logcnt[l * E + e], cnt[e]);
      const int32_t* row = &l2p[(static_cast<size_t>(l) * E + e) * (P - E + 1)];
      for (int k = 0; k < cnt[e]; ++k) EXPECT_EQ(pl[l * P + row[k]], e);
    }
  }
}

// A small synthetic history (64 experts in 8 groups) for the policy tests.
eplb::SyntheticConfig SmallHistory(eplb::SyntheticMode mode, int32_t steps, int32_t layers,
                                   double tokens_per_step) {
  eplb::SyntheticConfig sc;
  sc.mode = mode;
  sc.num_steps = steps;
  sc.num_layers = layers;
  sc.num_logical_experts = 64;
  sc.num_groups = 8;
  sc.tokens_per_step = tokens_per_step;
  return sc;
}

struct Case {
  eplb::PlanShape shape;
  bool hier;
  bool single_moves;
  double budget;
  double min_gain;
};

TEST(ChurnPolicy, InvariantsBudgetAndSkipOnEveryCall) {
  eplb::SyntheticConfig sc = SmallHistory(eplb::SyntheticMode::kShift, 120, 6, 300);
  sc.shift_every = 40;
  const eplb::LoadTrace t = eplb::GenerateSynthetic(sc);
  std::vector<Case> cases;
  for (bool single : {false, true})
    for (double budget : {0.0, 0.03, 0.1, 0.29, 1.0}) {
      cases.push_back({{6, 64, 80, 8, 2, 8}, true, single, budget, 0.001});
      cases.push_back({{6, 64, 96, 1, 1, 16}, false, single, budget, 0.0});
      cases.push_back({{6, 64, 72, 8, 4, 8}, true, single, budget, 0.01});
    }
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message()
                 << "P=" << c.shape.num_physical_experts << " N=" << c.shape.num_ranks
                 << " single=" << c.single_moves << " budget=" << c.budget);
    const eplb::PlanShape& s = c.shape;
    const size_t LE = 6 * 64, LP = 6 * static_cast<size_t>(s.num_physical_experts);
    std::vector<int32_t> cur = eplb::InitialPlacement(s), next(LP), cnt(LE);
    std::vector<int32_t> again(LP), cnt2(LE);
    std::vector<double> est(LE, 0.0);
    eplb::ChurnPlanner planner, planner2;
    for (int step = 0; step < t.num_steps(); ++step) {
      eplb::UpdateLoadEstimate(LE, 0.97, t.step(step), est.data());
      if (step % 10 != 9) continue;
      eplb::ChurnOptions o;
      o.load_estimate = est.data();
      o.max_moved_fraction = c.budget;
      o.min_gain = c.min_gain;
      o.single_moves = c.single_moves;
      o.sticky_slack = c.single_moves ? -1.0 : 0.02;  // both with and without sticky
      o.min_gain_per_churn = c.single_moves ? 0.0 : 0.075;
      const eplb::ChurnResult r =
          planner.Plan(s, o, t.step(step), cur.data(), next.data(), cnt.data(), nullptr);
      CheckInvariants(s, next, cnt, c.hier);
      EXPECT_EQ(r.new_holdings, eplb::CountNewHoldings(s, next.data(), cur.data()));
      EXPECT_LE(r.new_holdings - r.forced_holdings, r.budget) << "step " << step;
      EXPECT_EQ(r.budget, static_cast<int64_t>(c.budget * LP));
      if (r.skipped) {
        EXPECT_EQ(next, cur);
        EXPECT_LT(r.predicted_after - r.predicted_before, c.min_gain);
      } else {
        EXPECT_GE(r.predicted_after - r.predicted_before, c.min_gain);
      }
      if (!c.hier) {
        EXPECT_EQ(r.forced_layers, 0);
      }
      // Deterministic: a second planner gives the same plan.
      planner2.Plan(s, o, t.step(step), cur.data(), again.data(), cnt2.data(), nullptr);
      EXPECT_EQ(again, next);
      cur = next;
    }
  }
}

// Candidate reuse: a planner kept across calls (reuse on) keeps the budget
// and the skip threshold on every call and rebuilds fewer candidates than a
// cold one; with refresh_tolerance < 0 a kept planner plans exactly as a
// fresh planner per call (the result depends on the call alone).
TEST(ChurnPolicy, CandidateReuse) {
  eplb::SyntheticConfig sc = SmallHistory(eplb::SyntheticMode::kDrift, 150, 8, 500);
  sc.drift_steps = 60;
  const eplb::LoadTrace t = eplb::GenerateSynthetic(sc);
  const eplb::PlanShape s{8, 64, 80, 8, 2, 8};
  const size_t LE = 8 * 64, LP = 8 * 80;
  for (double tol : {0.01, 0.05, -1.0}) {
    SCOPED_TRACE(testing::Message() << "refresh_tolerance=" << tol);
    std::vector<int32_t> cur = eplb::InitialPlacement(s), next(LP), cold(LP), cnt(LE);
    std::vector<double> est(LE, 0.0);
    eplb::ChurnPlanner kept;
    int64_t built = 0, cold_built = 0;
    bool first = true;
    for (int step = 0; step < t.num_steps(); ++step) {
      eplb::UpdateLoadEstimate(LE, 0.9, t.step(step), est.data());
      if (step % 10 != 9) continue;
      eplb::ChurnOptions o;
      o.load_estimate = est.data();
      o.refresh_tolerance = tol;
      if (first) o.max_moved_fraction = 1.0;
      first = false;
      const eplb::ChurnResult r =
          kept.Plan(s, o, t.step(step), cur.data(), next.data(), cnt.data(), nullptr);
      CheckInvariants(s, next, cnt, true);
      EXPECT_EQ(r.new_holdings, eplb::CountNewHoldings(s, next.data(), cur.data()));
      EXPECT_LE(r.new_holdings - r.forced_holdings, r.budget) << "step " << step;
      if (r.skipped) {
        EXPECT_EQ(next, cur);
        EXPECT_LT(r.predicted_after - r.predicted_before, o.min_gain);
      } else {
        EXPECT_GE(r.predicted_after - r.predicted_before, o.min_gain);
      }
      eplb::ChurnPlanner fresh;
      const eplb::ChurnResult rc =
          fresh.Plan(s, o, t.step(step), cur.data(), cold.data(), cnt.data(), nullptr);
      EXPECT_EQ(rc.candidates_built, 8);
      if (tol < 0) {
        EXPECT_EQ(cold, next) << "step " << step;
      }
      built += r.candidates_built;
      cold_built += rc.candidates_built;
      cur = next;
    }
    if (tol >= 0) {
      EXPECT_LT(built, cold_built);
    } else {
      EXPECT_EQ(built, cold_built);
    }
  }
}

// The adaptive forecast: deterministic, a function of the history only, and
// it picks a short memory on a drifting load and a long one on a stationary
// load (where averaging more steps predicts the next better).
TEST(ChurnPolicy, AdaptiveForecastChoosesBySpeed) {
  for (auto mode : {eplb::SyntheticMode::kStationary, eplb::SyntheticMode::kDrift}) {
    eplb::SyntheticConfig sc = SmallHistory(mode, 200, 4, 2000);
    sc.drift_steps = 30;
    const eplb::LoadTrace t = eplb::GenerateSynthetic(sc);
    eplb::ForecastConfig fc;
    std::vector<double> st(eplb::ForecastStateSize(4, 64, fc), 0.0), st2 = st;
    for (int s = 0; s < t.num_steps(); ++s) {
      eplb::UpdateForecastState(4, 64, fc, t.step(s), st.data());
      eplb::UpdateForecastState(4, 64, fc, t.step(s), st2.data());
    }
    EXPECT_EQ(st, st2);
    std::vector<double> f(4 * 64);
    std::vector<int32_t> chosen(4);
    eplb::ForecastFromState(4, 64, fc, st.data(), f.data(), chosen.data());
    for (int l = 0; l < 4; ++l) {
      if (mode == eplb::SyntheticMode::kDrift) {
        EXPECT_LE(chosen[l], 1) << "layer " << l;
      } else {
        EXPECT_GE(chosen[l], 2) << "layer " << l;
      }
      for (int e = 0; e < 64; ++e)
        EXPECT_EQ(f[l * 64 + e], st[(static_cast<size_t>(chosen[l]) * 4 + l) * 64 + e]);
    }
  }
  eplb::ForecastConfig bad;
  bad.half_lives[2] = 0.0;
  EXPECT_THROW(eplb::ValidateForecastConfig(bad), eplb::Error);
}

// Warm-up (budget 1) from a valid placement takes, per layer, the fresh
// plan of the base policy relabelled onto the old placement: the same rank
// contents as the planner's plan (relabelling moves whole ranks), groups
// whole per node, and no more new holdings than the planner's plan with its
// own labels (the identity is one of the labellings the assignment weighs).
TEST(ChurnPolicy, WarmUpRelabelsTheFreshPlan) {
  eplb::SyntheticConfig sc = SmallHistory(eplb::SyntheticMode::kDrift, 60, 6, 400);
  const eplb::LoadTrace t = eplb::GenerateSynthetic(sc);
  for (const eplb::PlanShape& s :
       {eplb::PlanShape{6, 64, 80, 8, 2, 8}, eplb::PlanShape{6, 64, 96, 1, 1, 16}}) {
    const bool hier = s.num_nodes > 1;
    SCOPED_TRACE(testing::Message() << "N=" << s.num_ranks << " hier=" << hier);
    const int32_t L = 6, E = 64, P = s.num_physical_experts;
    const size_t LE = static_cast<size_t>(L) * E, LP = static_cast<size_t>(L) * P;
    // A valid old placement that keeps groups whole: a plan on early steps.
    std::vector<int64_t> early(LE, 0), late(LE, 0);
    for (int step = 0; step < 10; ++step)
      for (size_t i = 0; i < LE; ++i) early[i] += t.step(step)[i];
    for (int step = 50; step < 60; ++step)
      for (size_t i = 0; i < LE; ++i) late[i] += t.step(step)[i];
    eplb::Planner planner;
    std::vector<int32_t> old(LP), plain(LP), out(LP), cnt(LE);
    planner.Plan(s, eplb::Policy::kAuto, eplb::Migration::kNone, early.data(), nullptr, old.data(),
                 cnt.data(), nullptr);
    // The policy plans on its forecast scaled to a total of 2^50 per layer
    // (sums stay exact); the reference plan here uses the same scaling.
    std::vector<int64_t> scaled(LE);
    for (int32_t l = 0; l < L; ++l) {
      double total = 0.0;
      for (int32_t e = 0; e < E; ++e) total += static_cast<double>(late[l * E + e]);
      const double scale = 1125899906842624.0 / total;
      for (int32_t e = 0; e < E; ++e)
        scaled[l * E + e] = static_cast<int64_t>(std::floor(late[l * E + e] * scale));
    }
    planner.Plan(s, eplb::Policy::kAuto, eplb::Migration::kNone, scaled.data(), nullptr,
                 plain.data(), cnt.data(), nullptr);
    eplb::ChurnOptions o;
    o.max_moved_fraction = 1.0;
    o.sticky_slack = -1.0;  // the fresh plan is the only candidate
    eplb::ChurnPlanner cp;
    const eplb::ChurnResult r =
        cp.Plan(s, o, late.data(), old.data(), out.data(), cnt.data(), nullptr);
    CheckInvariants(s, out, cnt, hier);
    EXPECT_EQ(r.forced_layers, 0);
    EXPECT_GT(r.switched_layers, 0);
    const int32_t S = P / s.num_ranks;
    int32_t checked = 0;
    for (int32_t l = 0; l < L; ++l) {
      SCOPED_TRACE(testing::Message() << "layer " << l);
      const int32_t* a = out.data() + static_cast<size_t>(l) * P;
      const int32_t* b = plain.data() + static_cast<size_t>(l) * P;
      const int32_t* ol = old.data() + static_cast<size_t>(l) * P;
      if (std::equal(a, a + P, ol)) continue;  // kept (the fresh plan did not gain)
      ++checked;
      // Same multiset of per-rank expert multisets as the planner's plan.
      std::vector<std::vector<int32_t>> ra, rb;
      for (int32_t rank = 0; rank < s.num_ranks; ++rank) {
        ra.emplace_back(a + rank * S, a + (rank + 1) * S);
        rb.emplace_back(b + rank * S, b + (rank + 1) * S);
        std::sort(ra.back().begin(), ra.back().end());
        std::sort(rb.back().begin(), rb.back().end());
      }
      std::sort(ra.begin(), ra.end());
      std::sort(rb.begin(), rb.end());
      EXPECT_EQ(ra, rb);
      const eplb::PlanShape one{1, E, P, s.num_groups, s.num_nodes, s.num_ranks};
      EXPECT_LE(eplb::CountNewHoldings(one, a, ol), eplb::CountNewHoldings(one, b, ol));
    }
    EXPECT_GE(checked, L / 2);
  }
}

// The candidates are built on several threads: every thread count gives
// the same plan, counts, log2phy and result figures on every call of a
// history (planners kept across calls, so the candidate cache and its reuse
// are exercised too), with and without sticky candidates and single moves,
// hierarchical and global.
TEST(ChurnPolicy, ThreadCountDoesNotChangeThePlan) {
  eplb::SyntheticConfig sc = SmallHistory(eplb::SyntheticMode::kDrift, 120, 24,
                                          500);  // enough layers for several threads (>= 4 each)
  sc.drift_steps = 50;
  const eplb::LoadTrace t = eplb::GenerateSynthetic(sc);
  struct Variant {
    eplb::PlanShape shape;
    double sticky_slack;
    bool single_moves;
    double refresh_tolerance;
  };
  const Variant variants[] = {
      {{24, 64, 80, 8, 2, 8}, 0.1, false, 0.01},
      {{24, 64, 96, 1, 1, 16}, 0.1, false, 0.01},
      {{24, 64, 72, 8, 4, 8}, 0.1, false, -1.0},
      {{24, 64, 80, 8, 2, 8}, -1.0, true, 0.01},
  };
  const int32_t thread_counts[] = {2, 3, 7, 64, 0};
  for (const Variant& v : variants) {
    const eplb::PlanShape& s = v.shape;
    SCOPED_TRACE(testing::Message() << "P=" << s.num_physical_experts << " N=" << s.num_ranks
                                    << " single=" << v.single_moves);
    const size_t LE = 24 * 64, LP = 24 * static_cast<size_t>(s.num_physical_experts);
    const size_t L2P = LE * (s.num_physical_experts - 64 + 1);
    eplb::ChurnPlanner serial;
    serial.set_threads(1);
    EXPECT_EQ(serial.threads(), 1);
    std::vector<eplb::ChurnPlanner> parallel(std::size(thread_counts));
    for (size_t k = 0; k < parallel.size(); ++k) parallel[k].set_threads(thread_counts[k]);
    std::vector<int32_t> cur = eplb::InitialPlacement(s), next(LP), cnt(LE), l2p(L2P);
    std::vector<int32_t> pnext(LP), pcnt(LE), pl2p(L2P);
    std::vector<double> est(LE, 0.0);
    bool first = true;
    int32_t calls = 0, moved = 0;
    for (int step = 0; step < t.num_steps(); ++step) {
      eplb::UpdateLoadEstimate(LE, 0.9, t.step(step), est.data());
      if (step % 10 != 9) continue;
      eplb::ChurnOptions o;
      o.load_estimate = est.data();
      o.sticky_slack = v.sticky_slack;
      o.single_moves = v.single_moves;
      o.refresh_tolerance = v.refresh_tolerance;
      if (first) o.max_moved_fraction = 1.0;
      first = false;
      const eplb::ChurnResult r =
          serial.Plan(s, o, t.step(step), cur.data(), next.data(), cnt.data(), l2p.data());
      for (size_t k = 0; k < parallel.size(); ++k) {
        SCOPED_TRACE(testing::Message() << "threads " << thread_counts[k] << " step " << step);
        std::fill(pnext.begin(), pnext.end(), -7);
        const eplb::ChurnResult pr = parallel[k].Plan(s, o, t.step(step), cur.data(), pnext.data(),
                                                      pcnt.data(), pl2p.data());
        EXPECT_EQ(pnext, next);
        EXPECT_EQ(pcnt, cnt);
        EXPECT_EQ(pl2p, l2p);
        EXPECT_EQ(pr.skipped, r.skipped);
        EXPECT_EQ(pr.new_holdings, r.new_holdings);
        EXPECT_EQ(pr.forced_holdings, r.forced_holdings);
        EXPECT_EQ(pr.forced_layers, r.forced_layers);
        EXPECT_EQ(pr.switched_layers, r.switched_layers);
        EXPECT_EQ(pr.moves, r.moves);
        EXPECT_EQ(pr.candidates_built, r.candidates_built);
        // Bitwise: the sums over layers run in one order.
        EXPECT_EQ(std::memcmp(&pr.predicted_before, &r.predicted_before, sizeof(double)), 0);
        EXPECT_EQ(std::memcmp(&pr.predicted_after, &r.predicted_after, sizeof(double)), 0);
      }
      ++calls;
      if (next != cur) ++moved;
      cur = next;
    }
    EXPECT_EQ(calls, 12);
    EXPECT_GT(moved, 1);  // the history exercised more than the warm-up
  }
  eplb::ChurnPlanner p;
  EXPECT_THROW(p.set_threads(-1), eplb::Error);
  EXPECT_EQ(p.threads(), 0);
}

// Only the estimate's ratios matter: scaled by 2^-1000 or down to the
// smallest subnormals, it gives the plan it gives at scale 1 (a total below
// 2^-960 once made the loads' scale factor infinite, and the plan garbage).
TEST(ChurnPolicy, TinyEstimatesPlanLikeTheirRatios) {
  const int E = 16, P = 24;
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  cfg.num_layers = 1;
  cfg.num_logical_experts = E;
  cfg.num_physical_experts = P;
  cfg.num_groups = 4;
  cfg.num_nodes = 2;
  cfg.num_ranks = 8;
  cfg.policy = EPLB_POLICY_CHURN_AWARE;
  std::vector<int64_t> load(E);
  for (int e = 0; e < E; ++e) load[e] = (e * 37) % 29 + 1;
  std::vector<int32_t> old(P);
  for (int p = 0; p < P; ++p) old[p] = p < E ? p : (p * 5) % E;
  auto plan = [&](double unit, std::vector<int32_t>* phy, std::vector<int32_t>* cnt) {
    std::vector<double> est(E, 0.0);
    est[3] = 7 * unit;
    est[9] = 2 * unit;
    eplbChurnOptions_t o = EPLB_CHURN_OPTIONS_INIT;
    o.h_load_estimate = est.data();
    o.max_moved_fraction = 1.0;
    cfg.churn = &o;
    phy->assign(P, -1);
    cnt->assign(E, -1);
    ASSERT_EQ(
        eplbPlanCompute(&cfg, load.data(), old.data(), phy->data(), cnt->data(), nullptr, nullptr),
        EPLB_SUCCESS)
        << eplbGetLastErrorDetail();
  };
  std::vector<int32_t> phy1, cnt1;
  plan(1.0, &phy1, &cnt1);
  EXPECT_EQ(cnt1[3], 5);  // the two loaded experts take the 8 extra slots
  EXPECT_EQ(cnt1[9], 5);
  for (double unit : {0x1p-1000, 0x1p-1060, 0x1p-1074}) {
    SCOPED_TRACE(unit);
    std::vector<int32_t> phy, cnt;
    plan(unit, &phy, &cnt);
    EXPECT_EQ(phy, phy1);
    EXPECT_EQ(cnt, cnt1);
  }
}

TEST(ChurnPolicy, CApi) {
  const int L = 2, E = 8, P = 12, N = 4;
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  cfg.num_layers = L;
  cfg.num_logical_experts = E;
  cfg.num_physical_experts = P;
  cfg.num_ranks = N;
  cfg.policy = EPLB_POLICY_CHURN_AWARE;
  std::vector<int64_t> load(L * E);
  for (int i = 0; i < L * E; ++i) load[i] = (i * 37) % 11 + (i % E == 3 ? 90 : 1);
  eplb::PlanShape s{L, E, P, 1, 1, N};
  std::vector<int32_t> old = eplb::InitialPlacement(s), out(L * P, -7), cnt(L * E), l2p(L * E * 5);
  // Old placement required; outputs untouched on error.
  EXPECT_EQ(eplbPlanCompute(&cfg, load.data(), nullptr, out.data(), cnt.data(), nullptr, nullptr),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(eplbGetLastErrorDetail(), "h_old_phy2log"), nullptr);
  EXPECT_EQ(out[0], -7);
  eplbChurnOptions_t o = EPLB_CHURN_OPTIONS_INIT;
  o.max_moved_fraction = 1.5;
  cfg.churn = &o;
  EXPECT_EQ(
      eplbPlanCompute(&cfg, load.data(), old.data(), out.data(), cnt.data(), nullptr, nullptr),
      EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::strstr(eplbGetLastErrorDetail(), "max_moved_fraction"), nullptr);
  o.max_moved_fraction = 1.0;
  o.struct_size = 8;
  EXPECT_EQ(
      eplbPlanCompute(&cfg, load.data(), old.data(), out.data(), cnt.data(), nullptr, nullptr),
      EPLB_ERROR_INVALID_ARGUMENT);
  o.struct_size = sizeof(o);
  std::vector<double> est(L * E, 0.0);
  EXPECT_EQ(eplbLoadEstimateUpdate(L, E, 0.5, load.data(), est.data()), EPLB_SUCCESS);
  EXPECT_EQ(eplbLoadEstimateUpdate(L, E, 0.5, load.data(), est.data()), EPLB_SUCCESS);
  EXPECT_DOUBLE_EQ(est[3], 1.5 * load[3]);
  EXPECT_EQ(eplbLoadEstimateUpdate(L, E, 1.5, load.data(), est.data()),
            EPLB_ERROR_INVALID_ARGUMENT);
  o.h_load_estimate = est.data();
  eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
  ASSERT_EQ(
      eplbPlanCompute(&cfg, load.data(), old.data(), out.data(), cnt.data(), l2p.data(), &info),
      EPLB_SUCCESS)
      << eplbGetLastErrorDetail();
  EXPECT_EQ(info.policy, EPLB_POLICY_CHURN_AWARE);
  EXPECT_EQ(info.skipped, 0);
  EXPECT_EQ(info.moved_slots, eplb::CountMovedSlots(s, out.data(), old.data()));
  CheckInvariants(s, out, cnt, false);
  // A plan on the same forecast from its own output gains nothing: skipped.
  std::vector<int32_t> out2(L * P), cnt2(L * E);
  ASSERT_EQ(
      eplbPlanCompute(&cfg, load.data(), out.data(), out2.data(), cnt2.data(), nullptr, &info),
      EPLB_SUCCESS);
  EXPECT_EQ(out2, out);
}

}  // namespace
