// The planner's code paths (AVX-512, AVX2, portable) give the same plans:
// tests/tools/planner_digest prints a digest per random case, and it is run
// here once per path. On a CPU without AVX-512 the first two runs take the
// same path; the GPU machine's host CPU has it.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace {

std::string RunDigest(const char* env) {
  const std::string cmd = std::string(env) + " " + EPLB_PLANNER_DIGEST_PATH;
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    EXPECT_EQ(::pclose(p), 0) << cmd;
  } else {
    ADD_FAILURE() << "cannot run " << cmd;
  }
  return out;
}

TEST(PlannerPaths, EveryPathGivesTheSamePlans) {
  const std::string vec = RunDigest("env -u EPLB_PLANNER_NO_AVX512 -u EPLB_PLANNER_NO_AVX2");
  const std::string avx2 = RunDigest("env -u EPLB_PLANNER_NO_AVX2 EPLB_PLANNER_NO_AVX512=1");
  const std::string portable = RunDigest("env -u EPLB_PLANNER_NO_AVX512 EPLB_PLANNER_NO_AVX2=1");
  // 400 fresh plans, and two re-plans for each that succeeded (all of them:
  // the shapes are valid).
  size_t lines = 0, ok = 0;
  for (size_t i = vec.find('\n'); i != std::string::npos; i = vec.find('\n', i + 1)) ++lines;
  for (size_t i = vec.find(" 0 "); i != std::string::npos; i = vec.find(" 0 ", i + 1)) ++ok;
  EXPECT_EQ(lines, 1200u);
  EXPECT_EQ(ok, 1200u);
  EXPECT_EQ(avx2, vec);
  EXPECT_EQ(portable, vec);
}

}  // namespace
