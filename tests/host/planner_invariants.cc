// Structural invariants of the host planner on >= 1000 seeded random shapes
// and loads, hierarchical and global, with and without an old placement, and
// a brute-force optimality check of FULL migration on tiny shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "assignment.h"
#include "planner.h"

namespace {

using eplb::Migration;
using eplb::PlanShape;
using eplb::Policy;

struct Case {
  PlanShape shape;
  Policy policy;
  std::vector<int64_t> load;
};

// Loads with a few families: zipf-like skew, small integers (many ties),
// all equal, all zero, one hot expert.
void FillLoads(std::mt19937_64& rng, const PlanShape& s, std::vector<int64_t>& load) {
  const int32_t E = s.num_logical_experts;
  load.assign(static_cast<size_t>(s.num_layers) * E, 0);
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int kind = static_cast<int>(rng() % 5);
    for (int32_t e = 0; e < E; ++e) {
      int64_t& w = load[static_cast<size_t>(l) * E + e];
      switch (kind) {
        case 0:
          w = static_cast<int64_t>(1e6 / (1 + (rng() % E))) + static_cast<int64_t>(rng() % 100);
          break;
        case 1:
          w = static_cast<int64_t>(rng() % 4);
          break;
        case 2:
          w = 1000;
          break;
        case 3:
          w = 0;
          break;
        default:
          w = (e == static_cast<int32_t>(rng() % E)) ? 1000000 : static_cast<int64_t>(rng() % 1000);
      }
    }
  }
}

Case RandomCase(std::mt19937_64& rng, bool large) {
  Case c;
  PlanShape& s = c.shape;
  const bool hier = rng() % 2 == 0;
  const int32_t M =
      large ? 1 + static_cast<int32_t>(rng() % 8) : 1 + static_cast<int32_t>(rng() % 4);
  const int32_t bs =
      large ? 1 + static_cast<int32_t>(rng() % 16) : 1 + static_cast<int32_t>(rng() % 4);
  s.num_nodes = M;
  s.num_ranks = M * bs;
  const int32_t gpn = 1 + static_cast<int32_t>(rng() % 3);
  const int32_t epg = 1 + static_cast<int32_t>(rng() % (large ? 16 : 5));
  s.num_groups = M * gpn;
  s.num_logical_experts = s.num_groups * epg;
  const int32_t min_slots = (s.num_logical_experts + s.num_ranks - 1) / s.num_ranks;
  s.num_physical_experts = s.num_ranks * (min_slots + static_cast<int32_t>(rng() % 3));
  s.num_layers = 1 + static_cast<int32_t>(rng() % 3);
  c.policy = hier ? Policy::kHierarchical : Policy::kGlobal;
  FillLoads(rng, s, c.load);
  return c;
}

// Per layer: the sorted list of ranks, each the sorted multiset of its
// replica loads (exact float64 values).
std::vector<std::vector<std::vector<double>>> RankLoads(const PlanShape& s, const int64_t* load,
                                                        const int32_t* phy2log) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = P / N;
  std::vector<std::vector<std::vector<double>>> out(s.num_layers);
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int32_t* row = phy2log + l * P;
    std::vector<int32_t> cnt(E, 0);
    for (int32_t p = 0; p < P; ++p) ++cnt[row[p]];
    out[l].resize(N);
    for (int32_t r = 0; r < N; ++r) {
      for (int32_t k = 0; k < S; ++k)
        out[l][r].push_back(static_cast<double>(load[l * E + row[r * S + k]]) /
                            cnt[row[r * S + k]]);
      std::sort(out[l][r].begin(), out[l][r].end());
    }
    std::sort(out[l].begin(), out[l].end());
  }
  return out;
}

