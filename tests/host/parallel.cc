// ParallelRanges on its thread pool: every index exactly once, a worker
// index never used by two threads at once, concurrent and nested callers,
// exceptions.
#include "parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using eplb::ParallelRanges;

// Runs ParallelRanges and checks its contract; returns the ranges' count.
int32_t CheckedRun(int32_t n, int32_t threads, int32_t per) {
  std::vector<std::atomic<int32_t>> hits(static_cast<size_t>(n));
  std::vector<std::atomic<int32_t>> busy(static_cast<size_t>(std::max(threads, 1)));
  std::atomic<int32_t> ranges{0}, overlap{0}, bad_worker{0};
  ParallelRanges(n, threads, per, [&](int32_t begin, int32_t end, int32_t w) {
    if (w < 0 || w >= std::max(threads, 1)) {
      ++bad_worker;
      return;
    }
    if (busy[static_cast<size_t>(w)].fetch_add(1) != 0) ++overlap;
    ++ranges;
    for (int32_t i = begin; i < end; ++i) ++hits[static_cast<size_t>(i)];
    std::this_thread::yield();
    --busy[static_cast<size_t>(w)];
  });
  EXPECT_EQ(bad_worker.load(), 0);
  EXPECT_EQ(overlap.load(), 0) << "a worker index was used by two threads at once";
  for (int32_t i = 0; i < n; ++i)
    EXPECT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << i;
  return ranges.load();
}

TEST(ParallelRanges, EveryIndexOnceAnyShape) {
  for (int32_t n : {1, 2, 3, 7, 8, 58, 64, 1000})
    for (int32_t threads : {1, 2, 3, 4, 8})
      for (int32_t per : {1, 4, 8}) {
        const int32_t ranges = CheckedRun(n, threads, per);
        EXPECT_GE(ranges, 1);
        EXPECT_LE(ranges, 2 * threads) << "n " << n << " threads " << threads;
      }
}

TEST(ParallelRanges, ConcurrentAndNestedCallers) {
  // Eight callers at once, each also nesting a call inside its ranges: the
  // pool may be saturated, and every call must still finish.
  std::vector<std::thread> callers;
  std::atomic<int64_t> sum{0};
  for (int c = 0; c < 8; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep)
        ParallelRanges(16, 4, 1, [&](int32_t begin, int32_t end, int32_t) {
          for (int32_t i = begin; i < end; ++i)
            ParallelRanges(8, 2, 1, [&](int32_t b, int32_t e, int32_t) { sum += e - b; });
        });
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(sum.load(), int64_t{8} * 20 * 16 * 8);
}

TEST(ParallelRanges, RethrowsTheLowestRangesException) {
  for (int rep = 0; rep < 50; ++rep) {
    std::atomic<int32_t> calls{0};
    try {
      ParallelRanges(64, 4, 1, [&](int32_t begin, int32_t, int32_t) {
        ++calls;
        if (begin >= 16) throw std::runtime_error("range at " + std::to_string(begin));
      });
      FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "range at 16");  // 8 ranges of 8: the second is the lowest throwing
    }
    EXPECT_EQ(calls.load(), 8) << "every range runs even when one throws";
  }
}

}  // namespace
