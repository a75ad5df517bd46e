// The conformance file reader and writer: every shared file parses into a
// self-consistent case, write -> parse is the identity, and every kind of
// malformed input is rejected with the exact line of the fault.
#include "case_format.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "error.h"
#include "test_env.h"

namespace {

std::vector<std::string> ConformanceFiles(const std::string& dir) {
  std::vector<std::string> files;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* ent = ::readdir(d)) {
      std::string n = ent->d_name;
      if (n.size() > 5 && n.compare(n.size() - 5, 5, ".eplb") == 0) files.push_back(dir + "/" + n);
    }
    ::closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

void ExpectSameCase(const eplb::PlanCase& a, const eplb::PlanCase& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_logical_experts, b.num_logical_experts);
  EXPECT_EQ(a.num_physical_experts, b.num_physical_experts);
  EXPECT_EQ(a.num_groups, b.num_groups);
  EXPECT_EQ(a.num_nodes, b.num_nodes);
  EXPECT_EQ(a.num_ranks, b.num_ranks);
  EXPECT_EQ(a.weights, b.weights);
  EXPECT_EQ(a.phy2log, b.phy2log);
  EXPECT_EQ(a.logcnt, b.logcnt);
  EXPECT_EQ(a.log2phy, b.log2phy);
  EXPECT_EQ(a.has_objective, b.has_objective);
  // 17 significant digits round-trip a double exactly.
  EXPECT_EQ(a.max_load_sum, b.max_load_sum);
  EXPECT_EQ(a.balancedness, b.balancedness);
  EXPECT_EQ(a.old_phy2log, b.old_phy2log);
  EXPECT_EQ(a.preserved_phy2log, b.preserved_phy2log);
  EXPECT_EQ(a.moved_slots, b.moved_slots);
}

TEST(CaseFormat, ParsesEveryConformanceFile) {
  EPLB_REQUIRE_DATA_PATH(readme, "conformance/README.md");
  std::vector<std::string> files = ConformanceFiles(eplb_test::DataDir() + "/conformance");
  ASSERT_GE(files.size(), 28u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    eplb::PlanCase c = eplb::ReadPlanCase(path);
    const size_t L = c.num_layers, E = c.num_logical_experts, P = c.num_physical_experts;
    const size_t W = P - E + 1;
    ASSERT_EQ(c.weights.size(), L * E);
    ASSERT_EQ(c.phy2log.size(), L * P);
    ASSERT_EQ(c.logcnt.size(), L * E);
    ASSERT_EQ(c.log2phy.size(), L * E * W);
    ASSERT_TRUE(c.has_objective);
    ASSERT_EQ(c.old_phy2log.size(), L * P);
    ASSERT_EQ(c.preserved_phy2log.size(), L * P);
    ASSERT_GE(c.moved_slots, 0);
    // The blocks must describe one placement: a misread token breaks these.
    int64_t moved = 0;
    for (size_t l = 0; l < L; ++l) {
      std::vector<int32_t> count(E, 0);
      for (size_t p = 0; p < P; ++p) {
        int32_t e = c.phy2log[l * P + p];
        ++count[e];
        const int32_t* row = &c.log2phy[(l * E + e) * W];
        EXPECT_TRUE(std::find(row, row + W, static_cast<int32_t>(p)) != row + W);
        moved += c.preserved_phy2log[l * P + p] != c.old_phy2log[l * P + p];
      }
      for (size_t e = 0; e < E; ++e) EXPECT_EQ(count[e], c.logcnt[l * E + e]);
    }
    EXPECT_EQ(moved, c.moved_slots);
    EXPECT_GT(c.balancedness, 0.0);
    EXPECT_LE(c.balancedness, 1.0);
  }
}

