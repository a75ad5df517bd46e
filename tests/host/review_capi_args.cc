// Adversarial review of the argument checks of the device-facing C API that
// must fire before any CUDA or NCCL call (so they run on a machine without a
// GPU): eplbExchangeStagingQuery (host only), eplbExchangeCreate, the state
// machine's entry points, the kernel launchers and the GPU planner's sizing.
// Every case checks the status, that the detail names the function and the
// field, and that outputs are untouched. Device pointers below are never
// dereferenced: each call is rejected (or is a documented no-op) first.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "eplb/eplb.h"

namespace {

constexpr size_t kPoisonSize = 0xdeadbeefu;

void ExpectDetail(const char* function, const char* field) {
  const std::string d = eplbGetLastErrorDetail();
  EXPECT_EQ(d.rfind(std::string(function) + ": ", 0), 0u) << d;
  EXPECT_NE(d.find(field), std::string::npos) << "detail '" << d << "' should name " << field;
}

// Addresses that are never dereferenced (every call using them fails its
// argument checks first).
template <typename T>
T* Fake(uintptr_t v = 0x1000) {
  return reinterpret_cast<T*>(v);
}
ncclComm_t FakeComm() {
  return reinterpret_cast<ncclComm_t>(uintptr_t{0x2000});
}
cudaStream_t FakeStream() {
  return reinterpret_cast<cudaStream_t>(uintptr_t{0x3000});
}

// ---- eplbExchangeStagingQuery ------------------------------------------------

// L=2 layers, P=8 slots, N=4 ranks (2 slots each).
struct QueryIo {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  std::vector<size_t> tensors;
  std::vector<int32_t> old_p, new_p, nodes;
  size_t min_bytes = kPoisonSize, dev_bytes = kPoisonSize;
  QueryIo() {
    cfg.num_layers = 2;
    cfg.num_physical_experts = 8;
    cfg.num_ranks = 4;
    cfg.rank = 0;
    tensors.assign(2 * EPLB_EXCHANGE_MAX_TENSORS, 0);
    tensors[0] = 100;
    tensors[1] = 7;
    tensors[EPLB_EXCHANGE_MAX_TENSORS + 3] = 64;
    old_p = {0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 2, 3, 4, 5, 4, 5};
    new_p = {1, 0, 3, 2, 5, 4, 1, 0, 5, 1, 2, 3, 4, 0, 4, 5};
    nodes = {0, 0, 1, 1};
  }
  eplbStatus_t Run(bool plans) {
    return eplbExchangeStagingQuery(&cfg, tensors.data(), plans ? old_p.data() : nullptr,
                                    plans ? new_p.data() : nullptr, &min_bytes, &dev_bytes);
  }
  void ExpectUntouched() const {
    EXPECT_EQ(min_bytes, kPoisonSize);
    EXPECT_EQ(dev_bytes, kPoisonSize);
  }
};

TEST(ReviewStagingQuery, EveryInvalidArgumentLeavesOutputsUntouched) {
  struct Case {
    const char* what;
    const char* field;
    std::function<eplbStatus_t(QueryIo&)> run;
  };
  auto with = [](std::function<void(QueryIo&)> m, bool plans) {
    return [m, plans](QueryIo& io) {
      m(io);
      return io.Run(plans);
    };
  };
  const std::vector<Case> cases = {
      {"NULL config", "config",
       [](QueryIo& io) {
         return eplbExchangeStagingQuery(nullptr, io.tensors.data(), nullptr, nullptr,
                                         &io.min_bytes, &io.dev_bytes);
       }},
      {"NULL tensor table", "h_tensor_bytes",
       [](QueryIo& io) {
         return eplbExchangeStagingQuery(&io.cfg, nullptr, nullptr, nullptr, &io.min_bytes,
                                         &io.dev_bytes);
       }},
      {"only the old plan", "h_new_phy2log",
       [](QueryIo& io) {
         return eplbExchangeStagingQuery(&io.cfg, io.tensors.data(), io.old_p.data(), nullptr,
                                         &io.min_bytes, &io.dev_bytes);
       }},
      {"only the new plan", "h_old_phy2log",
       [](QueryIo& io) {
         return eplbExchangeStagingQuery(&io.cfg, io.tensors.data(), nullptr, io.new_p.data(),
                                         &io.min_bytes, &io.dev_bytes);
       }},
      {"struct_size", "struct_size", with([](QueryIo& io) { io.cfg.struct_size = 8; }, false)},
      {"L = 0", "num_layers", with([](QueryIo& io) { io.cfg.num_layers = 0; }, false)},
      {"L = 129", "num_layers", with([](QueryIo& io) { io.cfg.num_layers = 129; }, false)},
      {"N = 0", "num_ranks", with([](QueryIo& io) { io.cfg.num_ranks = 0; }, false)},
      {"N = 1025", "num_ranks", with([](QueryIo& io) { io.cfg.num_ranks = 1025; }, false)},
      {"P = 0", "num_physical_experts",
       with([](QueryIo& io) { io.cfg.num_physical_experts = 0; }, false)},
      {"P = 4097", "num_physical_experts",
       with([](QueryIo& io) { io.cfg.num_physical_experts = 4097; }, false)},
      {"P % N", "num_ranks", with([](QueryIo& io) { io.cfg.num_ranks = 3; }, false)},
      {"negative node", "h_rank_node",
       with(
           [](QueryIo& io) {
             io.nodes[3] = -1;
             io.cfg.h_rank_node = io.nodes.data();
           },
           false)},
      {"a layer without tensors", "h_tensor_bytes",
       with([](QueryIo& io) { io.tensors[EPLB_EXCHANGE_MAX_TENSORS + 3] = 0; }, false)},
      {"old id < 0", "h_old_phy2log", with([](QueryIo& io) { io.old_p[9] = -1; }, true)},
      {"new id < 0", "h_new_phy2log", with([](QueryIo& io) { io.new_p[15] = -2; }, true)},
      {"new id >= P", "h_new_phy2log", with([](QueryIo& io) { io.new_p[3] = 8; }, true)},
      {"new expert held by no old slot", "h_new_phy2log",
       with([](QueryIo& io) { io.new_p[12] = 7; }, true)},
      {"tensor bytes overflow", "overflow",
       with([](QueryIo& io) { io.tensors[2] = std::numeric_limits<size_t>::max() - 3; }, false)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    QueryIo io;
    EXPECT_EQ(c.run(io), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbExchangeStagingQuery", c.field);
    io.ExpectUntouched();
  }
  QueryIo io;
  EXPECT_EQ(eplbExchangeStagingQuery(&io.cfg, io.tensors.data(), nullptr, nullptr, nullptr,
                                     &io.dev_bytes),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeStagingQuery", "h_min_staging_bytes");
  EXPECT_EQ(io.dev_bytes, kPoisonSize);
}

// "With plans: exact, the largest over layers and ranks of one layer's send +
// receive + local-copy staging", rows padded to EPLB_EXCHANGE_ROW_ALIGN.
// A caller built against a later header passes a larger config (fields are
// only appended): accepted, with the same answer; a smaller one is not.
TEST(ReviewStagingQuery, AcceptsTheLargerStructOfALaterHeader) {
  QueryIo io;
  ASSERT_EQ(io.Run(true), EPLB_SUCCESS) << eplbGetLastErrorDetail();
  struct Later {
    eplbExchangeConfig_t cfg;
    int64_t appended;
  } later = {io.cfg, 12345};
  later.cfg.struct_size = sizeof(Later);
  size_t min_bytes = kPoisonSize, dev_bytes = kPoisonSize;
  ASSERT_EQ(eplbExchangeStagingQuery(&later.cfg, io.tensors.data(), io.old_p.data(),
                                     io.new_p.data(), &min_bytes, &dev_bytes),
            EPLB_SUCCESS)
      << eplbGetLastErrorDetail();
  EXPECT_EQ(min_bytes, io.min_bytes);
  EXPECT_EQ(dev_bytes, io.dev_bytes);
  EXPECT_EQ(later.cfg.struct_size, sizeof(Later));
  EXPECT_EQ(later.appended, 12345);
  later.cfg.struct_size = sizeof(eplbExchangeConfig_t) - 8;
  EXPECT_EQ(eplbExchangeStagingQuery(&later.cfg, io.tensors.data(), io.old_p.data(),
                                     io.new_p.data(), &min_bytes, &dev_bytes),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeStagingQuery", "struct_size");
}

TEST(ReviewStagingQuery, WithPlansIsTheExactLargestRankLayerNeed) {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  cfg.num_layers = 1;
  cfg.num_physical_experts = 4;
  cfg.num_ranks = 2;
  cfg.device = -7;        // ignored by the query
  cfg.staging_bytes = 0;  // ignored by the query
  std::vector<size_t> tensors(EPLB_EXCHANGE_MAX_TENSORS, 0);
  tensors[5] = 100;  // padded to 112
  const size_t row = 112;
  size_t min_bytes = 0, dev = 0;
  // Swap of experts 0 and 2 between ranks: each rank sends 1 and receives 1.
  const int32_t old_p[4] = {0, 1, 2, 3};
  const int32_t swap_p[4] = {2, 1, 0, 3};
  ASSERT_EQ(eplbExchangeStagingQuery(&cfg, tensors.data(), old_p, swap_p, &min_bytes, &dev),
            EPLB_SUCCESS)
      << eplbGetLastErrorDetail();
  EXPECT_EQ(min_bytes, 2 * row);
  EXPECT_GE(dev, min_bytes);
  // A local copy (slot 0 takes expert 1 from slot 1 of the same rank): one
  // staged source row.
  const int32_t local_p[4] = {1, 1, 2, 3};
  ASSERT_EQ(eplbExchangeStagingQuery(&cfg, tensors.data(), old_p, local_p, &min_bytes, nullptr),
            EPLB_SUCCESS);
  EXPECT_EQ(min_bytes, row);
  // Without plans: P padded bundles of the largest layer, never below an
  // actual plan's need.
  ASSERT_EQ(eplbExchangeStagingQuery(&cfg, tensors.data(), nullptr, nullptr, &min_bytes, &dev),
            EPLB_SUCCESS);
  EXPECT_EQ(min_bytes, 4 * row);
  EXPECT_GE(dev, min_bytes);
}

// h_device_bytes is "device memory Create allocates for a budget of
// *h_min_staging_bytes (staging plus ...)": never below the staging itself.
// Regression test (was a bug): host/cuda/exchange.cc ExchangeDeviceBytes adds the tables to the
// staging without an overflow check, so a bundle size that the query accepts
// (its own arithmetic is checked) wraps the device total around to a few
// hundred bytes and the query reports success.
TEST(ReviewStagingQuery, DeviceBytesNeverWrapBelowTheStaging) {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  cfg.num_layers = 1;
  cfg.num_physical_experts = 1;
  cfg.num_ranks = 1;
  std::vector<size_t> tensors(EPLB_EXCHANGE_MAX_TENSORS, 0);
  tensors[0] = std::numeric_limits<size_t>::max() - 64;
  size_t min_bytes = kPoisonSize, dev = kPoisonSize;
  const eplbStatus_t st =
      eplbExchangeStagingQuery(&cfg, tensors.data(), nullptr, nullptr, &min_bytes, &dev);
  if (st == EPLB_SUCCESS) {
    EXPECT_GE(dev, min_bytes) << "device bytes wrapped around";
  } else {
    EXPECT_EQ(st, EPLB_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(min_bytes, kPoisonSize);
    EXPECT_EQ(dev, kPoisonSize);
  }
}

// ---- eplbExchangeCreate / handle calls --------------------------------------

TEST(ReviewExchangeCreate, ConfigErrorsComeBeforeAnyCommunicatorUse) {
  struct Case {
    const char* what;
    const char* field;
    std::function<void(eplbExchangeConfig_t&)> mutate;
  };
  const std::vector<Case> cases = {
      {"struct_size", "struct_size", [](eplbExchangeConfig_t& c) { c.struct_size -= 8; }},
      {"staging_bytes 0", "staging_bytes", [](eplbExchangeConfig_t& c) { c.staging_bytes = 0; }},
      {"device -2", "device", [](eplbExchangeConfig_t& c) { c.device = -2; }},
      {"rank = N", "rank", [](eplbExchangeConfig_t& c) { c.rank = 4; }},
      {"rank < 0", "rank", [](eplbExchangeConfig_t& c) { c.rank = -1; }},
      {"L = 0", "num_layers", [](eplbExchangeConfig_t& c) { c.num_layers = 0; }},
      {"P % N", "num_ranks", [](eplbExchangeConfig_t& c) { c.num_physical_experts = 10; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_physical_experts = 8;
    cfg.num_ranks = 4;
    cfg.staging_bytes = 1 << 20;
    c.mutate(cfg);
    eplbExchange_t out = Fake<eplbExchange_s>(0x4000);
    EXPECT_EQ(eplbExchangeCreate(&cfg, FakeComm(), &out), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbExchangeCreate", c.field);
    EXPECT_EQ(out, Fake<eplbExchange_s>(0x4000));
  }
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  cfg.num_layers = 2;
  cfg.num_physical_experts = 8;
  cfg.num_ranks = 4;
  cfg.staging_bytes = 1 << 20;
  eplbExchange_t out = Fake<eplbExchange_s>(0x4000);
  EXPECT_EQ(eplbExchangeCreate(&cfg, nullptr, &out), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeCreate", "comm");
  EXPECT_EQ(out, Fake<eplbExchange_s>(0x4000));
  EXPECT_EQ(eplbExchangeCreate(nullptr, FakeComm(), &out), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeCreate", "config");
  EXPECT_EQ(eplbExchangeCreate(&cfg, FakeComm(), nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeCreate", "out");
}

TEST(ReviewExchangeHandle, NullHandleIsRejectedAndStatsUntouched) {
  eplbTensorDesc_t t = {Fake<void>(), 16, 16};
  EXPECT_EQ(eplbExchangeRegisterLayer(nullptr, 0, &t, 1, 2), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeRegisterLayer", "ex");
  eplbExchangeStats_t stats = EPLB_EXCHANGE_STATS_INIT;
  stats.bytes_sent = 99;
  stats.num_layers_done = 77;
  const int32_t p[2] = {0, 1};
  EXPECT_EQ(eplbExchangeRun(nullptr, p, p, 0, 1, &stats, FakeStream()),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbExchangeRun", "ex");
  EXPECT_EQ(stats.bytes_sent, 99);
  EXPECT_EQ(stats.num_layers_done, 77);
  // The legacy default stream, refused before the handle is used (this fake
  // one is never dereferenced).
  for (cudaStream_t legacy : {cudaStream_t{nullptr}, cudaStreamLegacy}) {
    EXPECT_EQ(eplbExchangeRun(reinterpret_cast<eplbExchange_t>(uintptr_t{0x4000}), p, p, 0, 1,
                              &stats, legacy),
              EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbExchangeRun", "stream");
  }
  EXPECT_EQ(stats.bytes_sent, 99);
  EXPECT_EQ(eplbExchangeDestroy(nullptr), EPLB_SUCCESS);
  EXPECT_STREQ(eplbGetLastErrorDetail(), "");
}

// ---- state machine ----------------------------------------------------------

TEST(ReviewStateCreate, ChecksBeforeTheCommunicatorLeaveOutUntouched) {
  eplbStateConfig_t cfg = EPLB_STATE_CONFIG_INIT;
  cfg.num_layers = 2;
  cfg.num_logical_experts = 8;
  cfg.num_physical_experts = 8;
  cfg.num_ranks = 1;
  cfg.staging_bytes = 1 << 20;
  eplbState_t out = Fake<eplbState_s>(0x5000);
  EXPECT_EQ(eplbStateCreate(nullptr, FakeComm(), &out), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateCreate", "config");
  EXPECT_EQ(eplbStateCreate(&cfg, nullptr, &out), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateCreate", "comm");
  EXPECT_EQ(eplbStateCreate(&cfg, FakeComm(), nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateCreate", "out");
  cfg.struct_size = sizeof(eplbStateConfig_t) - 8;
  EXPECT_EQ(eplbStateCreate(&cfg, FakeComm(), &out), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateCreate", "struct_size");
  EXPECT_EQ(out, Fake<eplbState_s>(0x5000));
}

TEST(ReviewStateHandle, NullStateIsRejectedEverywhereAndOutputsUntouched) {
  eplbTensorDesc_t t = {Fake<void>(), 16, 16};
  EXPECT_EQ(eplbStateRegisterLayer(nullptr, 0, &t, 1), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateRegisterLayer", "state");
  EXPECT_EQ(eplbStateStep(nullptr, 0, FakeStream()), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateStep", "state");
  EXPECT_EQ(eplbStateRearrange(nullptr, FakeStream()), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateRearrange", "state");

  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  EXPECT_EQ(eplbStateGetDeviceMaps(nullptr, &maps), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateGetDeviceMaps", "state");
  EXPECT_EQ(maps.d_phy2log, nullptr);

  eplbStateStats_t stats = EPLB_STATE_STATS_INIT;
  stats.num_steps = 31;
  stats.last_device_ms[5] = 2.5;
  EXPECT_EQ(eplbStateGetStats(nullptr, &stats), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateGetStats", "state");
  EXPECT_EQ(stats.num_steps, 31);
  EXPECT_EQ(stats.last_device_ms[5], 2.5);

  int32_t placement[4] = {9, 9, 9, 9};
  EXPECT_EQ(eplbStateGetPlacement(nullptr, placement), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbStateGetPlacement", "state");
  for (int32_t v : placement) EXPECT_EQ(v, 9);

  EXPECT_EQ(eplbStateDestroy(nullptr), EPLB_SUCCESS);
  EXPECT_STREQ(eplbGetLastErrorDetail(), "");
}

// ---- kernels ----------------------------------------------------------------

struct RouteArgs {
  const void* topk = Fake<const void>();
  eplbIdType_t id_type = EPLB_ID_INT32;
  int64_t num_tokens = 64;
  int32_t top_k = 8;
  const int32_t* log2phy = Fake<const int32_t>();
  const int32_t* logcnt = Fake<const int32_t>();
  int32_t E = 16, P = 24;
  int32_t* phys = Fake<int32_t>();
  int32_t* load = Fake<int32_t>();
  cudaStream_t stream = FakeStream();
  eplbStatus_t Run() const {
    return eplbRouteCount(topk, id_type, num_tokens, nullptr, top_k, log2phy, logcnt, E, P, nullptr,
                          phys, load, nullptr, stream);
  }
};

TEST(ReviewKernelArgs, RouteCountRejectsEveryBadArgumentBeforeLaunching) {
  struct Case {
    const char* what;
    const char* field;
    std::function<void(RouteArgs&)> mutate;
  };
  const std::vector<Case> cases = {
      {"NULL ids", "d_topk_logical", [](RouteArgs& a) { a.topk = nullptr; }},
      {"NULL log2phy", "d_log2phy", [](RouteArgs& a) { a.log2phy = nullptr; }},
      {"NULL logcnt", "d_logcnt", [](RouteArgs& a) { a.logcnt = nullptr; }},
      {"NULL physical", "d_topk_physical", [](RouteArgs& a) { a.phys = nullptr; }},
      {"NULL load", "d_load_pass", [](RouteArgs& a) { a.load = nullptr; }},
      {"bad id type", "id_type", [](RouteArgs& a) { a.id_type = static_cast<eplbIdType_t>(2); }},
      {"T < 0", "num_tokens", [](RouteArgs& a) { a.num_tokens = -1; }},
      {"K = 0", "top_k", [](RouteArgs& a) { a.top_k = 0; }},
      {"T*K = 2^31", "num_tokens", [](RouteArgs& a) { a.num_tokens = int64_t{1} << 28; }},
      {"T*K overflows int64", "num_tokens",
       [](RouteArgs& a) {
         a.num_tokens = std::numeric_limits<int64_t>::max() / 2;
         a.top_k = 4;
       }},
      {"E = 0", "num_logical_experts", [](RouteArgs& a) { a.E = 0; }},
      {"E = 1025", "num_logical_experts",
       [](RouteArgs& a) {
         a.E = 1025;
         a.P = 2048;
       }},
      {"P < E", "num_physical_experts", [](RouteArgs& a) { a.P = 15; }},
      {"P = 4097", "num_physical_experts", [](RouteArgs& a) { a.P = 4097; }},
      {"stream 0", "stream", [](RouteArgs& a) { a.stream = nullptr; }},
      {"legacy stream", "stream", [](RouteArgs& a) { a.stream = cudaStreamLegacy; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    RouteArgs a;
    c.mutate(a);
    EXPECT_EQ(a.Run(), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbRouteCount", c.field);
  }
  // "T = 0 is a no-op": success with nothing launched (no GPU needed).
  RouteArgs a;
  a.num_tokens = 0;
  a.stream = cudaStreamPerThread;
  EXPECT_EQ(a.Run(), EPLB_SUCCESS) << eplbGetLastErrorDetail();
}

TEST(ReviewKernelArgs, CountAndWindowCallsRejectBadArguments) {
  int32_t* d = Fake<int32_t>();
  int64_t* d64 = Fake<int64_t>();
  const cudaStream_t s = FakeStream();
  EXPECT_EQ(eplbCount(nullptr, EPLB_ID_INT32, 4, nullptr, 2, 8, nullptr, d, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbCount", "d_topk_physical");
  EXPECT_EQ(eplbCount(d, EPLB_ID_INT64, 4, nullptr, 2, 0, nullptr, d, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbCount", "num_physical_experts");
  EXPECT_EQ(eplbCount(d, EPLB_ID_INT64, 4, nullptr, 2, 8, nullptr, d, nullptr, cudaStreamLegacy),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbCount", "stream");

  EXPECT_EQ(eplbWindowUpdate(d, d, 2, 8, 8, 0, d, d64, d, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "window_size");
  EXPECT_EQ(eplbWindowUpdate(d, d, 129, 8, 8, 4, d, d64, d, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "num_layers");
  EXPECT_EQ(eplbWindowUpdate(d, d, 2, 8, 7, 4, d, d64, d, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "num_physical_experts");
  EXPECT_EQ(eplbWindowUpdate(d, d, 2, 8, 8, 4, d, d64, nullptr, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "d_ring_state");
  EXPECT_EQ(eplbWindowReadout(d64, 2, 1025, d64, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReadout", "num_logical_experts");
  EXPECT_EQ(eplbWindowReadout(d64, 2, 8, nullptr, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReadout", "d_load");
  EXPECT_EQ(eplbWindowReduce(d, 0, 2, 8, d64, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReduce", "window_size");
  EXPECT_EQ(eplbWindowReduce(d, 3, 0, 8, d64, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReduce", "num_layers");
  EXPECT_EQ(eplbWindowReduce(d, 3, 2, 8, d64, nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReduce", "stream");
}

// Outputs that share memory with another argument, and buffers not aligned
// to their element size, are rejected before any launch (the kernels read
// their inputs while they write).
// The early-launch mode (eplbSetEarlyLaunch / eplbGetEarlyLaunch): its
// default comes from EPLB_PDL ("0" off, "1" on, unset or anything else
// auto; ctest runs this test also with EPLB_PDL=0, 1 and "yes"), the call
// overrides it, a bad value or a null output is refused and changes
// nothing. Host only.
TEST(ReviewKernelArgs, EarlyLaunchSettingRoundTripsAndRejectsBadValues) {
  const char* env = std::getenv("EPLB_PDL");
  const std::string e = env == nullptr ? "" : env;
  const int from_env = e == "0"   ? EPLB_EARLY_LAUNCH_OFF
                       : e == "1" ? EPLB_EARLY_LAUNCH_ON
                                  : EPLB_EARLY_LAUNCH_AUTO;
  EXPECT_EQ(EPLB_EARLY_LAUNCH_OFF, 0);
  EXPECT_EQ(EPLB_EARLY_LAUNCH_ON, 1);
  EXPECT_EQ(EPLB_EARLY_LAUNCH_AUTO, 2);
  int mode = -7;
  ASSERT_EQ(eplbGetEarlyLaunch(&mode), EPLB_SUCCESS);
  EXPECT_EQ(mode, from_env);
  for (int v : {EPLB_EARLY_LAUNCH_ON, EPLB_EARLY_LAUNCH_OFF, EPLB_EARLY_LAUNCH_AUTO,
                EPLB_EARLY_LAUNCH_ON}) {
    ASSERT_EQ(eplbSetEarlyLaunch(v), EPLB_SUCCESS);
    ASSERT_EQ(eplbGetEarlyLaunch(&mode), EPLB_SUCCESS);
    EXPECT_EQ(mode, v);
  }
  for (int bad : {3, -1, 100}) {
    EXPECT_EQ(eplbSetEarlyLaunch(bad), EPLB_ERROR_INVALID_ARGUMENT);
    ExpectDetail("eplbSetEarlyLaunch", "mode");
    ASSERT_EQ(eplbGetEarlyLaunch(&mode), EPLB_SUCCESS);
    EXPECT_EQ(mode, EPLB_EARLY_LAUNCH_ON);  // unchanged
  }
  EXPECT_EQ(eplbGetEarlyLaunch(nullptr), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbGetEarlyLaunch", "mode");
  ASSERT_EQ(eplbSetEarlyLaunch(from_env), EPLB_SUCCESS);
}

TEST(ReviewKernelArgs, OverlappingOrMisalignedBuffersAreRejected) {
  const cudaStream_t s = FakeStream();
  // Distinct fake buffers; RouteArgs' T * K = 512 ids, E = 16, P = 24.
  auto route = [&](uintptr_t topk, uintptr_t phys, uintptr_t load, eplbIdType_t type) {
    RouteArgs a;
    a.topk = Fake<const void>(topk);
    a.id_type = type;
    a.log2phy = Fake<const int32_t>(0x100000);
    a.logcnt = Fake<const int32_t>(0x200000);
    a.phys = Fake<int32_t>(phys);
    a.load = Fake<int32_t>(load);
    a.stream = s;
    return a.Run();
  };
  // The output ids written over the input ids (an in-place call).
  EXPECT_EQ(route(0x300000, 0x300000, 0x500000, EPLB_ID_INT32), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbRouteCount", "d_topk_logical and d_topk_physical overlap");
  // The last output id on the first counter.
  EXPECT_EQ(route(0x300000, 0x400000, 0x400000 + 511 * 4, EPLB_ID_INT32),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbRouteCount", "d_topk_physical and d_load_pass overlap");
  // int64 ids on a 4-byte boundary.
  EXPECT_EQ(route(0x300004, 0x400000, 0x500000, EPLB_ID_INT64), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbRouteCount", "d_topk_logical is not 8-byte aligned");
  // The counters inside the table.
  EXPECT_EQ(route(0x300000, 0x400000, 0x100000 + 8, EPLB_ID_INT32), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbRouteCount", "d_log2phy and d_load_pass overlap");

  int32_t* ids = Fake<int32_t>(0x300000);
  EXPECT_EQ(eplbCount(ids, EPLB_ID_INT32, 4, nullptr, 2, 8, nullptr, ids + 7, nullptr, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbCount", "d_topk_physical and d_load_pass overlap");
  EXPECT_EQ(eplbCount(ids, EPLB_ID_INT32, 4, nullptr, 2, 8, nullptr, Fake<int32_t>(0x400000),
                      Fake<unsigned long long>(0x500004), s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbCount", "d_invalid_count is not 8-byte aligned");

  // L = 2, E = 8, P = 8, W = 4: the window is 256 bytes.
  int32_t* p2l = Fake<int32_t>(0x100000);
  int32_t* pass = Fake<int32_t>(0x200000);
  int32_t* win = Fake<int32_t>(0x300000);
  int64_t* sum = Fake<int64_t>(0x400000);
  int32_t* ring = Fake<int32_t>(0x500000);
  EXPECT_EQ(
      eplbWindowUpdate(p2l, pass, 2, 8, 8, 4, win, reinterpret_cast<int64_t*>(win + 63), ring, s),
      EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "is not 8-byte aligned");
  EXPECT_EQ(
      eplbWindowUpdate(p2l, pass, 2, 8, 8, 4, win, reinterpret_cast<int64_t*>(win + 62), ring, s),
      EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "d_window and d_window_sum overlap");
  EXPECT_EQ(eplbWindowUpdate(p2l, p2l, 2, 8, 8, 4, win, sum, ring, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowUpdate", "d_phy2log and d_load_pass overlap");
  EXPECT_EQ(eplbWindowReadout(sum, 2, 8, sum + 15, s), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReadout", "d_window_sum and d_load overlap");
  EXPECT_EQ(eplbWindowReduce(win, 4, 2, 8, reinterpret_cast<int64_t*>(win + 62), s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbWindowReduce", "d_window and d_load overlap");
}

TEST(ReviewKernelArgs, GpuPlannerSizingAndChecksNeedNoGpu) {
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  cfg.num_layers = 2;
  cfg.num_logical_experts = 16;
  cfg.num_physical_experts = 24;
  cfg.num_groups = 4;
  cfg.num_nodes = 2;
  cfg.num_ranks = 8;
  size_t ws = 0;
  ASSERT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws), EPLB_SUCCESS) << eplbGetLastErrorDetail();
  EXPECT_GT(ws, 0u);

  size_t untouched = kPoisonSize;
  eplbPlanConfig_t bad = cfg;
  bad.num_ranks = 5;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&bad, &untouched), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpuWorkspaceSize", "num_ranks");
  bad = cfg;
  bad.policy = EPLB_POLICY_CHURN_AWARE;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&bad, &untouched), EPLB_ERROR_NOT_SUPPORTED);
  bad = cfg;
  bad.struct_size = 16;
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&bad, &untouched), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpuWorkspaceSize", "struct_size");
  bad = cfg;
  bad.policy = static_cast<eplbPolicy_t>(9);
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&bad, &untouched), EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpuWorkspaceSize", "policy");
  EXPECT_EQ(untouched, kPoisonSize);
  EXPECT_EQ(eplbPlanComputeGpuWorkspaceSize(&cfg, nullptr), EPLB_ERROR_INVALID_ARGUMENT);

  const int64_t* load = Fake<const int64_t>();
  const int32_t* old = Fake<const int32_t>();
  int32_t* out = Fake<int32_t>();
  void* w = Fake<void>(0x10000);  // 256-byte aligned
  const cudaStream_t s = FakeStream();
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, load, nullptr, out, out, nullptr, w, ws - 1, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "workspace_bytes");
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, load, nullptr, out, out, nullptr, Fake<void>(0x10010), ws, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "d_workspace");
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, nullptr, nullptr, out, out, nullptr, w, ws, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "d_load");
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, load, nullptr, out, out, nullptr, w, ws, nullptr),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "stream");
  // FULL migration with an old placement runs on the GPU up to 64 ranks.
  eplbPlanConfig_t wide = cfg;
  wide.num_logical_experts = 128;
  wide.num_physical_experts = 128;
  wide.num_groups = 1;
  wide.num_nodes = 1;
  wide.num_ranks = 128;
  size_t ws_wide = 0;
  ASSERT_EQ(eplbPlanComputeGpuWorkspaceSize(&wide, &ws_wide), EPLB_SUCCESS);
  EXPECT_EQ(eplbPlanComputeGpu(&wide, load, old, out, out, nullptr, w, ws_wide, s),
            EPLB_ERROR_NOT_SUPPORTED);
  ExpectDetail("eplbPlanComputeGpu", "EPLB_MIGRATION_FULL");
  bad = cfg;
  bad.migration = static_cast<eplbMigration_t>(5);
  EXPECT_EQ(eplbPlanComputeGpu(&bad, load, nullptr, out, out, nullptr, w, ws, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "migration");
  // Outputs in the same memory, and the workspace over the load.
  EXPECT_EQ(
      eplbPlanComputeGpu(&cfg, Fake<const int64_t>(0x300000), nullptr, out, out, nullptr, w, ws, s),
      EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "d_phy2log and d_logcnt overlap");
  EXPECT_EQ(eplbPlanComputeGpu(&cfg, Fake<const int64_t>(0x10000 + 256), nullptr,
                               Fake<int32_t>(0x100000), Fake<int32_t>(0x200000), nullptr, w, ws, s),
            EPLB_ERROR_INVALID_ARGUMENT);
  ExpectDetail("eplbPlanComputeGpu", "d_load and d_workspace overlap");
}

}  // namespace
