// Prints one line per seeded random planning case: the status and an FNV-1a
// digest of phy2log, logcnt and log2phy, for fresh plans (migration NONE)
// and re-plans from them (PRESERVE, FULL) under every placement policy but
// the churn-aware one. tests/host/planner_paths.cc runs it with each of the
// planner's code paths (EPLB_PLANNER_NO_AVX512 / EPLB_PLANNER_NO_AVX2) and
// requires the same lines: every rank must compute the same plan whatever
// its CPU.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "eplb/eplb.h"

namespace {

uint64_t Fnv(uint64_t h, const std::vector<int32_t>& v) {
  for (int32_t x : v) {
    for (int b = 0; b < 4; ++b) {
      h ^= (static_cast<uint32_t>(x) >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  return h;
}

// Loads with ties (small integers, all equal, all zero), skew and one hot
// expert, as the invariant tests draw them.
void Loads(std::mt19937_64& rng, int L, int E, std::vector<int64_t>* load) {
  load->assign(static_cast<size_t>(L) * E, 0);
  for (int l = 0; l < L; ++l) {
    const int kind = static_cast<int>(rng() % 5);
    const int hot = static_cast<int>(rng() % E);
    for (int e = 0; e < E; ++e) {
      int64_t& w = (*load)[static_cast<size_t>(l) * E + e];
      if (kind == 0)
        w = static_cast<int64_t>(1e6 / (1 + rng() % E)) + static_cast<int64_t>(rng() % 100);
      if (kind == 1) w = static_cast<int64_t>(rng() % 4);
      if (kind == 2) w = 7;
      if (kind == 4) w = e == hot ? 1000000 : static_cast<int64_t>(rng() % 1000);
    }
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261129);
  const eplbPolicy_t policies[] = {EPLB_POLICY_AUTO, EPLB_POLICY_HIERARCHICAL, EPLB_POLICY_GLOBAL};
  for (int i = 0; i < 400; ++i) {
    const int M = 1 << (rng() % 3), N = M << (rng() % 3), G = M << (rng() % 2);
    const int E = G * (1 + static_cast<int>(rng() % 8)), L = 1 + static_cast<int>(rng() % 3);
    const int per_rank = (E + N - 1) / N + static_cast<int>(rng() % 4);
    const int P = N * per_rank;
    eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
    cfg.num_layers = L;
    cfg.num_logical_experts = E;
    cfg.num_physical_experts = P;
    cfg.num_groups = G;
    cfg.num_nodes = M;
    cfg.num_ranks = N;
    cfg.policy = policies[rng() % 3];
    std::vector<int64_t> load;
    Loads(rng, L, E, &load);
    std::vector<int32_t> phy(static_cast<size_t>(L) * P), cnt(static_cast<size_t>(L) * E),
        l2p(static_cast<size_t>(L) * E * (P - E + 1));
    cfg.migration = EPLB_MIGRATION_NONE;
    int st =
        eplbPlanCompute(&cfg, load.data(), nullptr, phy.data(), cnt.data(), l2p.data(), nullptr);
    std::printf(
        "%d none %d %016llx\n", i, st,
        static_cast<unsigned long long>(Fnv(Fnv(Fnv(14695981039346656037ull, phy), cnt), l2p)));
    if (st != EPLB_SUCCESS) continue;
    const std::vector<int32_t> old = phy;
    Loads(rng, L, E, &load);
    for (eplbMigration_t m : {EPLB_MIGRATION_PRESERVE, EPLB_MIGRATION_FULL}) {
      cfg.migration = m;
      st = eplbPlanCompute(&cfg, load.data(), old.data(), phy.data(), cnt.data(), l2p.data(),
                           nullptr);
      std::printf(
          "%d %s %d %016llx\n", i, m == EPLB_MIGRATION_FULL ? "full" : "preserve", st,
          static_cast<unsigned long long>(Fnv(Fnv(Fnv(14695981039346656037ull, phy), cnt), l2p)));
    }
  }
  return 0;
}
