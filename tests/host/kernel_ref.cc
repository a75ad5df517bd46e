// Host references of the device kernels against hand-checked cases, the
// replica-spread bounds of the route contract, and the topk trace parser
// against the checksums published in the trace README.
#include "kernel_ref.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "error.h"
#include "test_env.h"
#include "topk_format.h"

namespace {

// Two experts on three slots: expert 0 on slots {0, 2}, expert 1 on {1}.
struct TinyTable {
  std::vector<int32_t> log2phy{0, 2, 1, -1};
  std::vector<int32_t> logcnt{2, 1};
};

TEST(RouteCountRef, HandCase) {
  TinyTable t;
  const std::vector<int64_t> ids{0, 1, 0, 0, -1, 5, 0, 1};
  std::vector<int32_t> out(8, 77), load(3, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, 4, 4, 2, t.log2phy.data(), t.logcnt.data(), 2, 3, true, out.data(),
                      load.data(), &invalid);
  // Expert 0's items take its replicas in turn: slot 0, 2, 0, 2.
  EXPECT_EQ(out, (std::vector<int32_t>{0, 1, 2, 0, -1, -1, 2, 1}));
  EXPECT_EQ(load, (std::vector<int32_t>{2, 2, 2}));
  EXPECT_EQ(invalid, 2u);
}

TEST(RouteCountRef, ValidTokensAndRecordFlag) {
  TinyTable t;
  const std::vector<int64_t> ids{0, 1, 0, 0, -1, 5, 0, 1};
  std::vector<int32_t> out(8, 77), load(3, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, 4, 2, 2, t.log2phy.data(), t.logcnt.data(), 2, 3, true, out.data(),
                      load.data(), &invalid);
  EXPECT_EQ(out, (std::vector<int32_t>{0, 1, 2, 0, -1, -1, -1, -1}));
  EXPECT_EQ(load, (std::vector<int32_t>{2, 1, 1}));
  EXPECT_EQ(invalid, 0u);
  std::fill(out.begin(), out.end(), 77);
  eplb::RouteCountRef(ids, 4, 4, 2, t.log2phy.data(), t.logcnt.data(), 2, 3, false, out.data(),
                      load.data(), &invalid);
  EXPECT_EQ(out, (std::vector<int32_t>{0, 1, 2, 0, -1, -1, 2, 1}));
  EXPECT_EQ(load, (std::vector<int32_t>{2, 1, 1}));  // not recording: unchanged
  EXPECT_EQ(invalid, 2u);
}

TEST(RouteCountRef, BrokenTableEntriesAreInvalid) {
  // Expert 1's count says 2 but its second entry is -1; expert 0's count 0.
  std::vector<int32_t> log2phy{0, 2, 1, -1}, logcnt{0, 2};
  const std::vector<int64_t> ids{0, 1, 1, 1};
  std::vector<int32_t> out(4), load(3, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, 4, 4, 1, log2phy.data(), logcnt.data(), 2, 3, true, out.data(),
                      load.data(), &invalid);
  EXPECT_EQ(out, (std::vector<int32_t>{-1, 1, -1, 1}));
  EXPECT_EQ(load, (std::vector<int32_t>{0, 2, 0}));
  EXPECT_EQ(invalid, 2u);
}

TEST(RouteSegmentsRef, Shapes) {
  int32_t s = 0;
  int64_t len = 0;
  eplb::RouteSegmentsRef(1, &s, &len);
  EXPECT_EQ(s, 1);
  EXPECT_EQ(len, 32);
  eplb::RouteSegmentsRef(4096, &s, &len);
  EXPECT_EQ(s, 1);
  EXPECT_EQ(len, 4096);
  eplb::RouteSegmentsRef(4097, &s, &len);
  EXPECT_EQ(s, 2);
  EXPECT_EQ(len, 2080);  // ceil(4097 / 2) = 2049, rounded up to 32
  eplb::RouteSegmentsRef(int64_t{64} << 20, &s, &len);
  EXPECT_EQ(s, eplb::kRouteMaxSegmentsRef);
  EXPECT_GE(int64_t{s} * len, int64_t{64} << 20);
}

TEST(RouteCountRef, SecondSegmentStartsOnNextReplica) {
  TinyTable t;
  const std::vector<int64_t> ids(4097, 0);
  std::vector<int32_t> out(4097), load(3, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, 4097, 4097, 1, t.log2phy.data(), t.logcnt.data(), 2, 3, true, out.data(),
                      load.data(), &invalid);
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[1], 2);
  EXPECT_EQ(out[2079], 2);
  EXPECT_EQ(out[2080], 2);  // segment 1: rank 0 takes replica (0 + 1) mod 2
  EXPECT_EQ(out[2081], 0);
  EXPECT_EQ(load[0] + load[2], 4097);
  EXPECT_LE(std::abs(load[0] - load[2]), 2);
}

