// `eplb demo`: the library on a synthetic DeepSeek-V3-shaped load history,
// with no files and no GPU. Each window's load is planned; the table shows
// how much the plan improves balance over the static initial placement and
// how many slots each migration mode moves against the plan in force.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "cli_util.h"
#include "demo_gpu.h"
#include "replay.h"

namespace {

const char kDemoHelp[] =
    "usage: eplb demo [--seed S] [--windows W]\n"
    "\n"
    "Generates a seeded DeepSeek-V3-shaped load history in-process (58 layers,\n"
    "256 experts, 288 slots, 8 groups, 4 nodes, 32 GPUs; Zipf-skewed per layer,\n"
    "drifting between windows), plans each window with the library and prints,\n"
    "per window: the balancedness of the initial placement (experts in order,\n"
    "redundant slot E+i holding expert i % E) and of the plan (both scored on\n"
    "that window's load), the slots moved under migration NONE / PRESERVE /\n"
    "FULL against the plan in force (the previous window's FULL plan; the\n"
    "initial placement before window 0), and the planning time. Then replays a\n"
    "drifting history through the reference and the churn-aware policies\n"
    "(forward balancedness and churn), and, when GPUs are visible, runs the real\n"
    "pipeline (route + count, window, all-reduce, plan, NCCL weight exchange) on\n"
    "them and prints what it measured.\n"
    "\n"
    "  --seed S      seed of the synthetic history (default 1)\n"
    "  --windows W   number of windows, 1..1000 (default 8)\n"
    "  --no-gpu      skip the live pipeline on the visible GPUs\n"
    "  --help        this text\n";

// SplitMix64: a fixed, portable generator, so a seed gives the same history
// on every machine (std distributions differ between standard libraries).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  int Below(int n) { return static_cast<int>(Next() % static_cast<uint64_t>(n)); }

 private:
  uint64_t state_;
};

// Per-layer popularity ranking that drifts: each window, nearby ranks swap
// (gradual shifts) and a few experts jump far (a topic change).
struct History {
  int layers, experts;
  std::vector<double> exponent;  // [L] Zipf exponent of each layer
  std::vector<int> rank_of;      // [L][E] expert at popularity rank k
  Rng rng;

  History(int L, int E, uint64_t seed) : layers(L), experts(E), rng(seed) {
    exponent.resize(L);
    rank_of.resize(static_cast<size_t>(L) * E);
    for (int l = 0; l < L; ++l) {
      exponent[l] = 0.5 + 0.5 * rng.Uniform();
      int* perm = &rank_of[static_cast<size_t>(l) * E];
      for (int e = 0; e < E; ++e) perm[e] = e;
      for (int e = E - 1; e > 0; --e) std::swap(perm[e], perm[rng.Below(e + 1)]);
    }
  }

  void Drift() {
    for (int l = 0; l < layers; ++l) {
      int* perm = &rank_of[static_cast<size_t>(l) * experts];
      for (int s = 0; s < experts / 8; ++s) {
        int i = rng.Below(experts);
        int j = std::min(experts - 1, std::max(0, i + rng.Below(33) - 16));
        std::swap(perm[i], perm[j]);
      }
      for (int s = 0; s < 2; ++s) std::swap(perm[rng.Below(experts)], perm[rng.Below(experts)]);
    }
  }

  // Token counts of one window: Zipf by rank with +-5% noise.
  std::vector<int64_t> Window() {
    std::vector<int64_t> load(rank_of.size());
    const double tokens_at_top = 200000.0;
    for (int l = 0; l < layers; ++l) {
      for (int k = 0; k < experts; ++k) {
        double w = tokens_at_top / std::pow(k + 1.0, exponent[l]) * (0.95 + 0.1 * rng.Uniform());
        load[static_cast<size_t>(l) * experts + rank_of[static_cast<size_t>(l) * experts + k]] =
            static_cast<int64_t>(w) + 1;
      }
    }
    return load;
  }
};

constexpr int kReplaySteps = 300;
constexpr int kReplayInterval = 10;

