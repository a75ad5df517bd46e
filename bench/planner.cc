// Host planner timings (one core): the DeepSeek-V3 shape (58 layers, E=256,
// P=288, G=8, M=4, N=32) end to end with all three outputs, with NONE and
// FULL migration; its phases (replication, packing, log2phy, migration); and
// the largest limit shape without log2phy. Absolute times (there is no C++
// reference implementation to compare against in this repository).
//
// Paths: by default the fastest the CPU has (AVX-512VL packing kernel, else
// AVX2); EPLB_PLANNER_NO_AVX512=1 forces the AVX2 kernel and
// EPLB_PLANNER_NO_AVX2=1 the portable code. All give the same plans.
// Phases of BM_Dsv3_Plan/no_old_all_outputs: replication (BM_Dsv3_Replicate),
// packing (ReplicateAndPack minus Replicate: the per-node sort of the replica
// loads, mostly its rank step, then the greedy steps), log2phy (Plan writes
// it layer by layer; its 2 MB of stores are bound by cache bandwidth and cost
// Plan about BM_Dsv3_Log2Phy: writing the rows between the packing kernel's
// greedy steps, or each row once with 64-byte stores instead of memset plus
// scatter, measured no faster) and load validation (small). On the
// AVX-512 path Plan packs two layers per kernel call (8 node lanes), while
// the phase benchmarks pack one layer per call, so there the packing phase
// reads somewhat higher than its share of Plan.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "planner.h"

