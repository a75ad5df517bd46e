// Plan time of the churn-aware policy on the DeepSeek-V3 shape (58 layers,
// 256 experts, 288 slots, 8 groups, 4 nodes, 32 GPUs) against the reference
// planner (AUTO, migration NONE) measured in the same run. The churn plan is
// a steady-state call: from the placement the policy planned one window
// earlier, on a drift history's decayed estimate.
#include <benchmark/benchmark.h>

#include <vector>

#include "churn_policy.h"
#include "planner.h"
#include "replay.h"

namespace {

struct Fixture {
  eplb::PlanShape shape{58, 256, 288, 8, 4, 32};
  eplb::LoadTrace trace;
  std::vector<double> estimate;
  std::vector<int64_t> window;
  std::vector<int32_t> old_phy2log;
  Fixture() {
    eplb::SyntheticConfig sc;
    sc.mode = eplb::SyntheticMode::kDrift;
    sc.num_steps = 120;
    trace = eplb::GenerateSynthetic(sc);
    const size_t LE = 58 * 256;
    estimate.assign(LE, 0.0);
    window.assign(LE, 0);
    eplb::ChurnPlanner cp;
    old_phy2log = eplb::InitialPlacement(shape);
    std::vector<int32_t> next(old_phy2log.size()), cnt(LE);
    const double decay = 0.9965;
    for (int s = 0; s < 110; ++s) {
      eplb::UpdateLoadEstimate(LE, decay, trace.step(s), estimate.data());
      if (s >= 100)
        for (size_t i = 0; i < LE; ++i) window[i] += trace.step(s)[i];
      if (s % 10 == 9 && s < 100) {
        eplb::ChurnOptions o;
        o.load_estimate = estimate.data();
        if (s == 9) o.max_moved_fraction = 1.0;
        cp.Plan(shape, o, trace.step(s), old_phy2log.data(), next.data(), cnt.data(), nullptr);
        old_phy2log = next;
      }
    }
  }
};

Fixture& F() {
  static Fixture f;
  return f;
}

void BM_ReferencePlan(benchmark::State& st) {
  Fixture& f = F();
  eplb::Planner planner;
  std::vector<int32_t> out(f.old_phy2log.size()), cnt(58 * 256);
  for (auto _ : st) {
    planner.Plan(f.shape, eplb::Policy::kAuto, eplb::Migration::kNone, f.window.data(), nullptr,
                 out.data(), cnt.data(), nullptr);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_ReferencePlan)->Unit(benchmark::kMicrosecond);

void BM_ChurnAwarePlan(benchmark::State& st) {
  Fixture& f = F();
  eplb::ChurnPlanner planner;
  std::vector<int32_t> out(f.old_phy2log.size()), cnt(58 * 256);
  eplb::ChurnOptions o;
  o.load_estimate = f.estimate.data();
  o.single_moves = st.range(0) != 0;
  int64_t moved = 0;
  for (auto _ : st) {
    const eplb::ChurnResult r = planner.Plan(f.shape, o, f.window.data(), f.old_phy2log.data(),
                                             out.data(), cnt.data(), nullptr);
    moved = r.new_holdings;
    benchmark::DoNotOptimize(out.data());
  }
  st.counters["new_holdings"] = static_cast<double>(moved);
}
BENCHMARK(BM_ChurnAwarePlan)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
