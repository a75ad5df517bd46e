// The `eplb` command-line tool, run as a separate process in a temporary
// folder: plan/eval reproduce the conformance files, --old and --migration
// reproduce the recorded migration results, malformed input fails cleanly
// without writing anything, and every command has --help.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "case_format.h"
#include "error.h"
#include "test_env.h"

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && base[0] ? base : "/tmp") + "/eplb_cli_XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    ASSERT_NE(::mkdtemp(buf.data()), nullptr);
    dir_ = buf.data();
  }
  void TearDown() override {
    if (dir_.empty()) return;
    if (DIR* d = ::opendir(dir_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") ::unlink((dir_ + "/" + n).c_str());
      }
      ::closedir(d);
    }
    ::rmdir(dir_.c_str());
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Runs `eplb ARGS` in the temporary folder.
  Result Run(const std::string& args) {
    std::string cmd = "cd " + Quote(dir_) + " && " + Quote(EPLB_CLI_PATH) + " " + args + " >" +
                      Quote(Path(".stdout")) + " 2>" + Quote(Path(".stderr"));
    int status = std::system(cmd.c_str());
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = ReadText(Path(".stdout"));
    r.err = ReadText(Path(".stderr"));
    return r;
  }

  std::string dir_;
};

std::vector<std::string> ConformanceFiles() {
  std::string dir = eplb_test::DataDir() + "/conformance";
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

bool Near(double a, double b) {
  return std::fabs(a - b) <= 1e-9 * std::max(1.0, std::fabs(b));
}

int64_t CountDiff(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  int64_t d = 0;
  for (size_t i = 0; i < a.size(); ++i) d += a[i] != b[i];
  return d;
}

// "objective max_load_sum X balancedness Y" -> X, Y.
bool ParseObjectiveLine(const std::string& line, double* x, double* y) {
  std::istringstream in(line);
  std::string a, b, c;
  return static_cast<bool>(in >> a >> b >> *x >> c >> *y) && a == "objective" &&
         b == "max_load_sum" && c == "balancedness";
}

TEST_F(CliTest, PlanAndEvalReproduceConformanceFiles) {
  EPLB_REQUIRE_DATA_PATH(readme, "conformance/README.md");
  std::vector<std::string> files = ConformanceFiles();
  ASSERT_GE(files.size(), 28u);
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    eplb::PlanCase want = eplb::ReadPlanCase(f);
    Result r = Run("plan --in " + Quote(f) + " --out out.eplb");
    ASSERT_EQ(r.code, 0) << r.err;
    eplb::PlanCase got = eplb::ReadPlanCase(Path("out.eplb"));
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(got.weights, want.weights);
    EXPECT_EQ(got.phy2log, want.phy2log);
    EXPECT_EQ(got.logcnt, want.logcnt);
    EXPECT_EQ(got.log2phy, want.log2phy);
    ASSERT_TRUE(got.has_objective);
    EXPECT_TRUE(Near(got.max_load_sum, want.max_load_sum));
    EXPECT_TRUE(Near(got.balancedness, want.balancedness));
    EXPECT_TRUE(got.old_phy2log.empty());
    EXPECT_EQ(got.moved_slots, -1);

    // eval scores the recorded placement.
    Result e = Run("eval --in " + Quote(f));
    ASSERT_EQ(e.code, 0) << e.err;
    double x = 0, y = 0;
    ASSERT_TRUE(ParseObjectiveLine(e.out, &x, &y)) << e.out;
    EXPECT_TRUE(Near(x, want.max_load_sum)) << e.out;
    EXPECT_TRUE(Near(y, want.balancedness)) << e.out;
    // ... and prints exactly the objective line that plan wrote.
    Result e2 = Run("eval --in out.eplb");
    ASSERT_EQ(e2.code, 0) << e2.err;
    std::string written = ReadText(Path("out.eplb"));
    EXPECT_NE(written.find(e2.out), std::string::npos) << e2.out;
  }
}