// Random placement of E experts over P slots (each expert >= 1 slot).
void RandomTable(std::mt19937_64& rng, int32_t E, int32_t P, std::vector<int32_t>* log2phy,
                 std::vector<int32_t>* logcnt) {
  const int32_t R1 = P - E + 1;
  std::vector<int32_t> phy2log(static_cast<size_t>(P));
  for (int32_t p = 0; p < P; ++p) phy2log[p] = p < E ? p : static_cast<int32_t>(rng() % E);
  std::shuffle(phy2log.begin(), phy2log.end(), rng);
  log2phy->assign(static_cast<size_t>(E) * R1, -1);
  logcnt->assign(static_cast<size_t>(E), 0);
  for (int32_t p = 0; p < P; ++p) {
    const int32_t e = phy2log[p];
    (*log2phy)[static_cast<size_t>(e) * R1 + (*logcnt)[e]++] = p;
  }
}

// The spread bound of the contract: per expert, its replicas' shares differ
// by at most the number of segments (1 with one segment).
void CheckSpread(int64_t T, int32_t K, int32_t E, int32_t P, double zipf, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> log2phy, logcnt;
  RandomTable(rng, E, P, &log2phy, &logcnt);
  std::vector<double> cdf(static_cast<size_t>(E));
  double acc = 0;
  for (int32_t e = 0; e < E; ++e) cdf[e] = acc += 1.0 / std::pow(e + 1.0, zipf);
  std::uniform_real_distribution<double> u(0.0, acc);
  std::vector<int64_t> ids(static_cast<size_t>(T * K));
  for (auto& v : ids) v = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
  std::vector<int32_t> out(ids.size()), load(static_cast<size_t>(P), 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, T, T, K, log2phy.data(), logcnt.data(), E, P, true, out.data(),
                      load.data(), &invalid);
  EXPECT_EQ(invalid, 0u);
  int32_t segs = 0;
  int64_t len = 0;
  eplb::RouteSegmentsRef(T * K, &segs, &len);
  const int32_t R1 = P - E + 1;
  for (int32_t e = 0; e < E; ++e) {
    int32_t lo = INT32_MAX, hi = 0;
    for (int32_t j = 0; j < logcnt[e]; ++j) {
      const int32_t c = load[log2phy[static_cast<size_t>(e) * R1 + j]];
      lo = std::min(lo, c);
      hi = std::max(hi, c);
    }
    EXPECT_LE(hi - lo, segs) << "expert " << e << " T " << T;
  }
}

TEST(RouteCountRef, SpreadWithinOneOnOneSegment) {
  CheckSpread(512, 8, 256, 288, 1.2, 1);
  CheckSpread(64, 8, 256, 320, 0.0, 2);
  CheckSpread(1, 8, 16, 64, 1.0, 3);
}

TEST(RouteCountRef, SpreadWithinSegmentsOnLargeInput) {
  CheckSpread(8192, 8, 256, 288, 1.2, 4);
  CheckSpread(100000, 8, 64, 80, 1.2, 5);
}

TEST(RouteCountRef, HashPathFromThreshold) {
  TinyTable t;
  const int64_t n = eplb::kRouteHashMinItemsRef;
  const std::vector<int64_t> ids(static_cast<size_t>(n), 0);
  std::vector<int32_t> out(ids.size()), load(3, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, n, n, 1, t.log2phy.data(), t.logcnt.data(), 2, 3, true, out.data(),
                      load.data(), &invalid);
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{12345}, n - 1}) {
    // Two replicas: the hash's top bit picks (floor(hash * 2 / 2^32)).
    const int32_t want = (eplb::ItemHashRef(static_cast<uint32_t>(i)) >> 31) ? 2 : 0;
    EXPECT_EQ(out[static_cast<size_t>(i)], want) << i;
  }
  // Binomial spread: within 6 standard deviations of n / 2.
  const double sd = std::sqrt(n * 0.25);
  EXPECT_LE(std::abs(load[0] - n / 2), 6 * sd);
  EXPECT_EQ(load[0] + load[2], n);
  EXPECT_EQ(load[1], 0);
}

