// Plan time of the churn-aware policy on the DeepSeek-V3 shape (58 layers,
// 256 experts, 288 slots, 8 groups, 4 nodes, 32 GPUs) against the reference
// planner (AUTO, migration NONE) measured in the same run.
//
// Honest use: a sequence of calls on successive windows of a drifting load
// (synthetic drift, seed 1, interval 10), each from the placement the policy
// returned one window earlier, with the adaptive forecast the replay uses,
// so the candidate cache and the refresh test are exercised as in real use.
//   BM_ReferenceSequence   the reference planner on the same 28 windows
//   BM_ChurnSequence/c     a fresh ChurnPlanner through all 28 calls
//                          (first call cold); c = 1: refresh_tolerance -1
//                          (no candidate reuse)
//   BM_ChurnColdCall/threads:t   the first call of a fresh planner alone
//   BM_ChurnWarmCalls/threads:t  calls 2..28 (the cold call untimed)
// t: threads building the layers' candidates (ChurnPlanner::set_threads;
// 0 = the default, DefaultHostThreads(): EPLB_HOST_THREADS or half the
// hardware threads, 1 to 8; the counter `threads` shows it). The sequences
// use the default. More threads than cores only adds contention.
// items_per_second counts policy calls: the time per call is its inverse;
// compare it with the reference's of the same run (the machine may be
// loaded). Wall time (UseRealTime): the CPU time is the calling thread's
// only, which understates a call that runs on several threads.
#include <benchmark/benchmark.h>

#include <vector>

#include "churn_policy.h"
#include "parallel.h"
#include "planner.h"
#include "replay.h"

namespace {

constexpr int kInterval = 10;

struct Fixture {
  eplb::PlanShape shape{58, 256, 288, 8, 4, 32};
  std::vector<std::vector<double>> forecast;  // [point] [L][E]
  std::vector<std::vector<int64_t>> window;   // [point] last interval's load
  std::vector<int32_t> start;                 // placement after the warm-up call
  Fixture() {
    eplb::SyntheticConfig sc;
    sc.mode = eplb::SyntheticMode::kDrift;
    sc.seed = 1;
    sc.num_steps = 300;
    const eplb::LoadTrace trace = eplb::GenerateSynthetic(sc);
    const int32_t L = shape.num_layers, E = shape.num_logical_experts;
    const size_t LE = static_cast<size_t>(L) * E;
    eplb::ForecastConfig fc;
    std::vector<double> state(eplb::ForecastStateSize(L, E, fc), 0.0);
    int32_t fed = 0;
    for (int32_t t = kInterval; t + kInterval <= sc.num_steps; t += kInterval) {
      for (; fed < t; ++fed) eplb::UpdateForecastState(L, E, fc, trace.step(fed), state.data());
      std::vector<double> f(LE);
      eplb::ForecastFromState(L, E, fc, state.data(), f.data(), nullptr);
      std::vector<int64_t> w(LE, 0);
      for (int32_t s = t - kInterval; s < t; ++s)
        for (size_t i = 0; i < LE; ++i) w[i] += trace.step(s)[i];
      forecast.push_back(std::move(f));
      window.push_back(std::move(w));
    }
    // Warm-up (unlimited budget) from the initial placement, as the replay.
    eplb::ChurnPlanner cp;
    const std::vector<int32_t> init = eplb::InitialPlacement(shape);
    start.resize(init.size());
    std::vector<int32_t> cnt(LE);
    eplb::ChurnOptions o;
    o.load_estimate = forecast[0].data();
    o.max_moved_fraction = 1.0;
    cp.Plan(shape, o, window[0].data(), init.data(), start.data(), cnt.data(), nullptr);
  }
  size_t calls() const { return forecast.size() - 1; }  // points 1..
};

Fixture& F() {
  static Fixture f;
  return f;
}

// Runs calls [first, last) of the sequence from placement `cur` (updated).
void RunCalls(Fixture& f, eplb::ChurnPlanner& planner, const eplb::ChurnOptions& base, size_t first,
              size_t last, std::vector<int32_t>& cur, std::vector<int32_t>& next,
              std::vector<int32_t>& cnt, int64_t* holdings, int64_t* built = nullptr) {
  for (size_t k = first; k < last; ++k) {
    eplb::ChurnOptions o = base;
    o.load_estimate = f.forecast[k + 1].data();
    const eplb::ChurnResult r = planner.Plan(f.shape, o, f.window[k + 1].data(), cur.data(),
                                             next.data(), cnt.data(), nullptr);
    *holdings += r.new_holdings;
    if (built != nullptr) *built += r.candidates_built;
    cur.swap(next);
  }
}

void BM_ReferenceSequence(benchmark::State& st) {
  Fixture& f = F();
  eplb::Planner planner;
  std::vector<int32_t> out(f.start.size()), cnt(f.window[0].size());
  for (auto _ : st) {
    for (size_t k = 0; k < f.calls(); ++k) {
      planner.Plan(f.shape, eplb::Policy::kAuto, eplb::Migration::kNone, f.window[k + 1].data(),
                   nullptr, out.data(), cnt.data(), nullptr);
      benchmark::DoNotOptimize(out.data());
    }
  }
  st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * (f.calls())));
}
BENCHMARK(BM_ReferenceSequence)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_ChurnSequence(benchmark::State& st) {
  Fixture& f = F();
  eplb::ChurnOptions o;
  if (st.range(0) != 0) o.refresh_tolerance = -1.0;
  std::vector<int32_t> cur, next(f.start.size()), cnt(f.window[0].size());
  int64_t holdings = 0, built = 0;
  for (auto _ : st) {
    eplb::ChurnPlanner planner;
    cur = f.start;
    holdings = 0;
    built = 0;
    RunCalls(f, planner, o, 0, f.calls(), cur, next, cnt, &holdings, &built);
    benchmark::DoNotOptimize(cur.data());
  }
  st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * (f.calls())));
  st.counters["new_holdings_per_call"] = static_cast<double>(holdings) / f.calls();
  // Layers whose candidates were built, per call (of 58).
  st.counters["built_per_call"] = static_cast<double>(built) / f.calls();
}
BENCHMARK(BM_ChurnSequence)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

