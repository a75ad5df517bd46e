// Device kernels against their host references (host/kernel_ref.h) and the
// GPU planner against the host planner: random inputs, the real routing
// trace, adversarial ids, a CUDA graph with changing device-side counts, and
// every conformance case. Every run happens twice on a stream the test made;
// both runs must be bit-identical to the reference.
#include <cuda.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <dirent.h>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "case_format.h"
#include "kernels/enqueue.cuh"
#include "eplb/eplb.h"
#include "gpu_env.h"
#include "kernel_ref.h"
#include "planner.h"
#include "recipe_route.cuh"
#include "test_env.h"
#include "topk_format.h"

namespace {

using eplb_test::ScopedStream;

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n = 0) { Resize(n); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void Resize(size_t n) {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = n;
    // At least one element, so that a zero-size case still has a valid pointer.
    EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& h, cudaStream_t s) {
    if (h.size() > n_) Resize(h.size());
    if (!h.empty())
      EXPECT_EQ(cudaMemcpyAsync(p_, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, s),
                cudaSuccess);
  }
  std::vector<T> Download(cudaStream_t s, size_t n = SIZE_MAX) const {
    std::vector<T> h(std::min(n, n_));
    if (!h.empty())
      EXPECT_EQ(cudaMemcpyAsync(h.data(), p_, h.size() * sizeof(T), cudaMemcpyDeviceToHost, s),
                cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    return h;
  }
  void Fill(int byte, cudaStream_t s) {
    if (n_) EXPECT_EQ(cudaMemsetAsync(p_, byte, n_ * sizeof(T), s), cudaSuccess);
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

#define EPLB_OK(expr) ASSERT_EQ((expr), EPLB_SUCCESS) << #expr << ": " << eplbGetLastErrorDetail()

struct Table {
  int32_t E = 0, P = 0;
  std::vector<int32_t> phy2log, log2phy, logcnt;
};

// The table of the slots' experts `phy2log` (every expert of [0, E) at
// least once) after shuffling the slots; log2phy rows in slot order.
Table ShuffledSlots(std::mt19937_64& rng, int32_t E, std::vector<int32_t> phy2log) {
  Table t;
  t.E = E;
  t.P = static_cast<int32_t>(phy2log.size());
  t.phy2log = std::move(phy2log);
  std::shuffle(t.phy2log.begin(), t.phy2log.end(), rng);
  const int32_t R1 = t.P - E + 1;
  t.log2phy.assign(static_cast<size_t>(E) * R1, -1);
  t.logcnt.assign(static_cast<size_t>(E), 0);
  for (int32_t p = 0; p < t.P; ++p) {
    const int32_t e = t.phy2log[p];
    t.log2phy[static_cast<size_t>(e) * R1 + t.logcnt[e]++] = p;
  }
  return t;
}

// Slot p < E holds expert p, each further slot an expert drawn from [0,
// hot) (E: any), then the slots are shuffled.
Table ShuffledTable(std::mt19937_64& rng, int32_t E, int32_t P, int32_t hot) {
  std::vector<int32_t> phy2log(static_cast<size_t>(P));
  for (int32_t p = 0; p < P; ++p) phy2log[p] = p < E ? p : static_cast<int32_t>(rng() % hot);
  return ShuffledSlots(rng, E, std::move(phy2log));
}

Table RandomTable(std::mt19937_64& rng, int32_t E, int32_t P) {
  return ShuffledTable(rng, E, P, E);
}

// The layers' tables one after another ([L][P], [L][E][R+1], [L][E]), as
// the window update and a graph of every layer's route+count read them.
struct StackedTables {
  std::vector<int32_t> phy2log, log2phy, logcnt;
};
StackedTables Stack(const std::vector<Table>& tables) {
  StackedTables s;
  for (const Table& t : tables) {
    s.phy2log.insert(s.phy2log.end(), t.phy2log.begin(), t.phy2log.end());
    s.log2phy.insert(s.log2phy.end(), t.log2phy.begin(), t.log2phy.end());
    s.logcnt.insert(s.logcnt.end(), t.logcnt.begin(), t.logcnt.end());
  }
  return s;
}

std::vector<int64_t> ZipfIds(std::mt19937_64& rng, size_t n, int32_t E, double s) {
  std::vector<double> cdf(static_cast<size_t>(E));
  double acc = 0;
  for (int32_t e = 0; e < E; ++e) cdf[e] = acc += 1.0 / std::pow(e + 1.0, s);
  std::uniform_real_distribution<double> u(0.0, acc);
  std::vector<int64_t> ids(n);
  for (auto& v : ids) v = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
  return ids;
}

// valid of CheckRoute: no device count (all T valid). Any other value,
// negative ones included, is passed as the device count (clamped to int32).
constexpr int64_t kAll = INT64_MIN;

// One route+count case, run twice on the device, both compared with the
// reference. recipe: run a
// kernel built from eplb_device.cuh alone (recipe_route.cuh) instead of
// eplbRouteCount: 1 the warp recipe, 2 EplbBlockRoute with 4 warps, 3 with
// 8 warps counting through shared memory, 4 with 32 warps (these three
// with the default kStageTables: the 32-warp blocks stage the tables); 5
// with 4 warps staging, 6 with 16 warps not staging and counting through
// shared memory; 7 with 12 warps and 8 with 24 warps (rows of 3 and 6
// quads, not swizzled), 24 staging and counting through shared memory; 9
// and 10 with the shared memory zeroed by EplbBlockRouteZero first
// (kZeroed): 8 warps counting through shared memory, 16 warps staging.
void CheckRoute(const std::vector<int64_t>& ids, int64_t T, int32_t K, const Table& t, bool ids64,
                int64_t valid, bool record, int recipe = 0) {
  // The outputs are compared over ids.size() items: the device writes T * K.
  ASSERT_EQ(ids.size(), static_cast<size_t>(T * K));
  ScopedStream stream;
  const int64_t vt = valid == kAll ? T : std::min<int64_t>(T, std::max<int64_t>(0, valid));
  std::vector<int32_t> ref_out(ids.size(), -7), ref_load(static_cast<size_t>(t.P), 0);
  uint64_t ref_invalid = 0;
  eplb::RouteCountRef(ids, T, vt, K, t.log2phy.data(), t.logcnt.data(), t.E, t.P, record,
                      ref_out.data(), ref_load.data(), &ref_invalid);

  DeviceBuffer<int32_t> d_ids32(ids.size()), d_out(ids.size()), d_load(t.P), d_l2p, d_cnt,
      d_valid(1), d_rec(1);
  DeviceBuffer<int64_t> d_ids64(ids.size());
  DeviceBuffer<unsigned long long> d_inv(1);
  if (ids64) {
    d_ids64.Upload(ids, stream);
  } else {
    std::vector<int32_t> i32(ids.begin(), ids.end());
    d_ids32.Upload(i32, stream);
  }
  d_l2p.Upload(t.log2phy, stream);
  d_cnt.Upload(t.logcnt, stream);
  d_valid.Upload({static_cast<int32_t>(std::clamp<int64_t>(valid, INT32_MIN, INT32_MAX))}, stream);
  d_rec.Upload({record ? 1 : 0}, stream);
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run);
    d_out.Fill(0x5a, stream);
    d_load.Fill(0, stream);
    d_inv.Fill(0, stream);
    const void* in = ids64 ? static_cast<const void*>(d_ids64.get()) : d_ids32.get();
    const int32_t* dv = valid == kAll ? nullptr : d_valid.get();
    // The block recipes: a launcher of LaunchBlockRecipeRoute's signature
    // and its `aggregate`.
    auto block = [&](auto launch, bool aggregate) {
      return launch(in, ids64, T, dv, K, d_l2p.get(), d_cnt.get(), t.E, t.P, d_rec.get(),
                    d_out.get(), d_load.get(), d_inv.get(), aggregate, stream);
    };
    using eplb_test::LaunchBlockRecipeRoute;
    switch (recipe) {
      case 0:
        EPLB_OK(eplbRouteCount(in, ids64 ? EPLB_ID_INT64 : EPLB_ID_INT32, T, dv, K, d_l2p.get(),
                               d_cnt.get(), t.E, t.P, d_rec.get(), d_out.get(), d_load.get(),
                               d_inv.get(), stream));
        break;
      case 1:
        ASSERT_EQ(eplb_test::LaunchRecipeRoute(in, ids64, T, dv, K, d_l2p.get(), d_cnt.get(), t.E,
                                               t.P, d_rec.get(), d_out.get(), d_load.get(),
                                               d_inv.get(), stream),
                  cudaSuccess);
        break;
      case 2:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<4>, false), cudaSuccess);
        break;
      case 3:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<8>, true), cudaSuccess);
        break;
      case 4:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<32>, false), cudaSuccess);
        break;
      case 5:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<4, true>, false), cudaSuccess);
        break;
      case 6:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<16, false>, true), cudaSuccess);
        break;
      case 7:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<12>, false), cudaSuccess);
        break;
      case 8:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<24>, true), cudaSuccess);
        break;
      case 9:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<8, false, true>, true), cudaSuccess);
        break;
      case 10:
        ASSERT_EQ(block(LaunchBlockRecipeRoute<16, true, true>, false), cudaSuccess);
        break;
      default:
        FAIL() << "no recipe " << recipe;
    }
    EXPECT_EQ(d_out.Download(stream, ids.size()), ref_out);
    EXPECT_EQ(d_load.Download(stream), ref_load);
    EXPECT_EQ(d_inv.Download(stream)[0], ref_invalid);
  }
}