TEST(RouteCountRef, HashPathArithmeticProgressions) {
  // One expert at every stride-th item (k = off of K = stride items per
  // token), the others invalid: Fibonacci hashing spreads such items over
  // c replicas within 8 items of equal (4 Mi items; a random hash would be
  // off by about sqrt(n / c), hundreds of items).
  const int64_t n = eplb::kRouteHashMinItemsRef;
  for (int32_t c = 2; c <= 9; ++c) {
    // Expert 0 on slots 0..c-1, expert 1 on slot c (rows c wide).
    const int32_t E = 2, P = c + 1;
    std::vector<int32_t> log2phy(static_cast<size_t>(E) * c, -1), logcnt{c, 1};
    for (int32_t j = 0; j < c; ++j) log2phy[static_cast<size_t>(j)] = j;
    log2phy[static_cast<size_t>(c)] = c;
    for (int32_t stride : {1, 2, 8, 16}) {
      for (int32_t off = 0; off < std::min(stride, 3); ++off) {
        std::vector<int64_t> ids(static_cast<size_t>(n), -1);
        for (int64_t i = off; i < n; i += stride) ids[static_cast<size_t>(i)] = 0;
        std::vector<int32_t> out(ids.size()), load(static_cast<size_t>(P), 0);
        uint64_t invalid = 0;
        eplb::RouteCountRef(ids, n / stride, n / stride, stride, log2phy.data(), logcnt.data(), E,
                            P, true, out.data(), load.data(), &invalid);
        const int64_t items = (n - off + stride - 1) / stride;
        for (int32_t j = 0; j < c; ++j)
          EXPECT_LE(std::abs(load[static_cast<size_t>(j)] * static_cast<double>(c) - items),
                    8.0 * c)
              << "c " << c << " stride " << stride << " off " << off << " replica " << j;
      }
    }
  }
}

TEST(RouteCountRef, HashPathSpread) {
  // 4 Mi items, Zipf(1.2) over 256 experts on 288 slots: every expert's
  // replicas within 6 standard deviations (sqrt(count / replicas)) + 1.
  std::mt19937_64 rng(9);
  const int32_t E = 256, P = 288, K = 8;
  const int64_t T = eplb::kRouteHashMinItemsRef / K;
  std::vector<int32_t> log2phy, logcnt;
  RandomTable(rng, E, P, &log2phy, &logcnt);
  std::vector<double> cdf(E);
  double acc = 0;
  for (int32_t e = 0; e < E; ++e) cdf[e] = acc += 1.0 / std::pow(e + 1.0, 1.2);
  std::uniform_real_distribution<double> u(0.0, acc);
  std::vector<int64_t> ids(static_cast<size_t>(T * K));
  for (auto& v : ids) v = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
  std::vector<int32_t> out(ids.size()), load(P, 0);
  uint64_t invalid = 0;
  eplb::RouteCountRef(ids, T, T, K, log2phy.data(), logcnt.data(), E, P, true, out.data(),
                      load.data(), &invalid);
  const int32_t R1 = P - E + 1;
  for (int32_t e = 0; e < E; ++e) {
    int64_t total = 0;
    for (int32_t j = 0; j < logcnt[e]; ++j) total += load[log2phy[e * R1 + j]];
    const double mean = static_cast<double>(total) / logcnt[e];
    for (int32_t j = 0; j < logcnt[e]; ++j)
      EXPECT_LE(std::abs(load[log2phy[e * R1 + j]] - mean), 6 * std::sqrt(mean) + 1) << e;
  }
}

TEST(CountRef, HandCase) {
  const std::vector<int64_t> ids{0, 2, 2, -1, 3, 1};
  std::vector<int32_t> load(3, 0);
  uint64_t invalid = 0;
  eplb::CountRef(ids, 3, 2, 3, true, load.data(), &invalid);
  EXPECT_EQ(load, (std::vector<int32_t>{1, 1, 2}));
  EXPECT_EQ(invalid, 2u);
  eplb::CountRef(ids, 1, 2, 3, false, load.data(), &invalid);
  EXPECT_EQ(load, (std::vector<int32_t>{1, 1, 2}));
  EXPECT_EQ(invalid, 2u);
}