void CheckStructure(const PlanShape& s, Policy policy, const std::vector<int32_t>& phy2log,
                    const std::vector<int32_t>& logcnt, const std::vector<int32_t>& log2phy) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  const int32_t W = P - E + 1;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    std::vector<int32_t> cnt(E, 0);
    for (int32_t p = 0; p < P; ++p) {
      const int32_t e = phy2log[l * P + p];
      ASSERT_GE(e, 0);
      ASSERT_LT(e, E);
      ++cnt[e];
    }
    for (int32_t e = 0; e < E; ++e) {
      ASSERT_GE(cnt[e], 1) << "expert " << e << " has no replica";
      ASSERT_EQ(cnt[e], logcnt[l * E + e]);
      // log2phy: cnt ascending slots holding e, then -1.
      int32_t prev = -1;
      for (int32_t k = 0; k < W; ++k) {
        const int32_t p = log2phy[(static_cast<size_t>(l) * E + e) * W + k];
        if (k < cnt[e]) {
          ASSERT_GT(p, prev);
          ASSERT_EQ(phy2log[l * P + p], e);
          prev = p;
        } else {
          ASSERT_EQ(p, -1);
        }
      }
    }
    // Slots per rank are fixed by the layout (P/N consecutive slots); every
    // slot is filled (checked above), so each rank has exactly P/N entries.
    if (policy == Policy::kHierarchical) {
      const int32_t epg = E / s.num_groups, slots_per_node = P / s.num_nodes;
      for (int32_t g = 0; g < s.num_groups; ++g) {
        int32_t node = -1;
        for (int32_t p = 0; p < P; ++p) {
          const int32_t e = phy2log[l * P + p];
          if (e / epg != g) continue;
          if (node < 0) node = p / slots_per_node;
          ASSERT_EQ(node, p / slots_per_node) << "group " << g << " spans nodes";
        }
      }
    }
  }
}

TEST(PlannerInvariants, RandomShapes) {
  std::mt19937_64 rng(20240611);
  eplb::Planner planner;
  int runs = 0, with_old = 0;
  for (int iter = 0; iter < 1200; ++iter) {
    const bool large = iter % 10 == 9;
    Case c = RandomCase(rng, large);
    const PlanShape& s = c.shape;
    SCOPED_TRACE(::testing::Message()
                 << "iter " << iter << " L=" << s.num_layers << " E=" << s.num_logical_experts
                 << " P=" << s.num_physical_experts << " G=" << s.num_groups << " M=" << s.num_nodes
                 << " N=" << s.num_ranks << " policy=" << int(c.policy));
    const size_t L = s.num_layers, E = s.num_logical_experts, P = s.num_physical_experts;
    const size_t W = P - E + 1;
    std::vector<int32_t> phy(L * P, -7), cnt(L * E, -7), l2p(L * E * W, -7);
    planner.Plan(s, c.policy, Migration::kNone, c.load.data(), nullptr, phy.data(), cnt.data(),
                 l2p.data());
    CheckStructure(s, c.policy, phy, cnt, l2p);
    ++runs;
    // Determinism: a fresh planner gives the same bytes.
    {
      eplb::Planner fresh;
      std::vector<int32_t> phy2(L * P, -9), cnt2(L * E, -9), l2p2(L * E * W, -9);
      fresh.Plan(s, c.policy, Migration::kNone, c.load.data(), nullptr, phy2.data(), cnt2.data(),
                 l2p2.data());
      ASSERT_EQ(phy, phy2);
      ASSERT_EQ(cnt, cnt2);
      ASSERT_EQ(l2p, l2p2);
    }
    if (iter % 2 == 1) continue;
    // Old placement: the plan of perturbed loads, or (sometimes) a shuffled one.
    std::vector<int64_t> old_load = c.load;
    for (auto& w : old_load) w = w + static_cast<int64_t>(rng() % (1 + w / 2 + 3));
    std::vector<int32_t> old(L * P), oc(L * E);
    planner.Plan(s, c.policy, Migration::kNone, old_load.data(), nullptr, old.data(), oc.data(),
                 nullptr);
    if (iter % 8 == 0)
      for (size_t l = 0; l < L; ++l)
        std::shuffle(old.begin() + l * P, old.begin() + (l + 1) * P, rng);
    ++with_old;
    const auto ref_loads = RankLoads(s, c.load.data(), phy.data());
    int64_t moved[3];
    for (Migration mig : {Migration::kNone, Migration::kPreserve, Migration::kFull}) {
      std::vector<int32_t> m1(L * P, -7), c1(L * E, -7), x1(L * E * W, -7);
      eplb::PlanResult r = planner.Plan(s, c.policy, mig, c.load.data(), old.data(), m1.data(),
                                        c1.data(), x1.data());
      CheckStructure(s, c.policy, m1, c1, x1);
      ASSERT_EQ(c1, cnt);
      ASSERT_EQ(r.moved_slots, eplb::CountMovedSlots(s, m1.data(), old.data()));
      ASSERT_EQ(RankLoads(s, c.load.data(), m1.data()), ref_loads);
      moved[static_cast<int>(mig)] = r.moved_slots;
      std::vector<int32_t> m2(L * P), c2(L * E);
      eplb::Planner fresh;
      fresh.Plan(s, c.policy, mig, c.load.data(), old.data(), m2.data(), c2.data(), nullptr);
      ASSERT_EQ(m1, m2) << "not deterministic";
    }
    ASSERT_EQ(moved[0], eplb::CountMovedSlots(s, phy.data(), old.data()));
    ASSERT_LE(moved[1], moved[0]);
    ASSERT_LE(moved[2], moved[1]);
  }
  EXPECT_GE(runs, 1000);
  std::printf("[invariants] %d plans, %d with old placement\n", runs, with_old);
}

