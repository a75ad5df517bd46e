// The state machine with one process per GPU, as engines usually run it: the
// test re-executes its own binary once per rank (a fresh process: CUDA is
// never used across fork) with the NCCL unique id in the environment; each
// child runs the engine-like loop of state_harness.h, whose checks (load,
// plan, maps, every weight byte after every rearrangement) decide its exit
// status. The parent passes when every child does.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_env.h"
#include "state_harness.h"

extern char** environ;

namespace {

constexpr const char* kChildEnv = "EPLB_STATE_TEST_CHILD";  // "rank,n,tamper,hex id"

std::string Hex(const void* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<const unsigned char*>(p)[i];
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

bool Unhex(const std::string& s, void* p, size_t n) {
  if (s.size() != 2 * n) return false;
  auto v = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < n; ++i)
    static_cast<unsigned char*>(p)[i] =
        static_cast<unsigned char>(v(s[2 * i]) * 16 + v(s[2 * i + 1]));
  return true;
}

// Runs n children (one per GPU); returns their exit codes.
std::vector<int> SpawnRanks(int n, int tamper) {
  ncclUniqueId id;
  STATE_NK(ncclGetUniqueId(&id));
  const std::string hex = Hex(&id, sizeof(id));
  std::vector<pid_t> pids(n, -1);
  for (int r = 0; r < n; ++r) {
    std::vector<std::string> env_s;
    for (char** e = environ; *e != nullptr; ++e)
      if (std::strncmp(*e, kChildEnv, std::strlen(kChildEnv)) != 0) env_s.push_back(*e);
    env_s.push_back(std::string(kChildEnv) + "=" + std::to_string(r) + "," + std::to_string(n) +
                    "," + std::to_string(tamper) + "," + hex);
    std::vector<char*> env;
    for (auto& s : env_s) env.push_back(&s[0]);
    env.push_back(nullptr);
    std::string exe = "/proc/self/exe", filter = "--gtest_filter=StateProcs.DISABLED_Child",
                also = "--gtest_also_run_disabled_tests";
    char* argv[] = {&exe[0], &filter[0], &also[0], nullptr};
    if (posix_spawn(&pids[r], "/proc/self/exe", nullptr, nullptr, argv, env.data()) != 0)
      pids[r] = -1;
  }
  std::vector<int> codes(n, -1);
  for (int r = 0; r < n; ++r) {
    int status = 0;
    if (pids[r] > 0 && waitpid(pids[r], &status, 0) == pids[r] && WIFEXITED(status))
      codes[r] = WEXITSTATUS(status);
  }
  return codes;
}

// The child: one rank of the loop. Disabled (not listed as a test of its own):
// the parent tests start it with --gtest_also_run_disabled_tests.
TEST(StateProcs, DISABLED_Child) {
  const char* spec = std::getenv(kChildEnv);
  if (spec == nullptr) GTEST_SKIP() << "runs only as a child of the StateProcs tests";
  int rank = -1, n = 0, tamper = -1;
  char hex[2 * sizeof(ncclUniqueId) + 2] = {0};
  ASSERT_EQ(std::sscanf(spec, "%d,%d,%d,%s", &rank, &n, &tamper, hex), 4) << spec;
  ncclUniqueId id;
  ASSERT_TRUE(Unhex(hex, &id, sizeof(id)));
  STATE_CK(cudaSetDevice(rank));
  ncclComm_t comm;
  STATE_NK(ncclCommInitRank(&comm, n, id, rank));
  eplb_state_test::LoopConfig c;
  c.rank_to_tamper = tamper;
  if (tamper >= 0) c.steps = 120;
  // Four processes give the state a second communicator, two do not: the
  // process-per-GPU path is covered with and without it.
  c.overlap = n == 4;
  eplb_state_test::RankResult res;
  eplb_state_test::RankLoop(rank, n, comm, c, &res);
  EXPECT_EQ(res.placements.size(), tamper >= 0 ? 2u : 7u);
  STATE_NK(ncclCommDestroy(comm));
}

void ProcsTest(int n, int tamper) {
  const std::vector<int> codes = SpawnRanks(n, tamper);
  for (int r = 0; r < n; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r << " process failed";
}

TEST(StateProcs, LoopTwoProcesses) {
  EPLB_REQUIRE_GPUS(2);
  ProcsTest(2, -1);
}

TEST(StateProcs, LoopFourProcesses) {
  EPLB_REQUIRE_GPUS(4);
  ProcsTest(4, -1);
}

TEST(StateProcs, PlanMismatchFourProcesses) {
  EPLB_REQUIRE_GPUS(4);
  ProcsTest(4, 2);
}

}  // namespace