TEST(RouteCount, RandomMatchesReference) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(11);
  struct C {
    int64_t T;
    int32_t K, E, P;
    double zipf;
  } cases[] = {{1, 8, 256, 288, 1.2},
               {64, 8, 256, 288, 0.0},
               {513, 8, 256, 288, 1.2},
               {4097, 6, 64, 80, 1.0},
               {8192, 8, 256, 320, 1.2},
               {100003, 8, 256, 288, 1.2},
               {3000, 2, 1024, 4096, 0.5},
               // Sub-blocks with E > 512: 128-item blocks (512 items; eight
               // experts zeroed per thread), 512-item blocks (8800 items,
               // three segments; two staged experts per thread), 256-item
               // blocks (8192 items; four experts zeroed per thread; and
               // 8000 items with E = 1024, which fit the 48 KB since these
               // blocks stopped staging the tables), and 128-item blocks
               // with E = 1024 (320 items).
               {64, 8, 520, 560, 1.0},
               {1100, 8, 520, 560, 1.2},
               {1024, 8, 520, 600, 1.2},
               {1000, 8, 1024, 1100, 1.0},
               {40, 8, 1024, 4096, 0.5},
               // E == P (one column per log2phy row) in 128-item blocks.
               {50, 8, 16, 16, 0.0},
               {16, 8, 300, 310, 0.0},
               {777, 1, 8, 8, 0.0},
               // Hash path (T*K >= EPLB_ROUTE_HASH_MIN_ITEMS), at and above the threshold.
               {(1 << 22) / 8, 8, 256, 288, 1.2},
               {(1 << 22) / 6 + 7, 6, 64, 80, 0.0},
               // Hash path with the largest tables (E = 1024, P = 4096).
               {(1 << 22) / 2, 2, 1024, 4096, 0.5}};
  for (const C& c : cases) {
    SCOPED_TRACE(c.T);
    const Table t = RandomTable(rng, c.E, c.P);
    auto ids = ZipfIds(rng, static_cast<size_t>(c.T * c.K), c.E, c.zipf);
    for (int k = 0; k < 20 && !ids.empty(); ++k) ids[rng() % ids.size()] = -1;  // padding
    for (int k = 0; k < 5 && !ids.empty(); ++k) ids[rng() % ids.size()] = c.E + int64_t(rng() % 9);
    CheckRoute(ids, c.T, c.K, t, false, kAll, true);
    CheckRoute(ids, c.T, c.K, t, true, kAll, true);
    CheckRoute(ids, c.T, c.K, t, true, c.T / 2, true);
    CheckRoute(ids, c.T, c.K, t, false, c.T + 5, false);
  }
}

// A load-aware placement: the redundant slots go to the four hottest
// experts (0-3 under ZipfIds), so each holds ~(P - E) / 4 replicas and
// receives most items: runs longer and shorter than an expert's replica
// count, replicas past the staged table columns.
TEST(RouteCount, HotExpertsWithManyReplicas) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(13);
  const Table t = ShuffledTable(rng, 256, 352, 4);
  ASSERT_GE(*std::max_element(t.logcnt.begin(), t.logcnt.end()), 16);
  for (int64_t T : {1, 3, 64, 513, 1024, 8192, (1 << 22) / 8}) {
    SCOPED_TRACE(T);
    const auto ids = ZipfIds(rng, static_cast<size_t>(T * 8), t.E, 1.2);
    CheckRoute(ids, T, 8, t, false, kAll, true);
    CheckRoute(ids, T, 8, t, true, T - T / 3, true);
  }
}

// eplb_device.cuh promises that kernels built from it alone make
// eplbRouteCount's choices: its warp recipe (one warp per segment) and
// EplbBlockRoute in blocks of 4, 8, 12, 16, 24 and 32 warps, staging the tables
// and not (each block counting the segment's earlier items; direct and
// shared-memory counting; zeroed by the function or by EplbBlockRouteZero
// before it), against the
// same reference, on the rank path (one and many segments, a hot placement,
// invalid ids, device counts) and, for the recipe, the hash path.
TEST(DeviceFunctions, RecipeKernelMatchesReference) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(15);
  const Table random = RandomTable(rng, 256, 288), hot = ShuffledTable(rng, 256, 352, 4);
  for (const Table* t : {&random, &hot}) {
    for (int64_t T : {1, 37, 64, 512, 1000, 8192, 70001}) {
      SCOPED_TRACE(T);
      auto ids = ZipfIds(rng, static_cast<size_t>(T * 8), t->E, 1.2);
      for (int k = 0; k < 9; ++k) ids[rng() % ids.size()] = k % 2 ? -1 : t->E + k;
      for (int recipe = 1; recipe <= 10; ++recipe) {
        SCOPED_TRACE(recipe);
        CheckRoute(ids, T, 8, *t, false, kAll, true, recipe);
        CheckRoute(ids, T, 8, *t, true, T - T / 3, true, recipe);
        CheckRoute(ids, T, 8, *t, false, T, false, recipe);
      }
    }
  }
  const auto ids = ZipfIds(rng, size_t{1} << 22, 256, 1.2);
  CheckRoute(ids, (1 << 22) / 8, 8, hot, false, kAll, true, 1);  // hash path
}

// EplbDivMod (the division on EplbBlockRoute's path) against the integer
// operators: every x below 2^21 (across its float / integer switch at 2^20)
// for divisors 1-300 and 60000-60299, and the top 2^16 values of x.
__global__ void DivModCheckKernel(uint32_t x_end, uint32_t c_begin, uint32_t c_end, uint32_t x_base,
                                  unsigned long long* bad) {
  unsigned long long wrong = 0;
  for (uint32_t c = c_begin; c < c_end; ++c) {
    const float rc = EplbRcp(c);
    for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < x_end;
         k += gridDim.x * blockDim.x) {
      const uint32_t x = x_base + k;
      uint32_t rem = 0;
      const uint32_t q = EplbDivMod(x, c, rc, &rem);
      wrong += (q != x / c || rem != x % c) ? 1 : 0;
    }
  }
  if (wrong != 0) atomicAdd(bad, wrong);
}

TEST(DeviceFunctions, DivModExact) {
  EPLB_REQUIRE_GPUS(1);
  ScopedStream stream;
  DeviceBuffer<unsigned long long> d_bad(1);
  d_bad.Fill(0, stream);
  DivModCheckKernel<<<264, 512, 0, stream>>>(1u << 21, 1, 301, 0, d_bad.get());
  DivModCheckKernel<<<264, 512, 0, stream>>>(1u << 21, 60000, 60300, 0, d_bad.get());
  DivModCheckKernel<<<264, 512, 0, stream>>>(1u << 16, 1, 301, 0xffff0000u, d_bad.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(d_bad.Download(stream)[0], 0u);
}

TEST(RouteCount, Adversarial) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(12);
  const Table t = RandomTable(rng, 256, 288);
  // Everything to one expert (the hottest, with the most replicas).
  int32_t hot = 0;
  for (int32_t e = 0; e < t.E; ++e)
    if (t.logcnt[e] > t.logcnt[hot]) hot = e;
  CheckRoute(std::vector<int64_t>(70001 * 8, hot), 70001, 8, t, false, kAll, true);
  CheckRoute(std::vector<int64_t>(33 * 8, hot), 33, 8, t, true, kAll, true);
  CheckRoute(std::vector<int64_t>(size_t{1} << 22, hot), (1 << 22) / 8, 8, t, false, kAll, true);
  // Only invalid ids, including int64 values that truncate to valid int32.
  std::vector<int64_t> bad;
  for (int i = 0; i < 4100; ++i)
    bad.push_back(i % 3 == 0 ? -1 : (i % 3 == 1 ? 256 + i : (int64_t{1} << 32) + 5));
  CheckRoute(bad, 4100, 1, t, true, kAll, true);
  // Zero tokens, one token, and negative / zero device counts.
  CheckRoute({}, 0, 8, t, false, kAll, true);
  CheckRoute(std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}, 1, 8, t, false, kAll, true);
  CheckRoute(std::vector<int64_t>(8 * 9, 3), 9, 8, t, false, -3, true);
  CheckRoute(std::vector<int64_t>(8 * 9, 3), 9, 8, t, false, 0, true);
  CheckRoute(std::vector<int64_t>(8 * 600, 3), 600, 8, t, true, -1, true);
  CheckRoute(std::vector<int64_t>(8 * 600, 3), 600, 8, t, false, INT32_MIN, true);
}

// Broken tables (counts of 0 or above R+1, slots -1 or >= P inside an
// expert's count, counts summing to more than P) on the rank path, the
// sub-block path and the hash path: never an address, always the
// reference's answer.
TEST(RouteCount, BrokenTablesMatchReference) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(14);
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant);
    Table t = RandomTable(rng, 64, 80);
    const int32_t R1 = t.P - t.E + 1;
    t.logcnt[3] = 0;
    t.logcnt[5] = R1 + 2;
    t.log2phy[static_cast<size_t>(7) * R1] = -1;
    t.log2phy[static_cast<size_t>(9) * R1] = t.P + 3;
    if (variant == 1)  // counts summing to more than P: no compact staging
      for (int32_t e = 10; e < 40; ++e) t.logcnt[e] = R1;
    auto ids = ZipfIds(rng, size_t{1} << 22, t.E, 0.3);
    CheckRoute(ids, (1 << 22) / 8, 8, t, false, kAll, true);  // hash path
    ids.resize(4096 * 8);
    CheckRoute(ids, 4096, 8, t, true, kAll, true);  // sub-blocks of 16 warps (staged tables)
    // 4- and 8-warp sub-blocks (each item's own table entries).
    const auto prefix = [&](int64_t T) {
      return std::vector<int64_t>(ids.begin(), ids.begin() + T * 8);
    };
    CheckRoute(prefix(64), 64, 8, t, false, kAll, true);
    CheckRoute(prefix(1024), 1024, 8, t, true, 1000, true);
    ids.resize(70000 * 8);
    for (size_t i = 4096 * 8; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(rng() % 64);
    CheckRoute(ids, 70000, 8, t, false, 65000, true);  // many segments
  }
  // Usable counts that fill all P slots before an expert of unusable count:
  // the hash path's staged table is compact and that expert's offset would
  // be P, one past it (compute-sanitizer's memcheck reads the gpu suite).
  Table t;
  t.E = 3;
  t.P = 4;
  t.logcnt = {2, 2, 0};
  t.log2phy = {0, 1, 2, 3, -1, -1};
  std::vector<int64_t> ids(size_t{1} << 22);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int64_t>(i % 3);
  CheckRoute(ids, (1 << 22) / 8, 8, t, false, kAll, true);
  ids.resize(4096 * 8);
  CheckRoute(ids, 4096, 8, t, true, kAll, true);
}

// A load-aware table for one layer: each of the P - E redundant slots goes
// to the expert with the most of `ids` per replica (ties: the lower id), as
// a planner that saw this batch would place them; slots shuffled.
Table LoadAwareTable(std::mt19937_64& rng, const int32_t* ids, size_t n, int32_t E, int32_t P) {
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  for (size_t i = 0; i < n; ++i) ++load[static_cast<size_t>(ids[i])];
  std::vector<int32_t> cnt(static_cast<size_t>(E), 1), phy2log;
  for (int32_t e = 0; e < E; ++e) phy2log.push_back(e);
  for (int32_t r = E; r < P; ++r) {
    int32_t best = 0;
    for (int32_t e = 1; e < E; ++e)
      if (load[e] * cnt[best] > load[best] * cnt[e]) best = e;
    ++cnt[best];
    phy2log.push_back(best);
  }
  return ShuffledSlots(rng, E, std::move(phy2log));
}