namespace {

struct Problem {
  eplb::PlanShape s;
  std::vector<int64_t> load, old;
  std::vector<int32_t> phy, cnt, l2p;
};

Problem MakeProblem(int32_t L, int32_t E, int32_t P, int32_t G, int32_t M, int32_t N) {
  Problem p;
  p.s = eplb::PlanShape{L, E, P, G, M, N};
  std::mt19937_64 rng(42);
  auto fill = [&](std::vector<int64_t>& w) {
    w.resize(static_cast<size_t>(L) * E);
    for (int32_t l = 0; l < L; ++l)
      for (int32_t e = 0; e < E; ++e)  // zipf-like skew with noise, shuffled ranks
        w[static_cast<size_t>(l) * E + e] =
            static_cast<int64_t>(1e7 / (1 + (e * 7919 + l * 13) % E)) +
            static_cast<int64_t>(rng() % 1000);
  };
  fill(p.load);
  p.phy.resize(static_cast<size_t>(L) * P);
  p.cnt.resize(static_cast<size_t>(L) * E);
  p.l2p.resize(static_cast<size_t>(L) * E * (P - E + 1));
  // Old placement: the plan of perturbed loads.
  std::vector<int64_t> prev = p.load;
  for (auto& w : prev) w += static_cast<int64_t>(rng() % (w / 4 + 1));
  std::vector<int32_t> old(static_cast<size_t>(L) * P);
  eplb::Planner pl;
  pl.Plan(p.s, eplb::Policy::kAuto, eplb::Migration::kNone, prev.data(), nullptr, old.data(),
          p.cnt.data(), nullptr);
  p.old.assign(old.begin(), old.end());
  return p;
}

Problem& Dsv3() {
  static Problem p = MakeProblem(58, 256, 288, 8, 4, 32);
  return p;
}
std::vector<int32_t>& Dsv3Old() {
  static std::vector<int32_t> o(Dsv3().old.begin(), Dsv3().old.end());
  return o;
}

void BM_Dsv3_Plan(benchmark::State& st, eplb::Migration mig, bool with_old, bool with_l2p) {
  Problem& p = Dsv3();
  eplb::Planner pl;
  const int32_t* old = with_old ? Dsv3Old().data() : nullptr;
  for (auto _ : st) {
    eplb::PlanResult r = pl.Plan(p.s, eplb::Policy::kAuto, mig, p.load.data(), old, p.phy.data(),
                                 p.cnt.data(), with_l2p ? p.l2p.data() : nullptr);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  st.counters["layers/s"] = benchmark::Counter(58.0 * st.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_Dsv3_Plan, no_old_all_outputs, eplb::Migration::kNone, false, true);
BENCHMARK_CAPTURE(BM_Dsv3_Plan, old_NONE_all_outputs, eplb::Migration::kNone, true, true);
BENCHMARK_CAPTURE(BM_Dsv3_Plan, old_PRESERVE_all_outputs, eplb::Migration::kPreserve, true, true);
BENCHMARK_CAPTURE(BM_Dsv3_Plan, old_FULL_all_outputs, eplb::Migration::kFull, true, true);

// Phases, summed over the 58 layers (no validation, no log2phy).
void BM_Dsv3_Replicate(benchmark::State& st) {
  Problem& p = Dsv3();
  eplb::Planner pl;
  pl.Reserve(p.s);
  for (auto _ : st)
    for (int32_t l = 0; l < 58; ++l)
      pl.ReplicateLayer(p.s, eplb::Policy::kHierarchical, p.load.data() + l * 256,
                        p.cnt.data() + l * 256);
}
BENCHMARK(BM_Dsv3_Replicate);

void BM_Dsv3_ReplicateAndPack(benchmark::State& st) {
  Problem& p = Dsv3();
  eplb::Planner pl;
  pl.Reserve(p.s);
  for (auto _ : st)
    for (int32_t l = 0; l < 58; ++l) {
      pl.ReplicateLayer(p.s, eplb::Policy::kHierarchical, p.load.data() + l * 256,
                        p.cnt.data() + l * 256);
      pl.PackLayer(p.phy.data() + l * 288);
    }
}
BENCHMARK(BM_Dsv3_ReplicateAndPack);

void BM_Dsv3_Log2Phy(benchmark::State& st) {
  Problem& p = Dsv3();
  for (auto _ : st) {
    eplb::BuildLog2Phy(p.s, p.phy.data(), p.l2p.data());
    benchmark::ClobberMemory();
  }
}
BENCHMARK(BM_Dsv3_Log2Phy);

void BM_Dsv3_Validate(benchmark::State& st) {
  Problem& p = Dsv3();
  for (auto _ : st) {
    eplb::ValidateLoads(p.s, p.load.data());
    eplb::ValidatePlacement(p.s, Dsv3Old().data());
  }
}
BENCHMARK(BM_Dsv3_Validate);

// Migration alone: relabel + keep-in-slot on a fresh plain plan each layer
// (the plain plan is recomputed, so subtract BM_Dsv3_ReplicateAndPack).
void BM_Dsv3_ReplicatePackMigrate(benchmark::State& st, eplb::Migration mig) {
  Problem& p = Dsv3();
  eplb::Planner pl;
  pl.Reserve(p.s);
  const int32_t* old = Dsv3Old().data();
  for (auto _ : st)
    for (int32_t l = 0; l < 58; ++l) {
      pl.ReplicateLayer(p.s, eplb::Policy::kHierarchical, p.load.data() + l * 256,
                        p.cnt.data() + l * 256);
      pl.PackLayer(p.phy.data() + l * 288);
      pl.MigrateLayer(mig, old + l * 288, p.phy.data() + l * 288);
    }
}
BENCHMARK_CAPTURE(BM_Dsv3_ReplicatePackMigrate, PRESERVE, eplb::Migration::kPreserve);
BENCHMARK_CAPTURE(BM_Dsv3_ReplicatePackMigrate, FULL, eplb::Migration::kFull);

void BM_Dsv3_Evaluate(benchmark::State& st) {
  Problem& p = Dsv3();
  for (auto _ : st)
    benchmark::DoNotOptimize(eplb::Evaluate(p.s, p.load.data(), p.phy.data(), nullptr, nullptr));
}
BENCHMARK(BM_Dsv3_Evaluate);

// Largest limit shape: 128 layers, E=1024, P=4096, N=1024 (G=8, M=8), no log2phy.
Problem& Largest() {
  static Problem p = MakeProblem(128, 1024, 4096, 8, 8, 1024);
  return p;
}
void BM_Largest_Plan(benchmark::State& st, bool with_old, eplb::Migration mig) {
  Problem& p = Largest();
  std::vector<int32_t> old(p.old.begin(), p.old.end());
  eplb::Planner pl;
  for (auto _ : st) {
    eplb::PlanResult r =
        pl.Plan(p.s, eplb::Policy::kAuto, mig, p.load.data(), with_old ? old.data() : nullptr,
                p.phy.data(), p.cnt.data(), nullptr);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK_CAPTURE(BM_Largest_Plan, no_old, false, eplb::Migration::kNone)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Largest_Plan, old_FULL, true, eplb::Migration::kFull)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