int32_t ThreadsArg(benchmark::State& st) {
  const int32_t t = static_cast<int32_t>(st.range(0));
  st.counters["threads"] = t > 0 ? t : eplb::DefaultHostThreads();
  return t;
}

// Thread counts the per-call benchmarks run with (0 = the default), wall time.
void ThreadCounts(benchmark::internal::Benchmark* b) {
  b->ArgName("threads")->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(0)->UseRealTime()->Unit(
      benchmark::kMillisecond);
}

void BM_ChurnColdCall(benchmark::State& st) {
  Fixture& f = F();
  eplb::ChurnOptions o;
  std::vector<int32_t> cur, next(f.start.size()), cnt(f.window[0].size());
  int64_t holdings = 0;
  const int32_t threads = ThreadsArg(st);
  for (auto _ : st) {
    eplb::ChurnPlanner planner;
    planner.set_threads(threads);
    cur = f.start;
    RunCalls(f, planner, o, 0, 1, cur, next, cnt, &holdings);
    benchmark::DoNotOptimize(cur.data());
  }
  st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * (1)));
}
BENCHMARK(BM_ChurnColdCall)->Apply(ThreadCounts);

void BM_ChurnWarmCalls(benchmark::State& st) {
  Fixture& f = F();
  eplb::ChurnOptions o;
  std::vector<int32_t> cur, next(f.start.size()), cnt(f.window[0].size());
  int64_t holdings = 0;
  const int32_t threads = ThreadsArg(st);
  for (auto _ : st) {
    st.PauseTiming();
    eplb::ChurnPlanner planner;
    planner.set_threads(threads);
    cur = f.start;
    RunCalls(f, planner, o, 0, 1, cur, next, cnt, &holdings);
    st.ResumeTiming();
    RunCalls(f, planner, o, 1, f.calls(), cur, next, cnt, &holdings);
    benchmark::DoNotOptimize(cur.data());
  }
  st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * (f.calls() - 1)));
}
BENCHMARK(BM_ChurnWarmCalls)->Apply(ThreadCounts);

}  // namespace

BENCHMARK_MAIN();
