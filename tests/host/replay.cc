// Replay: the figures are re-scored here from the logged placements with
// independent, deliberately simple code; determinism; the CLI's failure
// exit; the shared-trace figures.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include "replay.h"
#include "test_env.h"

namespace {

// Balancedness of placement pl [L][P] on the sum of steps [a, b).
double Score(const eplb::LoadTrace& t, int P, int N, const std::vector<int32_t>& pl, int a, int b) {
  const int L = t.num_layers, E = t.num_logical_experts, S = P / N;
  double sum = 0;
  for (int l = 0; l < L; ++l) {
    std::vector<double> w(E, 0.0);
    for (int s = a; s < b; ++s)
      for (int e = 0; e < E; ++e) w[e] += static_cast<double>(t.step(s)[l * E + e]);
    std::vector<int> cnt(E, 0);
    for (int p = 0; p < P; ++p) cnt[pl[l * P + p]]++;
    double mx = 0, tot = 0;
    for (int r = 0; r < N; ++r) {
      double x = 0;
      for (int p = r * S; p < (r + 1) * S; ++p) x += w[pl[l * P + p]] / cnt[pl[l * P + p]];
      mx = std::max(mx, x);
      tot += x;
    }
    sum += mx > 0 ? (tot / N) / mx : 1.0;
  }
  return sum / L;
}

double Churn(int L, int P, int N, const std::vector<int32_t>& before,
             const std::vector<int32_t>& after) {
  const int S = P / N;
  long n = 0;
  for (int l = 0; l < L; ++l)
    for (int r = 0; r < N; ++r) {
      std::set<int> b, a;
      for (int p = r * S; p < (r + 1) * S; ++p) {
        b.insert(before[l * P + p]);
        a.insert(after[l * P + p]);
      }
      for (int e : a) n += b.count(e) ? 0 : 1;
    }
  return static_cast<double>(n) / (L * P);
}

eplb::LoadTrace Small(eplb::SyntheticMode mode) {
  eplb::SyntheticConfig sc;
  sc.mode = mode;
  sc.seed = 7;
  sc.num_steps = 95;
  sc.num_layers = 4;
  sc.num_logical_experts = 32;
  sc.num_groups = 4;
  sc.topk = 4;
  sc.tokens_per_step = 200;
  sc.drift_steps = 40;
  sc.shift_every = 30;
  return eplb::GenerateSynthetic(sc);
}

void CheckRescored(const eplb::LoadTrace& t, const eplb::ReplayConfig& c) {
  const eplb::ReplayResult r = eplb::RunReplay(t, c);
  const int L = t.num_layers, P = c.num_physical_experts, N = c.num_ranks, I = c.interval;
  ASSERT_EQ(r.rearrangements, t.num_steps() / I - 1);
  ASSERT_EQ(r.placements.size(), static_cast<size_t>(r.rearrangements) + 1);
  EXPECT_EQ(r.placements[0], eplb::InitialPlacement(r.shape));
  double bs = 0, cs = 0;
  int skipped = 0;
  for (int k = 0; k < r.rearrangements; ++k) {
    const int t0 = (k + 1) * I;
    EXPECT_EQ(r.step[k], t0);
    const double b = Score(t, P, N, r.placements[k + 1], t0, t0 + I);
    const double ch = Churn(L, P, N, r.placements[k], r.placements[k + 1]);
    EXPECT_NEAR(r.balancedness[k], b, 1e-12) << "point " << k;
    EXPECT_NEAR(r.churn_per[k], ch, 1e-15) << "point " << k;
    if (r.skipped_per[k]) {
      EXPECT_EQ(r.placements[k + 1], r.placements[k]);
      ++skipped;
    }
    bs += b;
    if (k > 0) cs += ch;
  }
  EXPECT_EQ(r.skipped, skipped);
  EXPECT_NEAR(r.forward_balancedness, bs / r.rearrangements, 1e-12);
  EXPECT_NEAR(r.churn, cs / (r.rearrangements - 1), 1e-12);
}

TEST(Replay, FiguresMatchAnIndependentRescoring) {
  for (auto mode : {eplb::SyntheticMode::kStationary, eplb::SyntheticMode::kDrift,
                    eplb::SyntheticMode::kShift}) {
    const eplb::LoadTrace t = Small(mode);
    for (auto policy : {eplb::ReplayPolicy::kReference, eplb::ReplayPolicy::kChurnAware,
                        eplb::ReplayPolicy::kHistory, eplb::ReplayPolicy::kStatic}) {
      SCOPED_TRACE(std::string(eplb::SyntheticModeName(mode)) + " " +
                   eplb::ReplayPolicyName(policy));
      eplb::ReplayConfig c;
      c.num_physical_experts = 40;
      c.num_ranks = 8;
      c.num_groups = 4;
      c.num_nodes = 2;
      c.policy = policy;
      CheckRescored(t, c);
      c.num_groups = 1;
      c.num_nodes = 1;
      c.churn.single_moves = true;
      CheckRescored(t, c);
    }
  }
}

TEST(Replay, Deterministic) {
  const eplb::LoadTrace t = Small(eplb::SyntheticMode::kDrift);
  eplb::ReplayConfig c;
  c.num_physical_experts = 40;
  c.num_ranks = 8;
  const eplb::ReplayResult a = eplb::RunReplay(t, c), b = eplb::RunReplay(t, c);
  EXPECT_EQ(a.placements, b.placements);
  EXPECT_EQ(a.balancedness, b.balancedness);
  const eplb::LoadTrace t2 = Small(eplb::SyntheticMode::kDrift);
  EXPECT_EQ(t.loads, t2.loads);
}

TEST(Replay, RejectsBadConfig) {
  const eplb::LoadTrace t = Small(eplb::SyntheticMode::kStationary);
  eplb::ReplayConfig c;
  c.num_physical_experts = 41;
  c.num_ranks = 8;
  EXPECT_THROW(eplb::RunReplay(t, c), eplb::Error);
  c.num_physical_experts = 40;
  c.interval = 60;  // fewer than 2 * interval steps
  EXPECT_THROW(eplb::RunReplay(t, c), eplb::Error);
}

// Sums over steps that would pass 2^53 (or wrap int64) are an error, not
// a silently wrong plan; so is a byte count past int64.
TEST(Replay, OverflowingSumsAreErrors) {
  eplb::LoadTrace t;
  t.num_layers = 1;
  t.num_logical_experts = 2;
  for (int s = 0; s < 4096; ++s) {
    t.tokens.push_back(1);
    t.loads.push_back(int64_t{1} << 52);
    t.loads.push_back(1);
  }
  eplb::ReplayConfig c;
  c.num_physical_experts = 4;
  c.num_ranks = 2;
  c.interval = 1;
  c.policy = eplb::ReplayPolicy::kHindsight;
  try {
    eplb::RunReplay(t, c);
    ADD_FAILURE() << "no error";
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sum past 2^53"), std::string::npos) << e.what();
  }
  const eplb::LoadTrace d = Small(eplb::SyntheticMode::kDrift);
  eplb::ReplayConfig b;
  b.num_physical_experts = 40;
  b.num_ranks = 8;
  b.bytes_per_expert = int64_t{1} << 62;
  try {
    eplb::RunReplay(d, b);
    ADD_FAILURE() << "no error";
  } catch (const eplb::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bytes moved overflow"), std::string::npos) << e.what();
  }
}

TEST(Replay, CliFailsOnBadTrace) {
  const std::string path = std::string(EPLB_BINARY_DIR) + "/replay_bad_trace.txt";
  {
    std::ofstream f(path);
    f << "eplb-loads 1\nlayers 1 experts 2 topk 1 steps 1\nstep 0 tokens 1\n1 x\n";
  }
  const std::string cmd =
      std::string(EPLB_CLI_PATH) + " replay --trace " + path + " > /dev/null 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
  const std::string ok = std::string(EPLB_CLI_PATH) +
                         " replay --synthetic drift --steps 40 --gpus 8 --slots 288 > /dev/null";
  EXPECT_EQ(std::system(ok.c_str()), 0);
  std::remove(path.c_str());
}

TEST(Replay, SharedTraceFigures) {
  EPLB_REQUIRE_DATA_PATH(path, "traces/deepseek-v2-lite/loads.txt");
  const eplb::LoadTrace t = eplb::ReadLoadTrace(path);
  eplb::ReplayConfig c;
  c.num_physical_experts = 80;
  c.num_ranks = 8;
  c.policy = eplb::ReplayPolicy::kReference;
  const eplb::ReplayResult ref = eplb::RunReplay(t, c);
  EXPECT_NEAR(ref.forward_balancedness, 0.888, 0.002);
  EXPECT_NEAR(ref.churn, 0.83, 0.005);
  c.policy = eplb::ReplayPolicy::kChurnAware;
  const eplb::ReplayResult ca = eplb::RunReplay(t, c);
  EXPECT_GE(ca.forward_balancedness, 0.905);
  EXPECT_LE(ca.churn, 0.10);

  c.num_physical_experts = 96;
  c.num_ranks = 16;
  c.policy = eplb::ReplayPolicy::kReference;
  const eplb::ReplayResult ref16 = eplb::RunReplay(t, c);
  EXPECT_NEAR(ref16.forward_balancedness, 0.821, 0.003);
  c.policy = eplb::ReplayPolicy::kChurnAware;
  const eplb::ReplayResult ca16 = eplb::RunReplay(t, c);
  // The goal: >= 0.85 at churn <= 0.10 (reached: 0.8515 at 0.085).
  EXPECT_GE(ca16.forward_balancedness, 0.85);
  EXPECT_LE(ca16.churn, 0.10);
}

}  // namespace
