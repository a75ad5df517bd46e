// The host planner against every conformance vector in shared/conformance:
// phy2log, logcnt and log2phy exactly, the objective within 1e-9, and the
// migration modes on the files that carry an old placement.
#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "case_format.h"
#include "planner.h"
#include "test_env.h"

namespace {

std::vector<std::string> CaseFiles(const std::string& dir) {
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* ent = readdir(d)) {
      std::string n = ent->d_name;
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".eplb") == 0) files.push_back(n);
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

eplb::PlanShape ShapeOf(const eplb::PlanCase& c) {
  eplb::PlanShape s;
  s.num_layers = c.num_layers;
  s.num_logical_experts = c.num_logical_experts;
  s.num_physical_experts = c.num_physical_experts;
  s.num_groups = c.num_groups;
  s.num_nodes = c.num_nodes;
  s.num_ranks = c.num_ranks;
  return s;
}

// Sorted per-layer multiset of rank loads (exact float64 values).
std::vector<std::vector<double>> RankLoads(const eplb::PlanShape& s, const int64_t* load,
                                           const int32_t* phy2log) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = P / N;
  std::vector<std::vector<double>> out(s.num_layers);
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int32_t* row = phy2log + l * P;
    std::vector<int32_t> cnt(E, 0);
    for (int32_t p = 0; p < P; ++p) ++cnt[row[p]];
    // A rank's load as a multiset of replica loads (order-free), so the
    // comparison does not depend on the summation order inside the rank.
    std::vector<std::vector<double>> ranks(N);
    for (int32_t r = 0; r < N; ++r) {
      for (int32_t k = 0; k < S; ++k) {
        int32_t e = row[r * S + k];
        ranks[r].push_back(static_cast<double>(load[l * E + e]) / cnt[e]);
      }
      std::sort(ranks[r].begin(), ranks[r].end());
    }
    std::sort(ranks.begin(), ranks.end());
    for (auto& r : ranks) out[l].insert(out[l].end(), r.begin(), r.end());
  }
  return out;
}

TEST(PlannerConformance, AllFiles) {
  EPLB_REQUIRE_DATA_PATH(dir, "conformance");
  std::vector<std::string> files = CaseFiles(dir);
  ASSERT_FALSE(files.empty()) << "no *.eplb files in " << dir;
  eplb::Planner planner;
  int with_old = 0;
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    eplb::PlanCase c = eplb::ReadPlanCase(dir + "/" + f);
    const eplb::PlanShape s = ShapeOf(c);
    const size_t L = s.num_layers, E = s.num_logical_experts, P = s.num_physical_experts;
    std::vector<int32_t> phy2log(L * P, -7), logcnt(L * E, -7), log2phy(L * E * (P - E + 1), -7);
    eplb::PlanResult r =
        planner.Plan(s, eplb::Policy::kAuto, eplb::Migration::kNone, c.weights.data(), nullptr,
                     phy2log.data(), logcnt.data(), log2phy.data());
    EXPECT_EQ(r.moved_slots, -1);
    EXPECT_EQ(r.policy, c.num_groups % c.num_nodes == 0 ? eplb::Policy::kHierarchical
                                                        : eplb::Policy::kGlobal);
    ASSERT_EQ(phy2log, c.phy2log);
    ASSERT_EQ(logcnt, c.logcnt);
    ASSERT_EQ(log2phy, c.log2phy);
    ASSERT_TRUE(c.has_objective);
    eplb::PlanMetrics m = eplb::Evaluate(s, c.weights.data(), phy2log.data(), nullptr, nullptr);
    EXPECT_NEAR(m.max_load_sum, c.max_load_sum, 1e-9 * std::fabs(c.max_load_sum));
    EXPECT_NEAR(m.balancedness, c.balancedness, 1e-9 * std::fabs(c.balancedness));

    if (c.old_phy2log.empty()) continue;
    ++with_old;
    const int64_t moved_none = eplb::CountMovedSlots(s, phy2log.data(), c.old_phy2log.data());
    std::vector<int32_t> pres(L * P), full(L * P), cnt2(L * E);
    eplb::PlanResult rp =
        planner.Plan(s, eplb::Policy::kAuto, eplb::Migration::kPreserve, c.weights.data(),
                     c.old_phy2log.data(), pres.data(), cnt2.data(), nullptr);
    EXPECT_EQ(pres, c.preserved_phy2log);
    EXPECT_EQ(rp.moved_slots, c.moved_slots);
    EXPECT_EQ(cnt2, c.logcnt);
    eplb::PlanResult rf =
        planner.Plan(s, eplb::Policy::kAuto, eplb::Migration::kFull, c.weights.data(),
                     c.old_phy2log.data(), full.data(), cnt2.data(), nullptr);
    EXPECT_EQ(cnt2, c.logcnt);
    EXPECT_LE(rf.moved_slots, rp.moved_slots);
    EXPECT_EQ(rf.moved_slots, eplb::CountMovedSlots(s, full.data(), c.old_phy2log.data()));
    EXPECT_EQ(RankLoads(s, c.weights.data(), full.data()),
              RankLoads(s, c.weights.data(), phy2log.data()));
    eplb::PlanMetrics mf = eplb::Evaluate(s, c.weights.data(), full.data(), nullptr, nullptr);
    EXPECT_NEAR(mf.max_load_sum, c.max_load_sum, 1e-9 * std::fabs(c.max_load_sum));
    std::printf("[moved] %-36s slots=%zu NONE=%lld PRESERVE=%lld FULL=%lld\n", f.c_str(), L * P,
                static_cast<long long>(moved_none), static_cast<long long>(rp.moved_slots),
                static_cast<long long>(rf.moved_slots));
    ::testing::Test::RecordProperty("moved_" + f, std::to_string(moved_none) + "/" +
                                                      std::to_string(rp.moved_slots) + "/" +
                                                      std::to_string(rf.moved_slots));
  }
  std::printf("[conformance] %zu files, %d with old_phy2log\n", files.size(), with_old);
}

}  // namespace