TEST_F(CliTest, OldPlacementReproducesRecordedMigration) {
  EPLB_REQUIRE_DATA_PATH(readme, "conformance/README.md");
  for (const std::string& f : ConformanceFiles()) {
    SCOPED_TRACE(f);
    eplb::PlanCase want = eplb::ReadPlanCase(f);
    // --old FILE takes FILE's old_phy2log block.
    Result r = Run("plan --in " + Quote(f) + " --old " + Quote(f) +
                   " --migration preserve --out pres.eplb");
    ASSERT_EQ(r.code, 0) << r.err;
    eplb::PlanCase pres = eplb::ReadPlanCase(Path("pres.eplb"));
    EXPECT_EQ(pres.phy2log, want.preserved_phy2log);
    EXPECT_EQ(pres.moved_slots, want.moved_slots);
    EXPECT_TRUE(Near(pres.max_load_sum, want.max_load_sum));

    r = Run("plan --in " + Quote(f) + " --old " + Quote(f) + " --migration none --out none.eplb");
    ASSERT_EQ(r.code, 0) << r.err;
    eplb::PlanCase none = eplb::ReadPlanCase(Path("none.eplb"));
    EXPECT_EQ(none.phy2log, want.phy2log);
    EXPECT_EQ(none.moved_slots, CountDiff(want.phy2log, want.old_phy2log));

    r = Run("plan --in " + Quote(f) + " --old " + Quote(f) + " --out full.eplb");  // default full
    ASSERT_EQ(r.code, 0) << r.err;
    eplb::PlanCase full = eplb::ReadPlanCase(Path("full.eplb"));
    EXPECT_EQ(full.moved_slots, CountDiff(full.phy2log, want.old_phy2log));
    EXPECT_LE(full.moved_slots, want.moved_slots);
    EXPECT_EQ(full.logcnt, want.logcnt);
    EXPECT_TRUE(Near(full.max_load_sum, want.max_load_sum));
    EXPECT_TRUE(Near(full.balancedness, want.balancedness));
  }
}

TEST_F(CliTest, FeedingThePlanBackMovesNothing) {
  EPLB_REQUIRE_DATA_PATH(f, "conformance/04_dsv3_p288_n4_r32.eplb");
  Result r = Run("plan --in " + Quote(f) + " --out first.eplb");
  ASSERT_EQ(r.code, 0) << r.err;
  eplb::PlanCase first = eplb::ReadPlanCase(Path("first.eplb"));
  for (const char* mode : {"none", "preserve", "full"}) {
    SCOPED_TRACE(mode);
    // first.eplb has no old_phy2log, so --old takes its phy2log.
    r = Run("plan --in " + Quote(f) + " --old first.eplb --migration " + mode +
            " --out again.eplb");
    ASSERT_EQ(r.code, 0) << r.err;
    eplb::PlanCase again = eplb::ReadPlanCase(Path("again.eplb"));
    EXPECT_EQ(again.phy2log, first.phy2log);
    EXPECT_EQ(again.moved_slots, 0);
  }
}

TEST_F(CliTest, RepeatPrintsMedianTime) {
  EPLB_REQUIRE_DATA_PATH(f, "conformance/01_readme_example.eplb");
  Result r = Run("plan --in " + Quote(f) + " --repeat 5");
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream in(r.out);
  std::string key;
  double us = -1;
  ASSERT_TRUE(static_cast<bool>(in >> key >> us)) << r.out;
  EXPECT_EQ(key, "median_us");
  EXPECT_GT(us, 0.0);
  // With --out as well, the file is still written.
  r = Run("plan --in " + Quote(f) + " --repeat 3 --out rep.eplb");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("median_us "), std::string::npos);
  EXPECT_EQ(eplb::ReadPlanCase(Path("rep.eplb")).phy2log, eplb::ReadPlanCase(f).phy2log);
}

// A valid case (README example shape, made-up loads) as lines, so each bad
// variant replaces one line and knows the line its message must name.
const std::vector<std::string> kGood = {
    "# test case",                                              // 1
    "eplb-case 1",                                              // 2
    "name cli_case",                                            // 3
    "layers 1 logical 12 physical 16 groups 4 nodes 2 gpus 8",  // 4
    "weights",                                                  // 5
    "5 9 1 4 7 3 8 2 6 11 10 12",                               // 6
    "end",                                                      // 7
};

std::string Lines(std::vector<std::string> lines, int replace = 0, const std::string& with = "") {
  if (replace > 0) lines[static_cast<size_t>(replace - 1)] = with;
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}

TEST_F(CliTest, PlansAFileWithOnlyWeights) {
  WriteText(Path("good.eplb"), Lines(kGood));
  Result r = Run("plan --in good.eplb --out out.eplb");
  ASSERT_EQ(r.code, 0) << r.err;
  eplb::PlanCase c = eplb::ReadPlanCase(Path("out.eplb"));
  EXPECT_EQ(c.phy2log.size(), 16u);
  EXPECT_EQ(c.log2phy.size(), 12u * 5u);
  EXPECT_TRUE(c.has_objective);
  // No temporary file is left beside the output.
  int entries = 0;
  if (DIR* d = ::opendir(dir_.c_str())) {
    while (dirent* e = ::readdir(d)) entries += e->d_name[0] != '.';
    ::closedir(d);
  }
  EXPECT_EQ(entries, 2);  // good.eplb, out.eplb
}

struct BadFile {
  const char* what;
  std::string text;
  int line;
};

