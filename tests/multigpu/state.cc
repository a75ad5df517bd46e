// The state machine on 2 and 4 GPUs, one thread per GPU (ncclCommInitRank in
// each thread): hundreds of engine-like passes, every rearrangement checked
// byte for byte (state_harness.h), run twice for determinism; and a plan
// mismatch forced on one rank.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "gpu_env.h"
#include "state_harness.h"

namespace {

using eplb_state_test::LoopConfig;
using eplb_state_test::RankResult;

std::vector<RankResult> RunThreads(int n, const LoopConfig& c) {
  ncclUniqueId id;
  STATE_NK(ncclGetUniqueId(&id));
  std::vector<RankResult> res(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      STATE_CK(cudaSetDevice(r));
      ncclComm_t comm;
      STATE_NK(ncclCommInitRank(&comm, n, id, r));
      eplb_state_test::RankLoop(r, n, comm, c, &res[r]);
      STATE_NK(ncclCommDestroy(comm));
    });
  for (auto& t : threads) t.join();
  return res;
}

void LoopTest(int n, bool overlap = false, int32_t nodes = 2) {
  LoopConfig c;
  c.overlap = overlap;
  c.M = nodes;
  std::vector<RankResult> a = RunThreads(n, c);
  const int32_t first = c.interval - c.interval / 4;
  EXPECT_EQ(a[0].rearrangements, 1 + (c.steps - first) / c.interval);
  for (int r = 1; r < n; ++r) EXPECT_EQ(a[r].placements, a[0].placements) << "rank " << r;
  EXPECT_EQ(a[0].placements.size(), static_cast<size_t>(a[0].rearrangements));
  // The first rearrangement balances the window's skewed load better than
  // the initial placement did (the same load scores both). Per-pass figures
  // of the drifting synthetic routing are printed, not asserted: a few small
  // passes after a plan can land on either side of the few before it.
  std::printf("window balancedness at the first rearrangement: %.4f before, %.4f after\n",
              a[0].planned_before, a[0].planned_after);
  std::printf("pass balancedness: %.4f before the first rearrangement, %.4f after\n",
              a[0].stats_before, a[0].stats_after);
  // With 2 GPUs declared as 2 nodes (M = 2) every node is one GPU and the
  // hierarchical policy keeps each group on one node, so GPU balance is the
  // balance of whole groups; the initial placement, which splits groups and
  // spreads replicas of experts 0..7 over both GPUs, can beat that (seen:
  // 0.837 vs 0.772). With 4 GPUs (2 per node) replicas spread inside a node.
  if (n >= 4) EXPECT_GT(a[0].planned_after, a[0].planned_before);
  for (int r = 1; r < n; ++r) EXPECT_EQ(a[r].planned_after, a[0].planned_after) << "rank " << r;
  // Deterministic: the same run again gives the same placements.
  std::vector<RankResult> b = RunThreads(n, c);
  EXPECT_EQ(b[0].placements, a[0].placements);
}

// One rank (its rearrangements move weights between its own slots): runs
// on any GPU machine, every check of the harness included.
TEST(StateMultiGpu, LoopOneGpu) {
  EPLB_REQUIRE_GPUS(1);
  LoopTest(1, false, 1);
}

TEST(StateMultiGpu, LoopTwoGpus) {
  EPLB_REQUIRE_GPUS(2);
  LoopTest(2);
}

TEST(StateMultiGpu, LoopFourGpus) {
  EPLB_REQUIRE_GPUS(4);
  LoopTest(4);
}

// With a second communicator for the exchange (eplbStateConfig_t.overlap_comm).
TEST(StateMultiGpu, LoopTwoGpusOverlapComm) {
  EPLB_REQUIRE_GPUS(2);
  LoopTest(2, true);
}

TEST(StateMultiGpu, LoopFourGpusOverlapComm) {
  EPLB_REQUIRE_GPUS(4);
  LoopTest(4, true);
}

void MismatchTest(int n) {
  LoopConfig c;
  c.steps = 120;  // the forced mismatch at 30, then good ones at 70 and 110
  c.rank_to_tamper = 1;
  for (int run = 0; run < 2; ++run) {
    std::vector<RankResult> res = RunThreads(n, c);
    // The failed first rearrangement moved nothing; the next ones succeed.
    EXPECT_EQ(res[0].placements.size(), 2u);
    for (int r = 1; r < n; ++r) EXPECT_EQ(res[r].placements, res[0].placements);
  }
}

TEST(StateMultiGpu, PlanMismatchTwoGpus) {
  EPLB_REQUIRE_GPUS(2);
  MismatchTest(2);
}

TEST(StateMultiGpu, PlanMismatchFourGpus) {
  EPLB_REQUIRE_GPUS(4);
  MismatchTest(4);
}

}  // namespace