// The real routing: every layer of every prompt through route+count (both id
// types; a random and a load-aware table; all tokens, or a device count of
// half of them with the record flag off on some layers), each layer twice;
// then, per prompt, the pipeline on the device: route+count of all 26
// layers, count-only over the device's own physical ids (it must count what
// route+count counted), one window update of all layers; twice, each equal
// to its reference, and the device's counts within the contract's spread
// bound.
TEST(RouteCount, RealTrace) {
  EPLB_REQUIRE_GPUS(1);
  EPLB_REQUIRE_DATA_PATH(dir, "traces/deepseek-v2-lite/topk");
  std::mt19937_64 rng(13);
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  std::vector<std::string> files;
  while (dirent* ent = readdir(d)) {
    const std::string n = ent->d_name;
    if (n.size() > 4 && n.substr(n.size() - 4) == ".txt") files.push_back(n);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), 20u);
  ScopedStream stream;
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    const eplb::TopkTrace tr = eplb::ReadTopkTrace(dir + "/" + f);
    const int32_t L = tr.num_layers, E = tr.num_experts, P = E + 16, K = tr.top_k, W = 2;
    const int64_t T = tr.num_tokens;
    const size_t TK = static_cast<size_t>(T * K);
    const Table random = RandomTable(rng, E, P);
    std::vector<Table> aware;
    for (int32_t l = 0; l < L; ++l) {
      SCOPED_TRACE(l);
      const int32_t* p = tr.layer(l);
      aware.push_back(LoadAwareTable(rng, p, TK, E, P));
      const std::vector<int64_t> ids(p, p + TK);
      CheckRoute(ids, T, K, (l % 2) ? aware[l] : random, (l % 4) < 2, (l % 3) ? kAll : T / 2,
                 (l % 5) != 4);
    }
    // The pipeline with the load-aware tables.
    const int32_t R1 = P - E + 1;
    const auto& [phy2log, log2phy, logcnt] = Stack(aware);
    const std::vector<int32_t> h_ids(tr.ids.begin(), tr.ids.end());
    ASSERT_EQ(h_ids.size(), TK * L);
    std::vector<int32_t> out_ref(TK * L), pass_ref(static_cast<size_t>(L) * P, 0);
    uint64_t inv_ref = 0;
    for (int32_t l = 0; l < L; ++l) {
      const std::vector<int64_t> ids(h_ids.begin() + TK * l, h_ids.begin() + TK * (l + 1));
      eplb::RouteCountRef(ids, T, T, K, aware[l].log2phy.data(), aware[l].logcnt.data(), E, P, true,
                          out_ref.data() + TK * l, pass_ref.data() + static_cast<size_t>(l) * P,
                          &inv_ref);
    }
    EXPECT_EQ(inv_ref, 0u);
    std::vector<int32_t> win_ref(static_cast<size_t>(W) * L * E, 0), state_ref{0, 0};
    std::vector<int64_t> sum_ref(static_cast<size_t>(L) * E, 0);
    std::vector<int32_t> counted_ref = pass_ref;
    eplb::WindowUpdateRef(phy2log.data(), pass_ref.data(), L, E, P, W, win_ref.data(),
                          sum_ref.data(), state_ref.data());
    DeviceBuffer<int32_t> d_ids(h_ids.size()), d_out(h_ids.size()), d_p2l(phy2log.size()),
        d_l2p(log2phy.size()), d_cnt(logcnt.size()), d_pass(pass_ref.size()),
        d_pass2(pass_ref.size()), d_win(win_ref.size()), d_state(2);
    DeviceBuffer<int64_t> d_sum(sum_ref.size());
    DeviceBuffer<unsigned long long> d_inv(1);
    d_ids.Upload(h_ids, stream);
    d_p2l.Upload(phy2log, stream);
    d_l2p.Upload(log2phy, stream);
    d_cnt.Upload(logcnt, stream);
    for (int run = 0; run < 2; ++run) {
      SCOPED_TRACE(run);
      for (auto* b : {&d_pass, &d_pass2, &d_win, &d_state}) b->Fill(0, stream);
      d_out.Fill(0x5a, stream);
      d_sum.Fill(0, stream);
      d_inv.Fill(0, stream);
      for (int32_t l = 0; l < L; ++l) {
        EPLB_OK(eplbRouteCount(d_ids.get() + TK * l, EPLB_ID_INT32, T, nullptr, K,
                               d_l2p.get() + static_cast<size_t>(l) * E * R1,
                               d_cnt.get() + static_cast<size_t>(l) * E, E, P, nullptr,
                               d_out.get() + TK * l, d_pass.get() + static_cast<size_t>(l) * P,
                               d_inv.get(), stream));
        EPLB_OK(eplbCount(d_out.get() + TK * l, EPLB_ID_INT32, T, nullptr, K, P, nullptr,
                          d_pass2.get() + static_cast<size_t>(l) * P, d_inv.get(), stream));
      }
      EXPECT_EQ(d_out.Download(stream), out_ref);
      EXPECT_EQ(d_pass2.Download(stream), counted_ref);
      const std::vector<int32_t> counted = d_pass.Download(stream);
      EXPECT_EQ(counted, counted_ref);
      // The spread bound of the contract on the device's own counts: an
      // expert's replicas differ by at most the number of segments.
      int32_t segs = 0;
      int64_t seg_len = 0;
      eplb::RouteSegmentsRef(static_cast<int64_t>(TK), &segs, &seg_len);
      for (int32_t l = 0; l < L && !counted.empty(); ++l) {
        for (int32_t e = 0; e < E; ++e) {
          int32_t lo = INT32_MAX, hi = 0;
          for (int32_t j = 0; j < aware[l].logcnt[e]; ++j) {
            const int32_t c = counted[static_cast<size_t>(l) * P +
                                      aware[l].log2phy[static_cast<size_t>(e) * R1 + j]];
            lo = std::min(lo, c);
            hi = std::max(hi, c);
          }
          EXPECT_LE(hi - lo, segs) << "layer " << l << " expert " << e;
        }
      }
      EXPECT_EQ(d_inv.Download(stream)[0], 0u);
      EPLB_OK(eplbWindowUpdate(d_p2l.get(), d_pass.get(), L, E, P, W, d_win.get(), d_sum.get(),
                               d_state.get(), stream));
      EXPECT_EQ(d_pass.Download(stream), pass_ref);  // zeroed
      EXPECT_EQ(d_win.Download(stream), win_ref);
      EXPECT_EQ(d_sum.Download(stream), sum_ref);
      EXPECT_EQ(d_state.Download(stream), state_ref);
    }
  }
}

TEST(Count, MatchesReference) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(14);
  ScopedStream stream;
  for (int64_t T : {int64_t{0}, int64_t{1}, int64_t{4097}, int64_t{200001}}) {
    for (int v = 0; v < 2; ++v) {
      const int32_t K = 8, P = 288;
      std::vector<int64_t> ids = ZipfIds(rng, static_cast<size_t>(T * K), P, 1.2);
      for (size_t k = 0; k < ids.size(); k += 97) ids[k] = (k % 2) ? -1 : P + int64_t(k);
      // Above 2^32: a valid slot in the low word must not count.
      for (size_t k = 50; k < ids.size(); k += 89) ids[k] = (int64_t{1} << 32) + int64_t(k % P);
      const int64_t valid = v ? T / 3 : T;
      std::vector<int32_t> ref(P, 0);
      uint64_t ref_inv = 0;
      eplb::CountRef(ids, valid, K, P, true, ref.data(), &ref_inv);
      DeviceBuffer<int64_t> d_ids(ids.size());
      DeviceBuffer<int32_t> d_load(P), d_valid(1);
      DeviceBuffer<unsigned long long> d_inv(1);
      d_ids.Upload(ids, stream);
      d_valid.Upload({static_cast<int32_t>(valid)}, stream);
      for (int run = 0; run < 2; ++run) {
        d_load.Fill(0, stream);
        d_inv.Fill(0, stream);
        EPLB_OK(eplbCount(d_ids.get(), EPLB_ID_INT64, T, v ? d_valid.get() : nullptr, K, P, nullptr,
                          d_load.get(), d_inv.get(), stream));
        EXPECT_EQ(d_load.Download(stream), ref);
        EXPECT_EQ(d_inv.Download(stream)[0], ref_inv);
      }
    }
  }
}