TEST_F(CliTest, MalformedFilesFailWithLineAndWriteNothing) {
  std::vector<BadFile> cases = {
      {"unknown keyword", Lines(kGood, 5, "weight"), 5},
      {"short weights", Lines(kGood, 6, "5 9 1 4 7 3 8 2 6 11 10"), 7},
      {"not a number", Lines(kGood, 6, "5 9 1 4 7 3 8 2 6 11 10 x"), 6},
      {"negative load", Lines(kGood, 6, "5 9 1 4 7 3 8 2 6 11 -10 12"), 6},
      {"too many layers",
       Lines(kGood, 4, "layers 200 logical 12 physical 16 groups 4 nodes 2 gpus 8"), 4},
      {"missing end", Lines(kGood, 7, "# no end"), 7},
      {"unknown block", Lines(kGood, 7, "extras 1 2\nend"), 7},
  };
  for (const BadFile& b : cases) {
    SCOPED_TRACE(b.what);
    WriteText(Path("bad.eplb"), b.text);
    std::string where = "bad.eplb:line " + std::to_string(b.line) + ":";
    Result r = Run("plan --in bad.eplb --out never.eplb");
    EXPECT_EQ(r.code, 1) << r.err;  // a file or library error, never an abort
    EXPECT_NE(r.err.find(where), std::string::npos) << r.err;
    EXPECT_FALSE(eplb_test::PathExists(Path("never.eplb")));
    r = Run("eval --in bad.eplb");
    EXPECT_EQ(r.code, 1) << r.err;  // a file or library error, never an abort
    EXPECT_NE(r.err.find(where), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
    // A malformed --old file is reported the same way.
    WriteText(Path("good.eplb"), Lines(kGood));
    r = Run("plan --in good.eplb --old bad.eplb --out never.eplb");
    EXPECT_EQ(r.code, 1) << r.err;  // a file or library error, never an abort
    EXPECT_NE(r.err.find(where), std::string::npos) << r.err;
    EXPECT_FALSE(eplb_test::PathExists(Path("never.eplb")));
  }
}

TEST_F(CliTest, FailedPlanLeavesExistingOutputUntouched) {
  WriteText(Path("keep.eplb"), "previous contents\n");
  // Well-formed file, but 16 slots do not split over 3 GPUs: the library refuses.
  WriteText(Path("odd.eplb"),
            Lines(kGood, 4, "layers 1 logical 12 physical 16 groups 4 nodes 1 gpus 3"));
  Result r = Run("plan --in odd.eplb --out keep.eplb");
  EXPECT_EQ(r.code, 1) << r.err;  // a file or library error, never an abort
  EXPECT_NE(r.err.find("eplbPlanCompute"), std::string::npos) << r.err;
  EXPECT_EQ(ReadText(Path("keep.eplb")), "previous contents\n");
}

TEST_F(CliTest, BadOptionsAreErrors) {
  WriteText(Path("good.eplb"), Lines(kGood));
  WriteText(Path("other.eplb"),
            Lines(kGood, 4, "layers 1 logical 12 physical 24 groups 4 nodes 2 gpus 8"));
  const std::vector<std::string> bad = {
      "plan --in good.eplb --out o.eplb --bogus",
      "plan --in good.eplb --out o.eplb stray",
      "plan --out o.eplb",
      "plan --in good.eplb",
      "plan --in good.eplb --out",
      "plan --in good.eplb --out o.eplb --migration preserve",  // needs --old
      "plan --in good.eplb --out o.eplb --old good.eplb --migration sideways",
      "plan --in good.eplb --out o.eplb --old good.eplb",   // good.eplb has no placement
      "plan --in good.eplb --out o.eplb --old other.eplb",  // other shape (no placement either)
      "plan --in good.eplb --out o.eplb --repeat 0",
      "plan --in good.eplb --out o.eplb --repeat many",
      "plan --in missing.eplb --out o.eplb",
      "eval --in good.eplb",  // no phy2log to evaluate
      "eval",
      "eval --in good.eplb --out x",
      "demo --windows 0",
      "demo --seed -3",
      "demo --frobnicate",
      "nosuchcommand",
  };
  for (const std::string& args : bad) {
    SCOPED_TRACE(args);
    Result r = Run(args);
    EXPECT_TRUE(r.code == 1 || r.code == 2) << r.code << ": " << r.err;
    EXPECT_FALSE(r.err.empty());
    EXPECT_FALSE(eplb_test::PathExists(Path("o.eplb")));
  }
  // A placement of another shape given with --old.
  ASSERT_EQ(Run("plan --in other.eplb --out other_plan.eplb").code, 0);
  Result r = Run("plan --in good.eplb --out o.eplb --old other_plan.eplb");
  EXPECT_TRUE(r.code == 1 || r.code == 2) << r.code << ": " << r.err;
  EXPECT_NE(r.err.find("shape"), std::string::npos) << r.err;
  EXPECT_FALSE(eplb_test::PathExists(Path("o.eplb")));
}

// Inputs that once ended in an abort (std::bad_alloc escaping the command)
// now end with a message and exit 1.
TEST_F(CliTest, OversizedInputsFailWithAMessage) {
  // A header whose log2phy block would hold 128 x 1024 x 3073 entries, in a
  // 262 KB file: rejected at the block, without reserving for the count.
  std::string big =
      "eplb-case 1\nname big\n"
      "layers 128 logical 1024 physical 4096 groups 1 nodes 1 gpus 1024\nweights\n";
  for (int i = 0; i < 128 * 1024; ++i) big += i % 64 == 63 ? "0\n" : "0 ";
  big += "log2phy 1\nend\n";
  WriteText(Path("big.eplb"), big);
  Result r = Run("eval --in big.eplb");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("log2phy: expected 402784256 numbers"), std::string::npos) << r.err;
  // 2^20 synthetic steps of 58 x 256 loads: 121 GB of history, refused.
  r = Run("replay --synthetic drift --steps 1048576 --json j.json");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("give at most 18078 steps"), std::string::npos) << r.err;
  EXPECT_FALSE(eplb_test::PathExists(Path("j.json")));
}

