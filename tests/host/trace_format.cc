// eplb-loads parser: round trip, the shared trace's published statistics,
// and a table of malformed inputs that must name the right line.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "error.h"
#include "test_env.h"
#include "trace_format.h"

namespace {

const char* kGood =
    "# comment\n"
    "eplb-loads 1\n"
    "model tiny\n"
    "layers 2 experts 3 topk 2 steps 2\n"
    "step 0 tokens 2\n"
    "1 2 1\n"
    "0 0 4\n"
    "step 1 tokens 1\n"
    "2 0 0\n"
    "1 1 0\n";

TEST(TraceFormat, ParsesAndRoundTrips) {
  eplb::LoadTrace t = eplb::ParseLoadTrace(kGood, "good");
  EXPECT_EQ(t.model, "tiny");
  EXPECT_EQ(t.num_layers, 2);
  EXPECT_EQ(t.num_logical_experts, 3);
  ASSERT_EQ(t.num_steps(), 2);
  EXPECT_EQ(t.step(0)[5], 4);
  EXPECT_EQ(t.step(1)[0], 2);
  std::ostringstream out;
  eplb::WriteLoadTrace(out, t);
  eplb::LoadTrace u = eplb::ParseLoadTrace(out.str(), "again");
  EXPECT_EQ(u.loads, t.loads);
  EXPECT_EQ(u.tokens, t.tokens);
  EXPECT_EQ(u.model, t.model);
}

struct Bad {
  std::string text;
  int line;
  const char* needle;
};

TEST(TraceFormat, MalformedInputsNameTheLine) {
  const std::string head = "eplb-loads 1\nlayers 2 experts 3 topk 2 steps 1\nstep 0 tokens 2\n";
  const Bad cases[] = {
      {"eplb-load 1\n", 1, "expected 'eplb-loads 1'"},
      {"eplb-loads 2\n", 1, "version"},
      {"eplb-loads 1\nlayers 2 experts 3 topk 2\n", 2, "layers L experts E"},
      {"eplb-loads 1\nlayers 0 experts 3 topk 2 steps 1\n", 2, "layers"},
      {"eplb-loads 1\nlayers 2 experts 3 topk 9 steps 1\n", 2, "topk"},
      {"eplb-loads 1\nlayers 2 experts x topk 2 steps 1\n", 2, "not an integer"},
      {"eplb-loads 1\nlayers 2 experts 3 topk 2 steps 1\nstep 1 tokens 2\n", 3, "out of order"},
      {"eplb-loads 1\nlayers 2 experts 3 topk 2 steps 1\nstap 0 tokens 2\n", 3, "expected 'step"},
      {head + "1 2 1\n0 0\n", 5, "2 values, expected 3"},
      {head + "1 2 1\n0 0 4 1\n", 5, "4 values"},
      {head + "1 2 1\n0 -1 5\n", 5, "outside"},
      {head + "1 2 1\n0 1.5 4\n", 5, "not an integer"},
      {head + "1 2 1\n0 0 3\n", 5, "expected tokens * topk"},
      {head + "1 2 1\n", 4, "unexpected end of file"},
      {head + "1 2 1\nstep 1 tokens 2\n", 5, "layer rows"},
      {head + "1 2 1\n0 0 4\nstep 1 tokens 0\n", 6, "after the last step"},
      {"", 0, "unexpected end of file"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) {
    const Bad& b = cases[i];
    try {
      eplb::ParseLoadTrace(b.text, "bad.txt");
      ADD_FAILURE() << "case " << i << " parsed: " << b.text;
    } catch (const eplb::Error& e) {
      EXPECT_EQ(e.status(), eplb::Status::kInvalidArgument);
      const std::string msg = e.what();
      const std::string where = "bad.txt:line " + std::to_string(b.line) + ":";
      EXPECT_EQ(msg.rfind(where, 0), 0u) << "case " << i << ": " << msg;
      EXPECT_NE(msg.find(b.needle), std::string::npos) << "case " << i << ": " << msg;
    }
  }
}

TEST(TraceFormat, MissingFileIsAnError) {
  EXPECT_THROW(eplb::ReadLoadTrace("/nonexistent/loads.txt"), eplb::Error);
}

TEST(TraceFormat, SharedTraceStatistics) {
  EPLB_REQUIRE_DATA_PATH(path, "traces/deepseek-v2-lite/loads.txt");
  eplb::LoadTrace t = eplb::ReadLoadTrace(path);
  ASSERT_EQ(t.num_layers, 26);
  ASSERT_EQ(t.num_logical_experts, 64);
  ASSERT_EQ(t.num_steps(), 250);
  // README: every layer's total is 192023 * 6; layer 0 checksum 37195848;
  // hottest expert of layer 0 is 8 with 39142.
  for (int l = 0; l < 26; ++l) {
    int64_t total = 0, checksum = 0;
    for (int s = 0; s < 250; ++s)
      for (int e = 0; e < 64; ++e) {
        total += t.step(s)[l * 64 + e];
        checksum += (e + 1) * t.step(s)[l * 64 + e];
      }
    EXPECT_EQ(total, 1152138) << "layer " << l;
    if (l == 0) EXPECT_EQ(checksum, 37195848);
  }
  int64_t e8 = 0;
  for (int s = 0; s < 250; ++s) e8 += t.step(s)[8];
  EXPECT_EQ(e8, 39142);
}

}  // namespace