// Both id types; four layouts: 16-byte aligned or one element off, each in
// a buffer padded with valid ids (a read before the start or a misplaced
// read would be counted) and in an allocation that ends at the last id (a
// read past the end is an out-of-bounds access for compute-sanitizer
// memcheck); T*K not a multiple of 4, both sides of each shape boundary
// (16384 and 65536 items), more than one step of the striding loop, one hot
// id, P = 1 and the largest P (counters past P must stay as they were); the
// valid count on the device (all, a third, above T, negative) or from the
// host, and the record flag off.
TEST(Count, ShapesTypesAlignment) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(41);
  ScopedStream stream;
  const int32_t kMaxP = EPLB_MAX_PHYSICAL_EXPERTS;
  int dev = 0, sms = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), cudaSuccess);
  // One step of the striding loop covers sms x 2 blocks x 512 threads x 8
  // groups x 4 ids (int32; int64 half): this size takes 2 steps (int64: 3).
  const int64_t big_t = int64_t{sms} * 2 * 512 * 8 * 4 / 8 * 5 / 4 + 3;
  struct Shape {
    int64_t T;
    int32_t K, P;
  };
  const Shape shapes[] = {{1, 1, 300},      {1, 3, 300},      {7, 5, 300},       {64, 8, 300},
                          {513, 8, 300},    {2048, 8, 300},   {16385, 1, 300},   {8192, 8, 300},
                          {65535, 1, 300},  {65536, 1, 300},  {65537, 1, 300},   {21846, 3, 300},
                          {123457, 8, 300}, {1000, 8, kMaxP}, {20000, 8, kMaxP}, {3000, 8, 1},
                          {big_t, 8, 300}};
  DeviceBuffer<int32_t> d_load(kMaxP), d_valid(1), d_rec(1);
  DeviceBuffer<unsigned long long> d_inv(1);
  for (const Shape& sh : shapes) {
    const int32_t P = sh.P;
    const size_t n = static_cast<size_t>(sh.T * sh.K);
    std::vector<int64_t> ids = ZipfIds(rng, n, P, 1.2);
    for (size_t k = 0; k < n; k += 61) ids[k] = (k % 2) ? -1 : P + int64_t(k % 7);
    if (sh.T == 8192) std::fill(ids.begin(), ids.end(), 17);  // one hot slot
    if (P == 1) std::fill(ids.begin(), ids.begin() + n / 2, 0);
    for (int is64 = 0; is64 < 2; ++is64) {
      for (int layout = 0; layout < 4; ++layout) {
        const bool padded = layout < 2;
        const size_t offset = layout % 2;  // elements: 4 or 8 bytes, never 16
        const size_t front = (padded ? 4 : 0) + offset;
        std::vector<int64_t> h(front + n + (padded ? 4 : 0), 5);
        std::copy(ids.begin(), ids.end(), h.begin() + static_cast<std::ptrdiff_t>(front));
        DeviceBuffer<int64_t> d64(is64 ? h.size() : 0);
        DeviceBuffer<int32_t> d32(is64 ? 0 : h.size());
        const void* d_ids = nullptr;
        if (is64) {
          d64.Upload(h, stream);
          d_ids = d64.get() + front;
        } else {
          d32.Upload(std::vector<int32_t>(h.begin(), h.end()), stream);
          d_ids = d32.get() + front;
        }
        ASSERT_EQ(reinterpret_cast<uintptr_t>(d_ids) % 16 == 0, offset == 0);
        // 0 all valid, 1 a third, 2 not recording, 3 no device count, 4 a
        // device count above T (clamped to T), 5 a negative one (to 0).
        for (int mode = 0; mode < 6; ++mode) {
          SCOPED_TRACE("T=" + std::to_string(sh.T) + " K=" + std::to_string(sh.K) +
                       " P=" + std::to_string(P) + " int64=" + std::to_string(is64) +
                       " layout=" + std::to_string(layout) + " mode=" + std::to_string(mode));
          const int64_t dev_valid = mode == 1   ? sh.T / 3
                                    : mode == 4 ? sh.T + 5
                                    : mode == 5 ? -3
                                                : sh.T;
          const int64_t valid = std::max<int64_t>(0, std::min(dev_valid, sh.T));
          const bool record = mode != 2;
          std::vector<int32_t> ref(kMaxP, 3);
          uint64_t ref_inv = 0;
          eplb::CountRef(ids, valid, sh.K, P, record, ref.data(), &ref_inv);
          d_valid.Upload({static_cast<int32_t>(dev_valid)}, stream);
          d_rec.Upload({record ? 1 : 0}, stream);
          for (int run = 0; run < 2; ++run) {
            SCOPED_TRACE(run);
            d_load.Upload(std::vector<int32_t>(kMaxP, 3), stream);
            d_inv.Fill(0, stream);
            EPLB_OK(eplbCount(d_ids, is64 ? EPLB_ID_INT64 : EPLB_ID_INT32, sh.T,
                              mode == 3 ? nullptr : d_valid.get(), sh.K, P, d_rec.get(),
                              d_load.get(), d_inv.get(), stream));
            EXPECT_EQ(d_load.Download(stream), ref);
            EXPECT_EQ(d_inv.Download(stream)[0], ref_inv);
          }
        }
      }
    }
  }
}

// The window update, read-out and reduce against their references: two
// device rings (runs 0 and 1) fed the same passes, each equal to the
// reference after every step; broken phy2log entries (-1, >= E) dropped.
void CheckWindow(int32_t L, int32_t E, int32_t P, int32_t W, int steps, uint64_t seed) {
  std::mt19937_64 rng(seed);
  ScopedStream stream;
  std::vector<int32_t> phy2log(static_cast<size_t>(L) * P);
  for (int32_t l = 0; l < L; ++l) {
    const Table t = RandomTable(rng, E, P);
    std::copy(t.phy2log.begin(), t.phy2log.end(), phy2log.begin() + static_cast<size_t>(l) * P);
  }
  phy2log[3 % phy2log.size()] = -1;  // a broken entry is dropped, never an address
  phy2log[phy2log.size() - 1] = E + 3;
  const size_t LE = static_cast<size_t>(L) * E;
  DeviceBuffer<int32_t> d_p2l(phy2log.size()), d_pass(phy2log.size());
  d_p2l.Upload(phy2log, stream);
  struct Ring {
    DeviceBuffer<int32_t> win, state;
    DeviceBuffer<int64_t> sum, out, red;
  } ring[2];
  for (Ring& r : ring) {
    r.win.Resize(static_cast<size_t>(W) * LE);
    r.state.Resize(2);
    r.sum.Resize(LE);
    r.out.Resize(LE);
    r.red.Resize(LE);
    r.win.Fill(0, stream);
    r.sum.Fill(0, stream);
    r.state.Fill(0, stream);
  }
  std::vector<int32_t> win(static_cast<size_t>(W) * LE, 0), state{0, 0};
  std::vector<int64_t> sum(LE, 0), red(LE);
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(step);
    std::vector<int32_t> pass(phy2log.size());
    for (auto& v : pass) v = static_cast<int32_t>(rng() % 1000);
    if (step == 2) std::fill(pass.begin(), pass.end(), 0);  // a pass with no tokens
    const std::vector<int32_t> input = pass;                // the reference zeroes `pass`
    eplb::WindowUpdateRef(phy2log.data(), pass.data(), L, E, P, W, win.data(), sum.data(),
                          state.data());
    eplb::WindowReduceRef(win.data(), W, static_cast<int64_t>(LE), red.data());
    EXPECT_EQ(red, sum);
    for (int run = 0; run < 2; ++run) {
      SCOPED_TRACE(run);
      Ring& r = ring[run];
      d_pass.Upload(input, stream);
      EPLB_OK(eplbWindowUpdate(d_p2l.get(), d_pass.get(), L, E, P, W, r.win.get(), r.sum.get(),
                               r.state.get(), stream));
      EXPECT_EQ(d_pass.Download(stream), pass);
      EXPECT_EQ(r.win.Download(stream), win);
      EXPECT_EQ(r.sum.Download(stream), sum);
      EXPECT_EQ(r.state.Download(stream), state);
      EPLB_OK(eplbWindowReadout(r.sum.get(), L, E, r.out.get(), stream));
      EPLB_OK(eplbWindowReduce(r.win.get(), W, L, E, r.red.get(), stream));
      EXPECT_EQ(r.out.Download(stream), sum);
      EXPECT_EQ(r.red.Download(stream), sum);
    }
  }
}

// Shapes: a small one; W = 1 (the newest row evicts itself each step); the
// DeepSeek-V3 one; the largest E and P with a ring that wraps several times.
TEST(Window, UpdateReadoutReduceMatchReference) {
  EPLB_REQUIRE_GPUS(1);
  CheckWindow(5, 64, 80, 4, 11, 15);
  CheckWindow(3, 64, 80, 1, 5, 16);
  CheckWindow(58, 256, 288, 7, 9, 17);
  CheckWindow(2, EPLB_MAX_LOGICAL_EXPERTS, EPLB_MAX_PHYSICAL_EXPERTS, 3, 8, 18);
}