// replay writes its JSON and its report both or neither.
TEST_F(CliTest, ReplayOutputsAreAllOrNothing) {
  Result r =
      Run("replay --synthetic stationary --steps 40 --policy reference --json ok.json "
          "--report no_such_dir/r.html");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("no_such_dir/r.html"), std::string::npos) << r.err;
  EXPECT_FALSE(eplb_test::PathExists(Path("ok.json")));
  r =
      Run("replay --synthetic stationary --steps 40 --policy reference --json ok.json "
          "--report r.html");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(eplb_test::PathExists(Path("ok.json")));
  EXPECT_TRUE(eplb_test::PathExists(Path("r.html")));
}

TEST_F(CliTest, EveryCommandHasHelp) {
  Result r = Run("--help");
  ASSERT_EQ(r.code, 0);
  for (const char* c : {"plan", "eval", "demo"}) {
    SCOPED_TRACE(c);
    EXPECT_NE(r.out.find(std::string("  ") + c + " "), std::string::npos) << r.out;
    Result h = Run(std::string(c) + " --help");
    EXPECT_EQ(h.code, 0);
    EXPECT_EQ(h.out.rfind(std::string("usage: eplb ") + c, 0), 0u) << h.out;
  }
}

// Rows "W | a b | n p f | us" of the demo table.
struct DemoRow {
  long window;
  double initial, planned;
  long none, preserve, full;
};

std::vector<DemoRow> DemoRows(const std::string& out) {
  std::vector<DemoRow> rows;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    DemoRow d;
    char bar1, bar2, bar3;
    double us;
    std::istringstream ls(line);
    if (ls >> d.window >> bar1 >> d.initial >> d.planned >> bar2 >> d.none >> d.preserve >>
            d.full >> bar3 >> us &&
        bar1 == '|' && bar2 == '|' && bar3 == '|') {
      rows.push_back(d);
    }
  }
  return rows;
}

TEST_F(CliTest, DemoPrintsItsTable) {
  Result r = Run("demo --windows 3 --seed 7 --no-gpu");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("window"), std::string::npos) << r.out;
  std::vector<DemoRow> rows = DemoRows(r.out);
  ASSERT_EQ(rows.size(), 3u) << r.out;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].window, static_cast<long>(i));
    EXPECT_GT(rows[i].planned, rows[i].initial);
    EXPECT_LE(rows[i].planned, 1.0);
    EXPECT_LE(rows[i].preserve, rows[i].none);
    EXPECT_LE(rows[i].full, rows[i].preserve);
  }
  // The same seed gives the same history and plans (timings aside).
  std::vector<DemoRow> again = DemoRows(Run("demo --windows 3 --seed 7 --no-gpu").out);
  ASSERT_EQ(again.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(again[i].initial, rows[i].initial);
    EXPECT_EQ(again[i].planned, rows[i].planned);
    EXPECT_EQ(again[i].full, rows[i].full);
  }
  std::vector<DemoRow> other = DemoRows(Run("demo --windows 3 --seed 8 --no-gpu").out);
  ASSERT_EQ(other.size(), 3u);
  EXPECT_NE(other[0].initial, rows[0].initial);
  // No arguments at all: the default run works too.
  Result d = Run("demo");
  ASSERT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(DemoRows(d.out).size(), 8u) << d.out;
}

}  // namespace