TEST(CaseFormat, ReadsTheReadmeExampleValues) {
  EPLB_REQUIRE_DATA_PATH(path, "conformance/01_readme_example.eplb");
  eplb::PlanCase c = eplb::ReadPlanCase(path);
  EXPECT_EQ(c.name, "readme_example");
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_logical_experts, 12);
  EXPECT_EQ(c.num_physical_experts, 16);
  EXPECT_EQ(c.num_groups, 4);
  EXPECT_EQ(c.num_nodes, 2);
  EXPECT_EQ(c.num_ranks, 8);
  EXPECT_EQ(c.weights.front(), 90);
  EXPECT_EQ(c.weights.back(), 27);
  EXPECT_EQ(c.phy2log[0], 5);
  EXPECT_EQ(c.phy2log.back(), 1);
  EXPECT_EQ(c.log2phy[0], 12);
  EXPECT_EQ(c.log2phy[1], -1);
  EXPECT_EQ(c.max_load_sum, 335.5);
  EXPECT_EQ(c.balancedness, 0.81636914327548027);
  EXPECT_EQ(c.moved_slots, 21);
}

TEST(CaseFormat, RoundTripsEveryConformanceFile) {
  EPLB_REQUIRE_DATA_PATH(readme, "conformance/README.md");
  std::vector<std::string> files = ConformanceFiles(eplb_test::DataDir() + "/conformance");
  ASSERT_GE(files.size(), 28u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    eplb::PlanCase c = eplb::ReadPlanCase(path);
    std::ostringstream once;
    eplb::WritePlanCase(once, c);
    eplb::PlanCase back = eplb::ParsePlanCase(once.str(), "written");
    ExpectSameCase(c, back);
    std::ostringstream twice;
    eplb::WritePlanCase(twice, back);
    EXPECT_EQ(once.str(), twice.str());
  }
}

TEST(CaseFormat, RoundTripsOptionalBlocksAbsent) {
  eplb::PlanCase c;
  c.name = "only_weights";
  c.num_layers = 2;
  c.num_logical_experts = 3;
  c.num_physical_experts = 4;
  c.num_groups = 1;
  c.num_nodes = 1;
  c.num_ranks = 2;
  c.weights = {0, 1, (int64_t{1} << 53) - 1, 7, 8, 9};
  c.has_objective = true;
  c.max_load_sum = 0.1 + 0.2;  // not representable in fewer than 17 digits
  c.balancedness = 1.0 / 3.0;
  std::ostringstream out;
  eplb::WritePlanCase(out, c);
  eplb::PlanCase back = eplb::ParsePlanCase(out.str());
  ExpectSameCase(c, back);
  EXPECT_TRUE(back.phy2log.empty());
  EXPECT_EQ(back.moved_slots, -1);
}

TEST(CaseFormat, WriterRejectsInconsistentCase) {
  eplb::PlanCase c;
  c.name = "bad";
  c.num_layers = 1;
  c.num_logical_experts = 2;
  c.num_physical_experts = 2;
  c.num_groups = 1;
  c.num_nodes = 1;
  c.num_ranks = 1;
  c.weights = {1, 2};
  c.phy2log = {0};  // one short
  std::ostringstream out;
  EXPECT_THROW(eplb::WritePlanCase(out, c), eplb::Error);
  c.phy2log = {0, 1};
  c.name = "two words";
  EXPECT_THROW(eplb::WritePlanCase(out, c), eplb::Error);
}