// Route+count of every layer and the window update captured once, replayed
// with a changing device token count (0 and T among them) and the record
// flag toggled; each input replayed twice (the two replays must give the
// same outputs, each equal to the reference).
void ReplayGraph(int64_t T, int32_t K, int32_t E, int32_t P, int32_t L, bool ids64, int reps,
                 uint64_t seed) {
  std::mt19937_64 rng(seed);
  ScopedStream stream;
  const int32_t W = 3;
  std::vector<Table> tables;
  for (int32_t l = 0; l < L; ++l) tables.push_back(RandomTable(rng, E, P));
  const auto& [phy2log, log2phy, logcnt] = Stack(tables);
  const size_t TK = static_cast<size_t>(T * K);
  DeviceBuffer<int32_t> d_ids32(ids64 ? 0 : TK * L), d_out(TK * L), d_p2l(phy2log.size()),
      d_l2p(log2phy.size()), d_cnt(logcnt.size()), d_pass(static_cast<size_t>(L) * P),
      d_win(static_cast<size_t>(W) * L * E), d_state(2), d_valid(1), d_rec(1);
  DeviceBuffer<int64_t> d_ids64(ids64 ? TK * L : 0), d_sum(static_cast<size_t>(L) * E);
  DeviceBuffer<unsigned long long> d_inv(1);
  // The per-slot counts as route+count left them, copied in the graph before
  // the window update folds and zeroes them.
  DeviceBuffer<int32_t> d_counted(d_pass.size());
  d_p2l.Upload(phy2log, stream);
  d_l2p.Upload(log2phy, stream);
  d_cnt.Upload(logcnt, stream);
  for (auto* b : {&d_pass, &d_win, &d_state}) b->Fill(0, stream);
  d_sum.Fill(0, stream);
  d_inv.Fill(0, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const int32_t R1 = P - E + 1;
  for (int32_t l = 0; l < L; ++l) {
    const void* in = ids64 ? static_cast<const void*>(d_ids64.get() + TK * l)
                           : static_cast<const void*>(d_ids32.get() + TK * l);
    EPLB_OK(eplbRouteCount(in, ids64 ? EPLB_ID_INT64 : EPLB_ID_INT32, T, d_valid.get(), K,
                           d_l2p.get() + static_cast<size_t>(l) * E * R1,
                           d_cnt.get() + static_cast<size_t>(l) * E, E, P, d_rec.get(),
                           d_out.get() + TK * l, d_pass.get() + static_cast<size_t>(l) * P,
                           d_inv.get(), stream));
  }
  ASSERT_EQ(cudaMemcpyAsync(d_counted.get(), d_pass.get(), d_pass.size() * sizeof(int32_t),
                            cudaMemcpyDeviceToDevice, stream),
            cudaSuccess);
  EPLB_OK(eplbWindowUpdate(d_p2l.get(), d_pass.get(), L, E, P, W, d_win.get(), d_sum.get(),
                           d_state.get(), stream));
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  std::vector<int32_t> win(d_win.size(), 0), state{0, 0}, pass(d_pass.size(), 0);
  std::vector<int64_t> sum(d_sum.size(), 0);
  uint64_t invalid = 0;
  for (int rep = 0; rep < reps; ++rep) {
    SCOPED_TRACE(rep);
    const int32_t valid = rep == 0   ? static_cast<int32_t>(T)
                          : rep == 1 ? 0
                                     : static_cast<int32_t>(rng() % (T + 1));
    const int32_t record = rep % 3 != 2;
    std::vector<int64_t> ids = ZipfIds(rng, TK * L, E, 1.2);
    for (size_t k = 0; k < ids.size(); k += 1001) ids[k] = -1;
    for (size_t k = 500; k < ids.size(); k += 2003) ids[k] = E + static_cast<int64_t>(k % 5);
    if (ids64) {
      // Ids with high bits set: garbage in the upper word must not alias a valid id.
      const size_t step = std::max<size_t>(61, ids.size() / 64);
      for (size_t k = 7; k < ids.size(); k += step) ids[k] = (int64_t{1} << 32) + (k % E);
      d_ids64.Upload(ids, stream);
    } else {
      d_ids32.Upload(std::vector<int32_t>(ids.begin(), ids.end()), stream);
    }
    d_valid.Upload({valid}, stream);
    d_rec.Upload({record}, stream);
    std::vector<int32_t> out_ref(TK * L);
    for (int launch = 0; launch < 2; ++launch) {
      SCOPED_TRACE(launch);
      d_out.Fill(0x5a, stream);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      for (int32_t l = 0; l < L; ++l) {
        std::vector<int64_t> layer_ids(ids.begin() + TK * l, ids.begin() + TK * (l + 1));
        eplb::RouteCountRef(layer_ids, T, valid, K, tables[l].log2phy.data(),
                            tables[l].logcnt.data(), E, P, record != 0, out_ref.data() + TK * l,
                            pass.data() + static_cast<size_t>(l) * P, &invalid);
      }
      const std::vector<int32_t> counted = pass;
      eplb::WindowUpdateRef(phy2log.data(), pass.data(), L, E, P, W, win.data(), sum.data(),
                            state.data());
      EXPECT_EQ(d_out.Download(stream), out_ref);
      EXPECT_EQ(d_counted.Download(stream), counted);
      EXPECT_EQ(d_sum.Download(stream), sum);
      EXPECT_EQ(d_win.Download(stream), win);
      EXPECT_EQ(d_state.Download(stream), state);
      EXPECT_EQ(d_pass.Download(stream), pass);
      EXPECT_EQ(d_inv.Download(stream)[0], invalid);
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// Every launch shape of route+count: 4-warp blocks (64 tokens x top-8, one
// segment), 8-warp blocks (1024 tokens, two segments), 16-warp blocks (5000
// x 6 items, 8 segments; 8192 x 8, 16), the segment kernel (150000 x 6
// items, 220 segments), the hash path (4 Mi items); each with int32 and
// int64 ids.
TEST(Graph, ReplayWithChangingCountsAndRecordFlag) {
  EPLB_REQUIRE_GPUS(1);
  for (bool ids64 : {false, true}) {
    SCOPED_TRACE(ids64);
    ReplayGraph(5000, 6, 64, 80, 3, ids64, 8, 16);
    ReplayGraph(64, 8, 256, 288, 4, ids64, 6, 161);
    ReplayGraph(1024, 8, 256, 288, 3, ids64, 6, 162);
    ReplayGraph(8192, 8, 256, 288, 2, ids64, 6, 163);
    ReplayGraph(150000, 6, 64, 80, 1, ids64, 4, 164);
    ReplayGraph((1 << 22) / 8, 8, 256, 288, 1, ids64, 4, 165);
  }
}

// Captures what `enqueue` puts on `stream` into a graph, runs it once and
// waits for it.
void RunCaptured(cudaStream_t stream, const std::function<void()>& enqueue) {
  cudaGraph_t g;
  cudaGraphExec_t x;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  enqueue();
  ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(x, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  cudaGraphExecDestroy(x);
  cudaGraphDestroy(g);
}

// A slow writer: waits for its own predecessors, spins for spin_ns, then
// copies n words from src to dst. Launched early (programmatic dependent
// launch) and letting its dependents launch at once, it is the worst case
// for a kernel after it that is launched early too: that kernel may be
// resident for the whole spin, and only its own wait keeps it from reading
// dst before the copy.
__global__ void SlowCopyKernel(int32_t* dst, const int32_t* src, size_t n,
                               unsigned long long spin_ns) {
  eplb::GridDependentsLaunch();
  eplb::GridDependencyWait();
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < spin_ns);
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x)
    dst[i] = src[i];
}

void SlowCopy(int32_t* dst, const int32_t* src, size_t n, cudaStream_t stream) {
  ASSERT_EQ(eplb::EnqueueKernelPdl(true, SlowCopyKernel, dim3(8), dim3(256), 0, stream, dst, src, n,
                                   200000ull),
            cudaSuccess);
}

// Stream order: route+count, count and the window update must see
// everything the kernel right before them wrote. A slow kernel writes the
// ids, the device token count, the maps and the counters right before they
// read them (the old contents would give other answers), and the record
// flag (0 before, so counts read early would be missing), and the routed
// ids again right before count-only reads them; and count-only reads the
// routed ids right behind route+count; on every route+count and count
// path, on a stream and inside a graph. The slow kernel lets the
// next one launch at once, so with EPLB_PDL=1 (ctest gpu_kernels_pdl) the
// decode-size route+count kernels and the count kernel start while it
// spins and must wait for it (kernels/enqueue.cuh). A first version of that
// early launch failed this test on the hash path on an H200 (a stale logcnt
// read on the read-only path, which the compiler had moved above the
// wait): a kernel launched early must not use ld.global.nc (const
// __restrict__, __ldg) on anything an earlier kernel may write (ctest
// gpu_pdl_sass checks the SASS).
TEST(EarlyLaunch, KernelsSeeTheWritesOfTheKernelBefore) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(21);
  ScopedStream stream;
  const int32_t E = 64, P = 80, K = 8, L = 1, W = 2;
  // One 128-item sub-block (no earlier ids); one segment over 4 and over
  // 16 sub-blocks (each reads the ids before it); two segments of 16; 128
  // sub-blocks; many segments; the hash path. Count-only: 256-thread blocks
  // up to 16384 items, 512-thread ones up to 65536, then the striding shape.
  for (int64_t T : {int64_t{16}, int64_t{64}, int64_t{512}, int64_t{1024}, int64_t{8192},
                    int64_t{70000}, int64_t{(1 << 22) / 8}}) {
    for (int graph = 0; graph < 2; ++graph) {
      SCOPED_TRACE(T * 10 + graph);
      const size_t TK = static_cast<size_t>(T * K);
      const Table t_old = RandomTable(rng, E, P), t_new = RandomTable(rng, E, P);
      std::vector<int64_t> ids = ZipfIds(rng, TK, E, 1.2);
      const int32_t valid = static_cast<int32_t>(T - T / 5);
      std::vector<int32_t> ids32(ids.begin(), ids.end()), pass_new(P);
      for (auto& v : pass_new) v = static_cast<int32_t>(rng() % 100);
      // Device: the stale contents, and the new ones the slow kernel copies in.
      DeviceBuffer<int32_t> d_ids(TK), d_ids_new(TK), d_valid(1), d_valid_new(1),
          d_l2p(t_old.log2phy.size()), d_l2p_new(t_new.log2phy.size()), d_cnt(E), d_cnt_new(E),
          d_out(TK), d_routed(TK), d_pass(P), d_cpass(P), d_cpass_new(P), d_p2l(P),
          d_win(W * L * E), d_state(2), d_rec(1), d_rec_new(1), d_pass2(P);
      DeviceBuffer<int64_t> d_sum(L * E);
      DeviceBuffer<unsigned long long> d_inv(1);
      d_ids.Upload(std::vector<int32_t>(TK, 0), stream);
      d_ids_new.Upload(ids32, stream);
      d_valid.Upload({static_cast<int32_t>(T)}, stream);
      d_valid_new.Upload({valid}, stream);
      d_l2p.Upload(t_old.log2phy, stream);
      d_l2p_new.Upload(t_new.log2phy, stream);
      d_cnt.Upload(t_old.logcnt, stream);
      d_cnt_new.Upload(t_new.logcnt, stream);
      d_cpass.Upload(std::vector<int32_t>(P, 7), stream);
      d_cpass_new.Upload(pass_new, stream);
      d_p2l.Upload(t_new.phy2log, stream);
      d_rec_new.Upload({1}, stream);
      for (auto* b : {&d_out, &d_routed, &d_pass, &d_win, &d_state, &d_rec, &d_pass2})
        b->Fill(0, stream);
      d_sum.Fill(0, stream);
      d_inv.Fill(0, stream);
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);

      auto enqueue = [&] {
        SlowCopy(d_ids.get(), d_ids_new.get(), TK, stream);
        SlowCopy(d_valid.get(), d_valid_new.get(), 1, stream);
        SlowCopy(d_l2p.get(), d_l2p_new.get(), t_new.log2phy.size(), stream);
        SlowCopy(d_cnt.get(), d_cnt_new.get(), E, stream);
        SlowCopy(d_rec.get(), d_rec_new.get(), 1, stream);
        EPLB_OK(eplbRouteCount(d_ids.get(), EPLB_ID_INT32, T, d_valid.get(), K, d_l2p.get(),
                               d_cnt.get(), E, P, d_rec.get(), d_out.get(), d_pass.get(),
                               d_inv.get(), stream));
        // Count-only right behind route+count, on the ids it wrote: inside
        // a graph, in the default auto mode, an early launch behind eplb's
        // own kernel where count-only has a decode shape (up to 65536 items)
        // and route+count runs its sub-block kernels.
        EPLB_OK(eplbCount(d_out.get(), EPLB_ID_INT32, T, d_valid.get(), K, P, nullptr,
                          d_pass2.get(), nullptr, stream));
        // Count-only on the routed ids, copied in by the slow kernel right
        // before it (the stale zeros would all count for slot 0).
        SlowCopy(d_routed.get(), d_out.get(), TK, stream);
        EPLB_OK(eplbCount(d_routed.get(), EPLB_ID_INT32, T, d_valid.get(), K, P, d_rec.get(),
                          d_pass.get(), d_inv.get(), stream));
        SlowCopy(d_cpass.get(), d_cpass_new.get(), P, stream);
        EPLB_OK(eplbWindowUpdate(d_p2l.get(), d_cpass.get(), L, E, P, W, d_win.get(), d_sum.get(),
                                 d_state.get(), stream));
      };
      if (graph)
        RunCaptured(stream, enqueue);
      else
        enqueue();

      std::vector<int32_t> out_ref(TK), pass_ref(P, 0), win(W * L * E, 0), state{0, 0};
      std::vector<int64_t> sum(L * E, 0);
      uint64_t inv_ref = 0;
      eplb::RouteCountRef(ids, T, valid, K, t_new.log2phy.data(), t_new.logcnt.data(), E, P, true,
                          out_ref.data(), pass_ref.data(), &inv_ref);
      std::vector<int32_t> pass2_ref(P, 0);
      uint64_t inv2_ref = 0;
      eplb::CountRef(std::vector<int64_t>(out_ref.begin(), out_ref.end()), valid, K, P, true,
                     pass2_ref.data(), &inv2_ref);
      eplb::CountRef(std::vector<int64_t>(out_ref.begin(), out_ref.end()), valid, K, P, true,
                     pass_ref.data(), &inv_ref);
      eplb::WindowUpdateRef(t_new.phy2log.data(), pass_new.data(), L, E, P, W, win.data(),
                            sum.data(), state.data());
      EXPECT_EQ(d_out.Download(stream), out_ref);
      EXPECT_EQ(d_pass.Download(stream), pass_ref);
      EXPECT_EQ(d_pass2.Download(stream), pass2_ref);
      EXPECT_EQ(d_inv.Download(stream)[0], inv_ref);
      EXPECT_EQ(d_win.Download(stream), win);
      EXPECT_EQ(d_sum.Download(stream), sum);
      EXPECT_EQ(d_cpass.Download(stream), std::vector<int32_t>(P, 0));
      EXPECT_EQ(d_state.Download(stream), state);
    }
  }
}

__global__ void NoopKernel() {}

// The process's early-launch mode as it was when made, set back when gone
// (also when an assertion leaves a test early).
struct SavedEarlyLaunchMode {
  int mode = EPLB_EARLY_LAUNCH_AUTO;
  SavedEarlyLaunchMode() { eplbGetEarlyLaunch(&mode); }
  ~SavedEarlyLaunchMode() { eplbSetEarlyLaunch(mode); }
};

// The current device's compute capability major version.
int DeviceMajor() {
  int device = 0, major = 0;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  return major;
}

// The node the last launch on `stream` added to the graph being captured:
// the one node a launch after it would depend on (nullptr, and a failure,
// where there is not exactly one).
cudaGraphNode_t LastCapturedNode(cudaStream_t stream) {
  cudaStreamCaptureStatus status;
  const cudaGraphNode_t* deps = nullptr;
  size_t n = 0;
  EXPECT_EQ(cudaStreamGetCaptureInfo(stream, &status, nullptr, nullptr, &deps, nullptr, &n),
            cudaSuccess);
  EXPECT_EQ(n, 1u);
  return n == 1 ? deps[0] : nullptr;
}

// Every edge of `g`: its two ends and its data (type, ports).
struct GraphEdges {
  std::vector<cudaGraphNode_t> from, to;
  std::vector<cudaGraphEdgeData> data;
};
GraphEdges EdgesOf(cudaGraph_t g) {
  GraphEdges e;
  size_t n = 0;
  EXPECT_EQ(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &n), cudaSuccess);
  e.from.resize(n);
  e.to.resize(n);
  e.data.resize(n);
  EXPECT_EQ(cudaGraphGetEdges(g, e.from.data(), e.to.data(), e.data.data(), &n), cudaSuccess);
  return e;
}