// The keep-in-slot rule written the obvious O(S^2) way, for the brute force.
int64_t KeptAfterPreserve(const int32_t* nw, const int32_t* od, int32_t S) {
  std::vector<char> taken(S, 0);
  int64_t kept = 0;
  for (int32_t r = 0; r < S; ++r)
    for (int32_t i = 0; i < S; ++i)
      if (!taken[i] && nw[i] == od[r]) {
        taken[i] = 1;
        ++kept;
        break;
      }
  return kept;
}

TEST(PlannerInvariants, FullMigrationIsOptimalOnTinyShapes) {
  std::mt19937_64 rng(7);
  eplb::Planner planner;
  int checked = 0;
  for (int iter = 0; iter < 300; ++iter) {
    PlanShape s;
    s.num_layers = 1;
    s.num_nodes = 1 + static_cast<int32_t>(rng() % 2);
    const int32_t bs = 1 + static_cast<int32_t>(rng() % 4);
    s.num_ranks = s.num_nodes * bs;
    s.num_groups = s.num_nodes * (1 + static_cast<int32_t>(rng() % 2));
    s.num_logical_experts = s.num_groups * (1 + static_cast<int32_t>(rng() % 3));
    const int32_t min_slots = (s.num_logical_experts + s.num_ranks - 1) / s.num_ranks;
    s.num_physical_experts = s.num_ranks * (min_slots + static_cast<int32_t>(rng() % 2));
    const Policy policy = rng() % 2 ? Policy::kHierarchical : Policy::kGlobal;
    const int32_t M = policy == Policy::kHierarchical ? s.num_nodes : 1;
    const int32_t N = s.num_ranks, P = s.num_physical_experts, S = P / N, B = N / M;
    std::vector<int64_t> load, old_load;
    FillLoads(rng, s, load);
    FillLoads(rng, s, old_load);
    std::vector<int32_t> plain(P), old(P), full(P), cnt(s.num_logical_experts);
    planner.Plan(s, policy, Migration::kNone, load.data(), nullptr, plain.data(), cnt.data(),
                 nullptr);
    planner.Plan(s, policy, Migration::kNone, old_load.data(), nullptr, old.data(), cnt.data(),
                 nullptr);
    eplb::PlanResult r = planner.Plan(s, policy, Migration::kFull, load.data(), old.data(),
                                      full.data(), cnt.data(), nullptr);
    // Enumerate every node permutation and every GPU permutation per node.
    std::vector<int32_t> sigma(M);
    for (int32_t a = 0; a < M; ++a) sigma[a] = a;
    int64_t best_kept = -1;
    do {
      // Independent per node: best GPU permutation of node a onto sigma[a].
      int64_t kept = 0;
      for (int32_t a = 0; a < M; ++a) {
        std::vector<int32_t> perm(B);
        for (int32_t k = 0; k < B; ++k) perm[k] = k;
        int64_t best_node = -1;
        do {
          int64_t k2 = 0;
          for (int32_t k = 0; k < B; ++k)
            k2 += KeptAfterPreserve(&plain[(a * B + k) * S], &old[(sigma[a] * B + perm[k]) * S], S);
          best_node = std::max(best_node, k2);
        } while (std::next_permutation(perm.begin(), perm.end()));
        kept += best_node;
      }
      best_kept = std::max(best_kept, kept);
    } while (std::next_permutation(sigma.begin(), sigma.end()));
    ASSERT_EQ(r.moved_slots, P - best_kept) << "iter " << iter;
    ++checked;
  }
  EXPECT_EQ(checked, 300);
}