TEST(CaseFormat, MissingFileIsAnError) {
  try {
    eplb::ReadPlanCase("/nonexistent/dir/x.eplb");
    FAIL() << "no error";
  } catch (const eplb::Error& e) {
    EXPECT_EQ(e.status(), eplb::Status::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/x.eplb"), std::string::npos);
  }
}

// A valid small case, one item per line, so each malformed variant below
// replaces one line and knows the line its error must name.
const std::vector<std::string> kValid = {
    "# a comment line",                                       // 1
    "eplb-case 1",                                            // 2
    "name tiny",                                              // 3
    "layers 1 logical 4 physical 6 groups 1 nodes 1 gpus 2",  // 4
    "weights",                                                // 5
    "10 20 30 40",                                            // 6
    "phy2log",                                                // 7
    "0 1 2 3 3 2",                                            // 8
    "logcnt",                                                 // 9
    "1 1 2 2",                                                // 10
    "   # an indented comment",                               // 11
    "log2phy",                                                // 12
    "0 -1 -1 1 -1 -1 2 5 -1 3 4 -1",                          // 13
    "objective max_load_sum 50 balancedness 1",               // 14
    "moved_slots 3",                                          // 15
    "end",                                                    // 16
};

std::string Join(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}

std::string WithLine(int line, const std::string& text) {
  std::vector<std::string> lines = kValid;
  lines[static_cast<size_t>(line - 1)] = text;
  return Join(lines);
}

TEST(CaseFormat, ValidBaseParses) {
  eplb::PlanCase c = eplb::ParsePlanCase(Join(kValid), "base");
  EXPECT_EQ(c.name, "tiny");
  EXPECT_EQ(c.weights, (std::vector<int64_t>{10, 20, 30, 40}));
  EXPECT_EQ(c.log2phy[7], 5);
  EXPECT_EQ(c.moved_slots, 3);
  // The largest load the format allows, and a CRLF file.
  c = eplb::ParsePlanCase(WithLine(6, "10 20 9007199254740991 40"));
  EXPECT_EQ(c.weights[2], 9007199254740991);
  std::string crlf;
  for (const std::string& l : kValid) crlf += l + "\r\n";
  EXPECT_EQ(eplb::ParsePlanCase(crlf).phy2log, (std::vector<int32_t>{0, 1, 2, 3, 3, 2}));
}

struct Malformed {
  const char* what;
  std::string text;
  int line;
  const char* reason;  // a substring of the message
};

TEST(CaseFormat, RejectsMalformedInputWithLineNumber) {
  const std::string L4 = "layers 1 logical 4 physical 6 groups 1 nodes 1 gpus 2";
  std::vector<Malformed> cases = {
      {"empty file", "", 1, "unexpected end of file"},
      {"only comments", "# x\n# y\n", 2, "unexpected end of file"},
      {"bad magic", WithLine(2, "eplbcase 1"), 2, "expected keyword 'eplb-case'"},
      {"bad version", WithLine(2, "eplb-case 2"), 2, "out of range"},
      {"missing name", WithLine(3, "tiny"), 3, "expected keyword 'name'"},
      {"misspelt gpus", WithLine(4, "layers 1 logical 4 physical 6 groups 1 nodes 1 gpu 2"), 4,
       "expected keyword 'gpus'"},
      {"zero layers", WithLine(4, "layers 0 logical 4 physical 6 groups 1 nodes 1 gpus 2"), 4,
       "layers: value 0 out of range"},
      {"too many layers", WithLine(4, "layers 129 logical 4 physical 6 groups 1 nodes 1 gpus 2"), 4,
       "layers: value 129 out of range"},
      {"too many experts",
       WithLine(4, "layers 1 logical 1025 physical 2000 groups 1 nodes 1 gpus 2"), 4,
       "logical: value 1025"},
      {"too many slots", WithLine(4, "layers 1 logical 4 physical 4097 groups 1 nodes 1 gpus 2"), 4,
       "physical: value 4097"},
      {"fewer slots than experts",
       WithLine(4, "layers 1 logical 4 physical 3 groups 1 nodes 1 gpus 2"), 4,
       "physical: value 3"},
      {"too many gpus", WithLine(4, "layers 1 logical 4 physical 6 groups 1 nodes 1 gpus 1025"), 4,
       "gpus: value 1025"},
      {"size not a number", WithLine(4, "layers one logical 4 physical 6 groups 1 nodes 1 gpus 2"),
       4, "layers: expected an integer, found 'one'"},
      {"shape split over lines", WithLine(4, "layers 1 logical 4\nphysical x"), 5,
       "physical: expected an integer"},
      {"missing weights keyword", WithLine(5, "phy2log"), 5, "expected keyword 'weights'"},
      {"short weights", WithLine(6, "10 20 30"), 7, "weights: expected 4 numbers"},
      {"long weights", WithLine(6, "10 20 30 40 50"), 6, "too many numbers in 'weights'"},
      {"weight not a number", WithLine(6, "10 20 x 40"), 6,
       "weights: expected an integer, found 'x'"},
      {"fractional weight", WithLine(6, "10 20 3.5 40"), 6, "found '3.5'"},
      {"negative weight", WithLine(6, "10 -1 30 40"), 6, "weights: value -1 out of range"},
      {"weight 2^53", WithLine(6, "10 9007199254740992 30 40"), 6, "out of range"},
      {"weight overflows int64", WithLine(6, "10 99999999999999999999 30 40"), 6,
       "expected an integer"},
      {"trailing comment on a data line", WithLine(6, "10 20 30 40 # four"), 6,
       "unknown keyword '#'"},
      {"unknown keyword", WithLine(7, "phy2logs"), 7, "unknown keyword 'phy2logs'"},
      {"phy2log entry >= E", WithLine(8, "0 1 2 3 3 4"), 8, "phy2log: value 4 out of range"},
      {"phy2log entry < 0", WithLine(8, "0 1 2 -1 3 3"), 8, "phy2log: value -1"},
      {"short phy2log", WithLine(8, "0 1 2 3 3"), 9, "phy2log: expected 6 numbers"},
      {"logcnt zero", WithLine(10, "1 1 2 0"), 10, "logcnt: value 0 out of range"},
      {"log2phy entry >= P", WithLine(13, "0 -1 -1 1 -1 -1 2 5 -1 3 4 6"), 13,
       "log2phy: value 6 out of range"},
      {"log2phy entry < -1", WithLine(13, "0 -1 -1 1 -1 -1 2 5 -1 3 4 -2"), 13,
       "log2phy: value -2"},
      {"short log2phy at objective", WithLine(13, "0 -1 -1 1 -1 -1 2 5 -1 3 4"), 14,
       "log2phy: expected 12 numbers"},
      {"objective not a number", WithLine(14, "objective max_load_sum abc balancedness 1"), 14,
       "max_load_sum: expected a finite number, found 'abc'"},
      {"objective nan", WithLine(14, "objective max_load_sum nan balancedness 1"), 14,
       "finite number"},
      {"balancedness above 1", WithLine(14, "objective max_load_sum 5 balancedness 1.5"), 14,
       "balancedness: value 1.5 out of range"},
      {"objective misspelt", WithLine(14, "objective max_load balancedness 1"), 14,
       "expected keyword 'max_load_sum'"},
      {"block out of order", WithLine(15, "logcnt 1 1 2 2"), 15,
       "'logcnt' out of order or repeated (after 'objective')"},
      {"block repeated", WithLine(15, "moved_slots 3 moved_slots 3"), 15,
       "'moved_slots' out of order or repeated"},
      {"moved_slots negative", WithLine(15, "moved_slots -1"), 15, "moved_slots: value -1"},
      {"moved_slots above L*P", WithLine(15, "moved_slots 7"), 15, "moved_slots: value 7"},
      {"missing end", WithLine(16, ""), 16, "expected 'end'"},
      {"junk after end", WithLine(16, "end\n\nextra"), 18, "unexpected 'extra' after 'end'"},
  };
  for (const Malformed& m : cases) {
    SCOPED_TRACE(m.what);
    try {
      eplb::ParsePlanCase(m.text, "case.eplb");
      ADD_FAILURE() << "accepted: " << m.what;
    } catch (const eplb::Error& e) {
      EXPECT_EQ(e.status(), eplb::Status::kInvalidArgument);
      std::string msg = e.what();
      std::string prefix = "case.eplb:line " + std::to_string(m.line) + ": ";
      EXPECT_EQ(msg.compare(0, prefix.size(), prefix), 0) << msg;
      EXPECT_NE(msg.find(m.reason), std::string::npos) << msg;
    }
  }
}

TEST(CaseFormat, MessageWithoutSourceStartsWithLine) {
  try {
    eplb::ParsePlanCase(WithLine(8, "0 1 2 3 3 4"));
    FAIL() << "accepted";
  } catch (const eplb::Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("line 8: ", 0), 0u) << e.what();
  }
}

}  // namespace