// Which launches eplb makes early, in each mode: in a captured chain of
// launches, on a device of compute capability 9.0 or more, the edge into
// eplb's launch is programmatic exactly where (kernels/enqueue.cuh, eplb.h)
//  - the launch has a decode shape (route+count up to 8192 items,
//    count-only up to 65536) and the mode is on (EPLB_PDL=1,
//    eplbSetEarlyLaunch(1));
//  - or the mode is not off, the launch is route+count through the
//    sub-block kernels (up to 132 segments of 4096 items) or a decode-shape
//    count, and the kernel before is one of those (they let the next launch
//    start);
// else a normal edge. With the mode
// from the environment, then set to each value by the call. Under
// gpu_kernels_pdl this also shows that the early-launch tests there did
// launch early; in the default run, that graphs of eplb's launches get
// early launches (the suites' graph tests run them).
TEST(EarlyLaunch, GraphEdgesFollowTheLaunchShapes) {
  EPLB_REQUIRE_GPUS(1);
  const char* env = std::getenv("EPLB_PDL");
  const std::string e = env == nullptr ? "" : env;
  const int from_env = e == "0"   ? EPLB_EARLY_LAUNCH_OFF
                       : e == "1" ? EPLB_EARLY_LAUNCH_ON
                                  : EPLB_EARLY_LAUNCH_AUTO;
  const int major = DeviceMajor();
  std::mt19937_64 rng(23);
  ScopedStream stream;
  const int32_t E = 64, P = 80, K = 8;
  const int64_t t_max = 16384;
  const Table t = RandomTable(rng, E, P);
  DeviceBuffer<int32_t> d_ids(t_max * K), d_out(t_max * K), d_pass(P), d_l2p(t.log2phy.size()),
      d_cnt(E);
  d_l2p.Upload(t.log2phy, stream);
  d_cnt.Upload(t.logcnt, stream);
  for (auto* b : {&d_ids, &d_out, &d_pass}) b->Fill(0, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  enum Kind { kNoop, kRoute, kCount };
  struct Op {
    Kind kind;
    int64_t tokens;
    bool decode;  // a decode shape: early with the mode on
    bool eplb;    // one of eplb's kernels that let the next launch start
  };
  const std::vector<Op> chain = {
      {kNoop, 0, false, false},     {kRoute, 64, true, true},    {kRoute, 64, true, true},
      {kRoute, 512, true, true},    {kCount, 64, true, true},    {kRoute, 1024, true, true},
      {kRoute, 1025, false, true},  {kRoute, 64, true, true},    {kCount, 8192, true, true},
      {kCount, 8193, false, false}, {kRoute, 64, true, true},    {kCount, t_max, false, false},
      {kCount, 64, true, true},     {kRoute, 8192, false, true}, {kRoute, 16, true, true},
      {kRoute, 8192, false, true},  {kRoute, 8192, false, true}, {kNoop, 0, false, false},
      {kRoute, 8192, false, true}};
  const SavedEarlyLaunchMode saved;
  for (int setting : {-1, EPLB_EARLY_LAUNCH_ON, EPLB_EARLY_LAUNCH_OFF, EPLB_EARLY_LAUNCH_AUTO}) {
    SCOPED_TRACE(setting);  // -1: from the environment
    if (setting >= 0) EPLB_OK(eplbSetEarlyLaunch(setting));
    int mode = -1;
    EPLB_OK(eplbGetEarlyLaunch(&mode));
    EXPECT_EQ(mode, setting >= 0 ? setting : from_env);
    ASSERT_TRUE(mode >= 0 && mode <= 2);
    // Capture the chain; after each launch, the node it added.
    cudaGraph_t g;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    std::vector<cudaGraphNode_t> nodes;
    for (const Op& op : chain) {
      if (op.kind == kNoop)
        NoopKernel<<<1, 32, 0, stream>>>();
      else if (op.kind == kCount)
        EPLB_OK(eplbCount(d_out.get(), EPLB_ID_INT32, op.tokens, nullptr, K, P, nullptr,
                          d_pass.get(), nullptr, stream));
      else
        EPLB_OK(eplbRouteCount(d_ids.get(), EPLB_ID_INT32, op.tokens, nullptr, K, d_l2p.get(),
                               d_cnt.get(), E, P, nullptr, d_out.get(), d_pass.get(), nullptr,
                               stream));
      nodes.push_back(LastCapturedNode(stream));  // every launch is one kernel node
      ASSERT_NE(nodes.back(), nullptr);
    }
    ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
    const auto& [from, to, data] = EdgesOf(g);
    const size_t n = from.size();
    cudaGraphDestroy(g);
    ASSERT_EQ(n, chain.size() - 1);
    int programmatic = 0, expected_programmatic = 0;
    for (size_t i = 1; i < chain.size(); ++i) {
      SCOPED_TRACE(i);
      size_t j = 0;
      while (j < n && !(from[j] == nodes[i - 1] && to[j] == nodes[i])) ++j;
      ASSERT_LT(j, n);  // the chain's edge from launch i - 1 to launch i
      const bool early = major >= 9 && mode != EPLB_EARLY_LAUNCH_OFF &&
                         ((mode == EPLB_EARLY_LAUNCH_ON && chain[i].decode) ||
                          (chain[i].eplb && chain[i - 1].eplb));
      const bool is_programmatic = data[j].type == cudaGraphDependencyTypeProgrammatic;
      EXPECT_EQ(is_programmatic, early);
      programmatic += is_programmatic ? 1 : 0;
      expected_programmatic += early ? 1 : 0;
    }
    // The chain has 10 decode launches and 15 of eplb's launches that let
    // the next start, 11 of them right behind another; with the mode on,
    // those 11 and the 3 decode launches that follow another kernel.
    if (major >= 9) {
      const int want[3] = {0, 14, 11};  // off, on, auto
      EXPECT_EQ(expected_programmatic, want[mode]);
    }
    EXPECT_EQ(programmatic, expected_programmatic);
  }
}

// An engine's kernel launched through the driver API (as Triton's are) in
// front of eplb's launches in a graph being captured, in the auto mode:
// eplb's look behind (it queries the capture, never the caller's nodes)
// leaves no error for the caller's next cudaGetLastError and keeps one the
// caller left before; the launch behind that kernel is normal, the one
// behind eplb's own early (compute capability 9.0 or more).
TEST(EarlyLaunch, AutoModeBehindADriverApiKernelKeepsTheCallersErrorState) {
  EPLB_REQUIRE_GPUS(1);
  const SavedEarlyLaunchMode saved;
  EPLB_OK(eplbSetEarlyLaunch(EPLB_EARLY_LAUNCH_AUTO));
  const int major = DeviceMajor();
  cudaFunction_t noop = nullptr;
  ASSERT_EQ(cudaGetFuncBySymbol(&noop, reinterpret_cast<const void*>(NoopKernel)), cudaSuccess);
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  ASSERT_EQ(
      cudaGetDriverEntryPointByVersion("cuLaunchKernel", &entry, 12000, cudaEnableDefault, &found),
      cudaSuccess);
  ASSERT_EQ(found, cudaDriverEntryPointSuccess);
  using LaunchFn = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                unsigned, unsigned, CUstream, void**, void**);
  const auto driver_launch = reinterpret_cast<LaunchFn>(entry);
  std::mt19937_64 rng(29);
  ScopedStream stream;
  const int32_t E = 64, P = 80, K = 8, T = 64;
  const Table t = RandomTable(rng, E, P);
  DeviceBuffer<int32_t> d_ids(T * K), d_out(T * K), d_pass(P), d_l2p(t.log2phy.size()), d_cnt(E);
  d_l2p.Upload(t.log2phy, stream);
  d_cnt.Upload(t.logcnt, stream);
  for (auto* b : {&d_ids, &d_out, &d_pass}) b->Fill(0, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int with_error = 0; with_error < 2; ++with_error) {
    SCOPED_TRACE(with_error);
    // A non-sticky error of the caller's own, pending when eplb is called.
    if (with_error) ASSERT_EQ(cudaSetDevice(-1), cudaErrorInvalidDevice);
    cudaGraph_t g;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    std::vector<cudaGraphNode_t> nodes;
    auto last_node = [&] {
      nodes.push_back(LastCapturedNode(stream));
      ASSERT_NE(nodes.back(), nullptr);
    };
    ASSERT_EQ(driver_launch(reinterpret_cast<CUfunction>(noop), 1, 1, 1, 32, 1, 1, 0,
                            reinterpret_cast<CUstream>(static_cast<cudaStream_t>(stream)), nullptr,
                            nullptr),
              CUDA_SUCCESS);
    last_node();
    for (int i = 0; i < 2; ++i) {
      EPLB_OK(eplbRouteCount(d_ids.get(), EPLB_ID_INT32, T, nullptr, K, d_l2p.get(), d_cnt.get(), E,
                             P, nullptr, d_out.get(), d_pass.get(), nullptr, stream));
      last_node();
    }
    ASSERT_EQ(cudaStreamEndCapture(stream, &g), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), with_error ? cudaErrorInvalidDevice : cudaSuccess);
    const auto& [from, to, data] = EdgesOf(g);
    const size_t n = from.size();
    cudaGraphDestroy(g);
    ASSERT_EQ(n, 2u);
    ASSERT_EQ(nodes.size(), 3u);
    for (size_t j = 0; j < n; ++j) {
      const bool programmatic = data[j].type == cudaGraphDependencyTypeProgrammatic;
      if (from[j] == nodes[0] && to[j] == nodes[1])
        EXPECT_FALSE(programmatic);
      else if (from[j] == nodes[1] && to[j] == nodes[2])
        EXPECT_EQ(programmatic, major >= 9);
      else
        ADD_FAILURE() << "an edge outside the chain";
    }
  }
}