// The assignment solver against brute force on small random matrices.
TEST(AssignmentSolver, MatchesBruteForce) {
  std::mt19937_64 rng(11);
  eplb::AssignmentSolver solver;
  for (int iter = 0; iter < 500; ++iter) {
    const int32_t n = static_cast<int32_t>(rng() % 7);
    std::vector<int64_t> w(static_cast<size_t>(n) * n);
    const int sparse = static_cast<int>(rng() % 3);
    for (auto& x : w) x = (sparse && rng() % 3) ? 0 : static_cast<int64_t>(rng() % 10);
    std::vector<int32_t> a(n, -1);
    const int64_t got = solver.SolveMax(n, w.data(), a.data());
    std::vector<int32_t> perm(n), seen(n, 0);
    int64_t sum = 0;
    for (int32_t i = 0; i < n; ++i) {
      ASSERT_GE(a[i], 0);
      ASSERT_LT(a[i], n);
      ASSERT_FALSE(seen[a[i]]) << "not a permutation";
      seen[a[i]] = 1;
      sum += w[i * n + a[i]];
    }
    ASSERT_EQ(sum, got);
    for (int32_t i = 0; i < n; ++i) perm[i] = i;
    int64_t best = n == 0 ? 0 : -1;
    do {
      int64_t t = 0;
      for (int32_t i = 0; i < n; ++i) t += w[i * n + perm[i]];
      best = std::max(best, t);
    } while (n > 0 && std::next_permutation(perm.begin(), perm.end()));
    ASSERT_EQ(got, best) << "iter " << iter << " n " << n;
  }
}

// The largest limit shape plans (without log2phy), with an old placement too.
TEST(PlannerInvariants, LargestLimitShape) {
  PlanShape s;
  s.num_layers = 128;
  s.num_logical_experts = 1024;
  s.num_physical_experts = 4096;
  s.num_groups = 8;
  s.num_nodes = 8;
  s.num_ranks = 1024;
  std::mt19937_64 rng(3);
  std::vector<int64_t> load;
  FillLoads(rng, s, load);
  std::vector<int32_t> phy(s.num_layers * 4096), cnt(s.num_layers * 1024), full(phy.size());
  eplb::Planner planner;
  planner.Plan(s, Policy::kAuto, Migration::kNone, load.data(), nullptr, phy.data(), cnt.data(),
               nullptr);
  std::vector<int32_t> l2p_unused;
  eplb::ValidatePlacement(s, phy.data());
  // Migrate a plan of slightly different loads onto it.
  for (auto& w : load) w += static_cast<int64_t>(rng() % 50);
  eplb::PlanResult r = planner.Plan(s, Policy::kAuto, Migration::kFull, load.data(), phy.data(),
                                    full.data(), cnt.data(), nullptr);
  eplb::PlanResult rp = planner.Plan(s, Policy::kAuto, Migration::kPreserve, load.data(),
                                     phy.data(), full.data(), cnt.data(), nullptr);
  EXPECT_LE(r.moved_slots, rp.moved_slots);
  std::printf("[largest] moved FULL=%lld PRESERVE=%lld of %zu\n",
              static_cast<long long>(r.moved_slots), static_cast<long long>(rp.moved_slots),
              phy.size());
}

}  // namespace