int RunDemo(int argc, char** argv) {
  const char* cmd = "demo";
  eplb_cli::Options opts;
  bool help = false;
  if (!opts.Parse(cmd, argc, argv, {{"seed", true}, {"windows", true}, {"no-gpu", false}}, &help))
    return 2;
  if (help) {
    std::fputs(kDemoHelp, stdout);
    return 0;
  }
  long long seed = 1, windows = 8;
  if (opts.Has("seed") && !eplb_cli::ParseIntArg(opts.Get("seed"), 0, INT64_MAX, &seed)) {
    std::fprintf(stderr, "eplb demo: --seed must be a non-negative integer\n");
    return 2;
  }
  if (opts.Has("windows") && !eplb_cli::ParseIntArg(opts.Get("windows"), 1, 1000, &windows)) {
    std::fprintf(stderr, "eplb demo: --windows must be an integer in [1, 1000]\n");
    return 2;
  }

  const int L = 58, E = 256, P = 288, G = 8, M = 4, N = 32;
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  config.num_layers = L;
  config.num_logical_experts = E;
  config.num_physical_experts = P;
  config.num_groups = G;
  config.num_nodes = M;
  config.num_ranks = N;
  config.policy = EPLB_POLICY_AUTO;
  const size_t LP = static_cast<size_t>(L) * P, LE = static_cast<size_t>(L) * E;

  std::vector<int32_t> initial(LP);
  for (int l = 0; l < L; ++l)
    for (int p = 0; p < P; ++p) initial[static_cast<size_t>(l) * P + p] = p < E ? p : (p - E) % E;

  History history(L, E, static_cast<uint64_t>(seed));
  std::vector<int32_t> in_force = initial;
  std::vector<int32_t> plan(LP), logcnt(LE);
  std::vector<int32_t> migrated[3] = {std::vector<int32_t>(LP), std::vector<int32_t>(LP),
                                      std::vector<int32_t>(LP)};
  const eplbMigration_t modes[3] = {EPLB_MIGRATION_NONE, EPLB_MIGRATION_PRESERVE,
                                    EPLB_MIGRATION_FULL};

  std::printf(
      "eplb demo: DeepSeek-V3 shape, %d layers, %d experts, %d slots (%zu in all), "
      "%d groups, %d nodes x %d GPUs; seed %lld\n",
      L, E, P, LP, G, M, N / M, seed);
  std::printf("balancedness = mean GPU load / max GPU load (1 = perfect), mean over layers\n\n");
  const char* rule =
      "-------+---------------------------+--------------------------------+----------\n";
  std::printf("%6s | %-25s | %-30s | %9s\n", "", "balancedness", "slots moved vs plan in force",
              "");
  std::printf("%6s | %12s %12s | %8s %12s %8s | %9s\n", "window", "initial", "planned", "NONE",
              "PRESERVE", "FULL", "plan_us");
  std::printf("%s", rule);

  double sum_initial = 0, sum_planned = 0;
  long long sum_moved[3] = {0, 0, 0};
  for (long long w = 0; w < windows; ++w) {
    if (w > 0) history.Drift();
    std::vector<int64_t> load = history.Window();

    eplbPlanMetrics_t m_initial = EPLB_PLAN_METRICS_INIT, m_plan = EPLB_PLAN_METRICS_INIT;
    if (!eplb_cli::CheckStatus(
            cmd, "eplbPlanEvaluate",
            eplbPlanEvaluate(&config, load.data(), initial.data(), nullptr, nullptr, &m_initial))) {
      return 1;
    }
    double t0 = eplb_cli::NowMicros();
    eplbStatus_t st = eplbPlanCompute(&config, load.data(), nullptr, plan.data(), logcnt.data(),
                                      nullptr, nullptr);
    double plan_us = eplb_cli::NowMicros() - t0;
    if (!eplb_cli::CheckStatus(cmd, "eplbPlanCompute", st)) return 1;
    if (!eplb_cli::CheckStatus(
            cmd, "eplbPlanEvaluate",
            eplbPlanEvaluate(&config, load.data(), plan.data(), nullptr, nullptr, &m_plan))) {
      return 1;
    }
    long long moved[3];
    for (int k = 0; k < 3; ++k) {
      eplbPlanConfig_t c = config;
      c.migration = modes[k];
      eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
      if (!eplb_cli::CheckStatus(
              cmd, "eplbPlanCompute",
              eplbPlanCompute(&c, load.data(), in_force.data(), migrated[k].data(), logcnt.data(),
                              nullptr, &info))) {
        return 1;
      }
      moved[k] = static_cast<long long>(info.moved_slots);
      sum_moved[k] += moved[k];
    }
    sum_initial += m_initial.balancedness;
    sum_planned += m_plan.balancedness;
    std::printf("%6lld | %12.4f %12.4f | %8lld %12lld %8lld | %9.0f\n", w, m_initial.balancedness,
                m_plan.balancedness, moved[0], moved[1], moved[2], plan_us);
    in_force = migrated[2];
  }
  std::printf("%s", rule);
  std::printf("%6s | %12.4f %12.4f | %8lld %12lld %8lld |\n", "mean", sum_initial / windows,
              sum_planned / windows, sum_moved[0] / windows, sum_moved[1] / windows,
              sum_moved[2] / windows);

  // What an engine really gains is the balance of the *next* window, and what
  // it pays is every expert that crosses the network: replay a drifting
  // history through the reference policy and the churn-aware one.
  std::printf(
      "\nReplay: %d steps of a drifting synthetic history, rearranging every %d steps;\n"
      "fwd-balance = the placement scored on the steps that follow it, churn = share of\n"
      "slots whose GPU newly holds the expert (weights that must cross the network)\n\n",
      kReplaySteps, kReplayInterval);
  std::fflush(stdout);
  try {
    eplb::SyntheticConfig synthetic;
    synthetic.mode = eplb::SyntheticMode::kDrift;
    synthetic.seed = static_cast<uint64_t>(seed);
    synthetic.num_steps = kReplaySteps;
    synthetic.num_layers = L;
    synthetic.num_logical_experts = E;
    synthetic.num_groups = G;
    const eplb::LoadTrace trace = eplb::GenerateSynthetic(synthetic);
    std::vector<eplb::ReplayResult> results;
    for (eplb::ReplayPolicy policy :
         {eplb::ReplayPolicy::kReference, eplb::ReplayPolicy::kChurnAware}) {
      eplb::ReplayConfig rc;
      rc.num_physical_experts = P;
      rc.num_ranks = N;
      rc.num_groups = G;
      rc.num_nodes = M;
      rc.interval = kReplayInterval;
      rc.policy = policy;
      rc.keep_placements = false;
      results.push_back(eplb::RunReplay(trace, rc));
    }
    std::ostringstream table;
    eplb::PrintReplayTable(table, results);
    std::fputs(table.str().c_str(), stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eplb demo: replay failed: %s\n", e.what());
    return 1;
  }
  return opts.Has("no-gpu") ? 0 : eplb_cli::RunGpuDemo();
}

}  // namespace

EPLB_CLI_REGISTER("demo", "plan a synthetic DeepSeek-V3-shaped load history and show the gains",
                  RunDemo);