// The caller's own programmatic dependency in front of eplb's launches in a
// graph being captured (a kernel launched with a programmatic event that
// the stream then waits on, the early-launch pattern across kernels), in
// each mode: eplb's look behind asks for the edge data too, so its query
// does not fail with cudaErrorLossyQuery and leave that error for the
// caller; the graph routes and counts as the host reference does.
TEST(EarlyLaunch, ProgrammaticEdgeInFrontLeavesNoError) {
  EPLB_REQUIRE_GPUS(1);
  if (DeviceMajor() < 9) GTEST_SKIP() << "programmatic events need compute capability 9.0";
  const SavedEarlyLaunchMode saved;
  std::mt19937_64 rng(31);
  ScopedStream stream;
  const int32_t E = 64, P = 80, K = 8, T = 64;
  const size_t TK = static_cast<size_t>(T * K);
  const Table t = RandomTable(rng, E, P);
  const std::vector<int64_t> ids = ZipfIds(rng, TK, E, 1.2);
  std::vector<int32_t> out_ref(TK), pass_ref(P, 0);
  uint64_t inv_ref = 0;
  eplb::RouteCountRef(ids, T, T, K, t.log2phy.data(), t.logcnt.data(), E, P, true, out_ref.data(),
                      pass_ref.data(), &inv_ref);
  eplb::CountRef(std::vector<int64_t>(out_ref.begin(), out_ref.end()), T, K, P, true,
                 pass_ref.data(), &inv_ref);
  DeviceBuffer<int32_t> d_ids(TK), d_out(TK), d_pass(P), d_l2p(t.log2phy.size()), d_cnt(E);
  d_ids.Upload(std::vector<int32_t>(ids.begin(), ids.end()), stream);
  d_l2p.Upload(t.log2phy, stream);
  d_cnt.Upload(t.logcnt, stream);
  cudaEvent_t ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int mode : {EPLB_EARLY_LAUNCH_AUTO, EPLB_EARLY_LAUNCH_ON, EPLB_EARLY_LAUNCH_OFF}) {
    SCOPED_TRACE(mode);
    EPLB_OK(eplbSetEarlyLaunch(mode));
    d_out.Fill(0, stream);
    d_pass.Fill(0, stream);
    RunCaptured(stream, [&] {
      cudaLaunchAttribute attr = {};
      attr.id = cudaLaunchAttributeProgrammaticEvent;
      attr.val.programmaticEvent.event = ev;
      attr.val.programmaticEvent.triggerAtBlockStart = 0;
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(1);
      config.blockDim = dim3(32);
      config.stream = stream;
      config.attrs = &attr;
      config.numAttrs = 1;
      ASSERT_EQ(cudaLaunchKernelEx(&config, NoopKernel), cudaSuccess);
      ASSERT_EQ(cudaStreamWaitEvent(stream, ev, 0), cudaSuccess);
      EPLB_OK(eplbRouteCount(d_ids.get(), EPLB_ID_INT32, T, nullptr, K, d_l2p.get(), d_cnt.get(), E,
                             P, nullptr, d_out.get(), d_pass.get(), nullptr, stream));
      EPLB_OK(eplbCount(d_out.get(), EPLB_ID_INT32, T, nullptr, K, P, nullptr, d_pass.get(),
                        nullptr, stream));
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    });
    EXPECT_EQ(d_out.Download(stream), out_ref);
    EXPECT_EQ(d_pass.Download(stream), pass_ref);
  }
  cudaEventDestroy(ev);
}

// GPU plan vs host plan (eplbPlanCompute) for one input; both runs on the
// device must equal the host bit for bit.
void CheckPlan(const eplbPlanConfig_t& cfg, const std::vector<int64_t>& load,
               const std::vector<int32_t>* old) {
  ScopedStream stream;
  const size_t L = cfg.num_layers, E = cfg.num_logical_experts, P = cfg.num_physical_experts;
  const size_t R1 = P - E + 1;
  std::vector<int32_t> h_p2l(L * P), h_cnt(L * E), h_l2p(L * E * R1);
  EPLB_OK(eplbPlanCompute(&cfg, load.data(), old ? old->data() : nullptr, h_p2l.data(),
                          h_cnt.data(), h_l2p.data(), nullptr));
  size_t ws = 0;
  EPLB_OK(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws));
  DeviceBuffer<char> d_ws(ws);
  DeviceBuffer<int64_t> d_load(load.size());
  DeviceBuffer<int32_t> d_old(L * P), d_p2l(L * P), d_cnt(L * E), d_l2p(L * E * R1);
  d_load.Upload(load, stream);
  if (old) d_old.Upload(*old, stream);
  for (int run = 0; run < 2; ++run) {
    SCOPED_TRACE(run);
    d_p2l.Fill(0xff, stream);
    d_cnt.Fill(0xff, stream);
    d_l2p.Fill(0x7f, stream);
    EPLB_OK(eplbPlanComputeGpu(&cfg, d_load.get(), old ? d_old.get() : nullptr, d_p2l.get(),
                               d_cnt.get(), d_l2p.get(), d_ws.get(), ws, stream));
    EXPECT_EQ(d_p2l.Download(stream), h_p2l);
    EXPECT_EQ(d_cnt.Download(stream), h_cnt);
    EXPECT_EQ(d_l2p.Download(stream), h_l2p);
  }
}

eplbPlanConfig_t ConfigOf(int32_t L, int32_t E, int32_t P, int32_t G, int32_t M, int32_t N,
                          eplbMigration_t mig) {
  eplbPlanConfig_t c = EPLB_PLAN_CONFIG_INIT;
  c.num_layers = L;
  c.num_logical_experts = E;
  c.num_physical_experts = P;
  c.num_groups = G;
  c.num_nodes = M;
  c.num_ranks = N;
  c.migration = mig;
  return c;
}

TEST(PlanGpu, ConformanceCases) {
  EPLB_REQUIRE_GPUS(1);
  EPLB_REQUIRE_DATA_PATH(dir, "conformance");
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  std::vector<std::string> files;
  while (dirent* ent = readdir(d)) {
    const std::string n = ent->d_name;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".eplb") files.push_back(n);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 28u);
  ScopedStream stream;
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    const eplb::PlanCase c = eplb::ReadPlanCase(dir + "/" + f);
    const eplbPlanConfig_t cfg =
        ConfigOf(c.num_layers, c.num_logical_experts, c.num_physical_experts, c.num_groups,
                 c.num_nodes, c.num_ranks, EPLB_MIGRATION_PRESERVE);
    CheckPlan(cfg, c.weights, nullptr);
    // The GPU plan equals the file's expected plan too.
    size_t ws = 0;
    EPLB_OK(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws));
    DeviceBuffer<char> d_ws(ws);
    DeviceBuffer<int64_t> d_load(c.weights.size());
    DeviceBuffer<int32_t> d_p2l(c.phy2log.size()), d_cnt(c.logcnt.size()), d_l2p(c.log2phy.size()),
        d_old(c.old_phy2log.size());
    d_load.Upload(c.weights, stream);
    EPLB_OK(eplbPlanComputeGpu(&cfg, d_load.get(), nullptr, d_p2l.get(), d_cnt.get(), d_l2p.get(),
                               d_ws.get(), ws, stream));
    EXPECT_EQ(d_p2l.Download(stream), c.phy2log);
    EXPECT_EQ(d_cnt.Download(stream), c.logcnt);
    EXPECT_EQ(d_l2p.Download(stream), c.log2phy);
    if (!c.old_phy2log.empty()) {
      CheckPlan(cfg, c.weights, &c.old_phy2log);
      d_old.Upload(c.old_phy2log, stream);
      EPLB_OK(eplbPlanComputeGpu(&cfg, d_load.get(), d_old.get(), d_p2l.get(), d_cnt.get(), nullptr,
                                 d_ws.get(), ws, stream));
      EXPECT_EQ(d_p2l.Download(stream), c.preserved_phy2log);
      if (c.num_ranks <= 64) {  // FULL on the GPU: up to 64 ranks
        eplbPlanConfig_t full = cfg;
        full.migration = EPLB_MIGRATION_FULL;
        CheckPlan(full, c.weights, &c.old_phy2log);
      }
    }
  }
}