TEST(WindowRef, HandCase) {
  const std::vector<int32_t> phy2log{0, 1, 0};
  std::vector<int32_t> window(2 * 2, 0), state{0, 0}, pass{1, 2, 3};
  std::vector<int64_t> sum(2, 0), red(2);
  eplb::WindowUpdateRef(phy2log.data(), pass.data(), 1, 2, 3, 2, window.data(), sum.data(),
                        state.data());
  EXPECT_EQ(pass, (std::vector<int32_t>{0, 0, 0}));
  EXPECT_EQ(sum, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(state[0], 1);
  pass = {1, 1, 1};
  eplb::WindowUpdateRef(phy2log.data(), pass.data(), 1, 2, 3, 2, window.data(), sum.data(),
                        state.data());
  EXPECT_EQ(sum, (std::vector<int64_t>{6, 3}));
  EXPECT_EQ(state[0], 0);
  pass = {0, 5, 0};  // evicts the first row (4, 2)
  eplb::WindowUpdateRef(phy2log.data(), pass.data(), 1, 2, 3, 2, window.data(), sum.data(),
                        state.data());
  EXPECT_EQ(sum, (std::vector<int64_t>{2, 6}));
  EXPECT_EQ(window, (std::vector<int32_t>{0, 5, 2, 1}));
  eplb::WindowReduceRef(window.data(), 2, 2, red.data());
  EXPECT_EQ(red, sum);
}

// The README table rows: | `pNNNN_tTTTT.txt` | prompt | tokens | total | c0 c1 ... |
struct ReadmeRow {
  std::string file;
  int64_t tokens = 0, total = 0;
  std::vector<int64_t> checksums;
};

std::vector<ReadmeRow> ReadmeRows(const std::string& readme) {
  std::ifstream in(readme);
  std::vector<ReadmeRow> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `p", 0) != 0) continue;
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, '|')) cells.push_back(cell);
    // cells[0] is empty (before the first '|').
    if (cells.size() < 6) continue;
    ReadmeRow r;
    const size_t a = cells[1].find('`'), b = cells[1].rfind('`');
    r.file = cells[1].substr(a + 1, b - a - 1);
    r.tokens = std::stoll(cells[3]);
    r.total = std::stoll(cells[4]);
    std::stringstream cs(cells[5]);
    int64_t v;
    while (cs >> v) r.checksums.push_back(v);
    rows.push_back(r);
  }
  return rows;
}

TEST(TopkTrace, ReadmeChecksums) {
  EPLB_REQUIRE_DATA_PATH(dir, "traces/deepseek-v2-lite/topk");
  const std::vector<ReadmeRow> rows = ReadmeRows(dir + "/../README.md");
  ASSERT_EQ(rows.size(), 20u);
  for (const ReadmeRow& r : rows) {
    SCOPED_TRACE(r.file);
    const eplb::TopkTrace t = eplb::ReadTopkTrace(dir + "/" + r.file);
    EXPECT_EQ(t.num_layers, 26);
    EXPECT_EQ(t.num_experts, 64);
    EXPECT_EQ(t.top_k, 6);
    EXPECT_EQ(t.num_tokens, r.tokens);
    ASSERT_EQ(r.checksums.size(), static_cast<size_t>(t.num_layers));
    int64_t total = 0;
    for (int32_t l = 0; l < t.num_layers; ++l) {
      const int64_t c = eplb::TopkLayerChecksum(t, l);
      EXPECT_EQ(c, r.checksums[static_cast<size_t>(l)]) << "layer " << l;
      total += c;
    }
    EXPECT_EQ(total, r.total);
  }
}

TEST(TopkTrace, RejectsBadInput) {
  const std::string good =
      "# c\neplb-topk 1\nlayers 1 experts 4 topk 2 tokens 2\nlayer 0\n0 1\n2 3\n";
  const eplb::TopkTrace t = eplb::ParseTopkTrace(good, "x");
  EXPECT_EQ(t.ids, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(eplb::TopkLayerChecksum(t, 0), 10);
  const char* bad[] = {
      "eplb-topk 2\nlayers 1 experts 4 topk 2 tokens 1\nlayer 0\n0 1\n",
      "eplb-topk 1\nlayers 1 experts 4 topk 2 tokens 1\nlayer 0\n0 4\n",
      "eplb-topk 1\nlayers 1 experts 4 topk 2 tokens 2\nlayer 0\n0 1\n",
      "eplb-topk 1\nlayers 1 experts 4 topk 2 tokens 1\nlayer 1\n0 1\n",
      "eplb-topk 1\nlayers 1 experts 4 topk 2 tokens 1\nlayer 0\n0 1 2\n",
      "eplb-topk 1\nlayers 1 experts 4 topk 2 tokens 1\nlayer 0\n0 x\n",
  };
  for (const char* b : bad) {
    try {
      eplb::ParseTopkTrace(b, "bad");
      ADD_FAILURE() << "accepted: " << b;
    } catch (const eplb::Error& e) {
      EXPECT_EQ(e.status(), eplb::Status::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("bad:line"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