TEST(PlanGpu, RandomMatchesHost) {
  EPLB_REQUIRE_GPUS(1);
  std::mt19937_64 rng(17);
  struct S {
    int32_t L, E, P, G, M, N;
  } shapes[] = {{58, 256, 288, 8, 4, 32},
                {20, 256, 288, 8, 1, 8},
                {10, 128, 160, 1, 1, 16},
                {6, 64, 96, 8, 3, 24},
                {4, 1024, 4096, 16, 4, 64},
                {8, 16, 64, 4, 2, 64},
                {5, 96, 112, 6, 4, 8},
                {7, 8, 8, 1, 1, 8},
                // More than 32 packs: GPUs per node (64), nodes (64).
                {3, 128, 256, 1, 1, 64},
                {2, 256, 384, 128, 64, 64}};
  for (const S& s : shapes) {
    SCOPED_TRACE(s.P);
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<int64_t> load(static_cast<size_t>(s.L) * s.E);
      for (auto& v : load) {
        if (kind == 0) v = static_cast<int64_t>(rng() % 1000000);
        if (kind == 1) v = static_cast<int64_t>(rng() % 4);  // ties everywhere
        if (kind == 2) v = static_cast<int64_t>(rng() % (int64_t{1} << 40));
      }
      eplbPlanConfig_t cfg = ConfigOf(s.L, s.E, s.P, s.G, s.M, s.N, EPLB_MIGRATION_NONE);
      CheckPlan(cfg, load, nullptr);
      // Each policy asked for by name, where the shape allows it (the host
      // planner says).
      for (eplbPolicy_t policy : {EPLB_POLICY_HIERARCHICAL, EPLB_POLICY_GLOBAL}) {
        SCOPED_TRACE(policy);
        eplbPlanConfig_t named = cfg;
        named.policy = policy;
        std::vector<int32_t> p2l(static_cast<size_t>(s.L) * s.P), c(load.size());
        const eplbStatus_t host =
            eplbPlanCompute(&named, load.data(), nullptr, p2l.data(), c.data(), nullptr, nullptr);
        if (host == EPLB_SUCCESS) {
          CheckPlan(named, load, nullptr);
        } else {  // the GPU planner's config check (its workspace query) refuses it too
          size_t ws = 0;
          EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&named, &ws), host);
        }
      }
      // An old placement: the host plan of other loads.
      std::vector<int64_t> load2(load.size());
      for (auto& v : load2) v = static_cast<int64_t>(rng() % 1000);
      std::vector<int32_t> old(static_cast<size_t>(s.L) * s.P), cnt(load.size());
      EPLB_OK(
          eplbPlanCompute(&cfg, load2.data(), nullptr, old.data(), cnt.data(), nullptr, nullptr));
      cfg.migration = EPLB_MIGRATION_PRESERVE;
      CheckPlan(cfg, load, &old);
      cfg.migration = EPLB_MIGRATION_FULL;
      CheckPlan(cfg, load, &old);
      // An old placement that is this load's plan with its GPUs shuffled
      // within nodes and its nodes shuffled: FULL finds the relabeling.
      cfg.migration = EPLB_MIGRATION_NONE;
      std::vector<int32_t> mine(old.size());
      EPLB_OK(
          eplbPlanCompute(&cfg, load.data(), nullptr, mine.data(), cnt.data(), nullptr, nullptr));
      const eplb::PlanShape shape{s.L, s.E, s.P, s.G, s.M, s.N};
      const bool hier =
          eplb::ResolvePolicy(shape, eplb::Policy::kAuto) == eplb::Policy::kHierarchical;
      const int32_t M = hier ? s.M : 1, bs = s.N / M, spg = s.P / s.N;
      std::vector<int32_t> node(M), gpu(bs);
      for (int32_t i = 0; i < M; ++i) node[i] = i;
      for (int32_t i = 0; i < bs; ++i) gpu[i] = i;
      std::shuffle(node.begin(), node.end(), rng);
      std::shuffle(gpu.begin(), gpu.end(), rng);
      for (int32_t l = 0; l < s.L; ++l)
        for (int32_t g = 0; g < s.N; ++g)
          for (int32_t r = 0; r < spg; ++r)
            old[(static_cast<size_t>(l) * s.N + node[g / bs] * bs + gpu[g % bs]) * spg + r] =
                mine[(static_cast<size_t>(l) * s.N + g) * spg + r];
      cfg.migration = EPLB_MIGRATION_FULL;
      CheckPlan(cfg, load, &old);
      cfg.migration = EPLB_MIGRATION_NONE;
      CheckPlan(cfg, load, &old);
    }
  }
}

// Host-checkable argument errors; they need no device.
// A call returns the status of its own launch: an error the caller's own
// runtime calls left behind is neither reported as eplb's nor cleared.
// Buffers that touch without overlapping are accepted.
TEST(KernelsApi, OwnStatusAndAdjacentBuffers) {
  EPLB_REQUIRE_GPUS(1);
  ScopedStream stream;
  std::mt19937_64 rng(16);
  const Table t = RandomTable(rng, 64, 80);
  const int64_t T = 100;
  const int32_t K = 8;
  const auto ids = ZipfIds(rng, static_cast<size_t>(T * K), t.E, 1.0);
  std::vector<int32_t> ref_out(ids.size()), ref_load(static_cast<size_t>(t.P), 0);
  uint64_t ref_invalid = 0;
  eplb::RouteCountRef(ids, T, T, K, t.log2phy.data(), t.logcnt.data(), t.E, t.P, true,
                      ref_out.data(), ref_load.data(), &ref_invalid);
  // One allocation: the ids, the output ids, then the counters, back to back.
  const size_t n = ids.size();
  DeviceBuffer<int32_t> d_all(2 * n + static_cast<size_t>(t.P)), d_l2p, d_cnt;
  std::vector<int32_t> h_all(d_all.size(), 0);
  std::copy(ids.begin(), ids.end(), h_all.begin());
  d_all.Upload(h_all, stream);
  d_l2p.Upload(t.log2phy, stream);
  d_cnt.Upload(t.logcnt, stream);
  void* huge = nullptr;
  ASSERT_EQ(cudaMalloc(&huge, size_t{1} << 60), cudaErrorMemoryAllocation);
  EPLB_OK(eplbRouteCount(d_all.get(), EPLB_ID_INT32, T, nullptr, K, d_l2p.get(), d_cnt.get(), t.E,
                         t.P, nullptr, d_all.get() + n, d_all.get() + 2 * n, nullptr, stream));
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int32_t> out = d_all.Download(stream);
  EXPECT_EQ(std::vector<int32_t>(out.begin() + n, out.begin() + 2 * n), ref_out);
  EXPECT_EQ(std::vector<int32_t>(out.begin() + 2 * n, out.end()), ref_load);
}

TEST(KernelsApi, ArgumentErrors) {
  int32_t dummy[4] = {0, 0, 0, 0};
  cudaStream_t s = cudaStreamPerThread;
  EXPECT_EQ(eplbRouteCount(nullptr, EPLB_ID_INT32, 1, nullptr, 1, dummy, dummy, 1, 1, nullptr,
                           dummy, dummy, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("d_topk_logical"), std::string::npos);
  EXPECT_EQ(eplbRouteCount(dummy, EPLB_ID_INT32, 1, nullptr, 1, dummy, dummy, 1, 1, nullptr, dummy,
                           dummy, nullptr, nullptr),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("stream"), std::string::npos);
  EXPECT_EQ(eplbRouteCount(dummy, static_cast<eplbIdType_t>(7), 1, nullptr, 1, dummy, dummy, 1, 1,
                           nullptr, dummy, dummy, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(eplbRouteCount(dummy, EPLB_ID_INT32, 1, nullptr, 1, dummy, dummy, 4, 3, nullptr, dummy,
                           dummy, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("num_physical_experts"), std::string::npos);
  EXPECT_EQ(eplbRouteCount(dummy, EPLB_ID_INT32, int64_t{1} << 29, nullptr, 8, dummy, dummy, 4, 4,
                           nullptr, dummy, dummy, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(eplbCount(dummy, EPLB_ID_INT32, -1, nullptr, 1, 4, nullptr, dummy, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(eplbWindowUpdate(dummy, dummy, 1, 2, 3, 0, dummy, reinterpret_cast<int64_t*>(dummy),
                             dummy, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("window_size"), std::string::npos);
  // FULL migration on the GPU: up to 64 ranks, with its own workspace.
  eplbPlanConfig_t big = ConfigOf(1, 128, 128, 1, 1, 128, EPLB_MIGRATION_FULL);
  size_t ws_big = 0;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&big, &ws_big), EPLB_SUCCESS);
  EXPECT_EQ(eplbPlanComputeGpu(&big, reinterpret_cast<int64_t*>(dummy), dummy, dummy, dummy,
                               nullptr, reinterpret_cast<void*>(256), ws_big, s),
            EPLB_ERROR_NOT_SUPPORTED);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("at most 64 ranks"), std::string::npos);
  eplbPlanConfig_t cfg = ConfigOf(2, 12, 16, 4, 2, 8, EPLB_MIGRATION_FULL);
  size_t ws = 0, ws_none = 0;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws), EPLB_SUCCESS);
  cfg.migration = EPLB_MIGRATION_NONE;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws_none), EPLB_SUCCESS);
  EXPECT_GT(ws, ws_none);  // FULL's intersections and solver scratch
  // A NONE-sized workspace is too small for FULL with an old placement; the
  // FULL size passes that check (and the call stops at the stream, last).
  // Distinct fake buffers, never dereferenced.
  const auto* f_load = reinterpret_cast<const int64_t*>(0x10000);
  const auto* f_old = reinterpret_cast<const int32_t*>(0x20000);
  auto* f_p2l = reinterpret_cast<int32_t*>(0x30000);
  auto* f_cnt = reinterpret_cast<int32_t*>(0x40000);
  auto* f_ws = reinterpret_cast<void*>(0x100000);
  cfg.migration = EPLB_MIGRATION_FULL;
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, f_load, f_old, f_p2l, f_cnt, nullptr, f_ws, ws_none, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("workspace_bytes"), std::string::npos);
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, f_load, f_old, f_p2l, f_cnt, nullptr, f_ws, ws, nullptr),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("stream"), std::string::npos);
  cfg.policy = EPLB_POLICY_CHURN_AWARE;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws), EPLB_ERROR_NOT_SUPPORTED);
  cfg.policy = EPLB_POLICY_AUTO;
  cfg.migration = EPLB_MIGRATION_NONE;
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, f_load, nullptr, f_p2l, f_cnt, nullptr, f_ws, ws_none - 1, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("workspace_bytes"), std::string::npos);
  // An unknown migration fails the size query too.
  cfg.migration = static_cast<eplbMigration_t>(7);
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws), EPLB_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(eplbGetLastErrorDetail()).find("migration"), std::string::npos);
  cfg.migration = EPLB_MIGRATION_NONE;
  cfg.num_ranks = 7;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws), EPLB_ERROR_INVALID_ARGUMENT);
}

}  // namespace
