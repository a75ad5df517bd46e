// Benchmarks of the device kernels, each with its baseline measured in the
// same process on the same stream (CUDA events, UseManualTime):
//   route+count on 64 Mi ids vs a device-to-device cudaMemcpy of the same
//   bytes (ids read + physical ids written); decode-size route+count inside a
//   CUDA graph vs a graph of empty kernels (random and planned placements);
//   one 58-layer decode step (58 route+count + window update) vs a graph of
//   59 empty kernels; route+count fused into a stand-in engine kernel with
//   the public device functions (warp recipe, EplbBlockRoute) vs that
//   engine kernel alone and followed by eplbRouteCount; count-only on 64 Mi
//   ids vs the copy, and at decode sizes vs empty kernels; window update /
//   read-out / reduce at W=1000, 58 x 256; the GPU planner on the
//   DeepSeek-V3 shape vs the host planner.
// Counters: GB/s, and ratio counters (vs_memcpy, us_over_empty, vs_host).
// The early-launch mode (EPLB_PDL, eplbSetEarlyLaunch) applies when a graph
// is captured, so the decode graphs are captured and timed in each mode in
// the same run: *_off, *_auto (the default), *_on; the unsuffixed counters
// are the process's mode (counter mode: 0 off, 1 on, 2 auto). The decode
// graphs also report us_over_empty_pdl (against empty kernels launched
// early), the fused benchmark us_separate_over_early_engine (an engine
// kernel launched early).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "eplb/eplb.h"
#include "bench_check.h"
#include "bench_ids.h"
#include "kernels/enqueue.cuh"
#include "recipe_route.cuh"

namespace {

struct Ctx {
  cudaStream_t stream;
  cudaEvent_t a, b;
  Ctx() {
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~Ctx() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(stream);
  }
  // Seconds of one call of f, on the stream.
  double Time(const std::function<void()>& f) {
    CK(cudaEventRecord(a, stream));
    f();
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms * 1e-3;
  }
  double Mean(const std::function<void()>& f, int reps) {
    f();  // warm
    double s = 0;
    for (int i = 0; i < reps; ++i) s += Time(f);
    return s / reps;
  }
  // An instantiated CUDA graph of what `enqueue` puts on the stream.
  cudaGraphExec_t Capture(const std::function<void()>& enqueue) {
    cudaGraph_t g;
    cudaGraphExec_t x;
    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue();
    CK(cudaStreamEndCapture(stream, &g));
    CK(cudaGraphInstantiate(&x, g, 0));
    CK(cudaGraphDestroy(g));
    return x;
  }
  // The same, captured with eplb's early-launch mode set to `mode`
  // (EPLB_EARLY_LAUNCH_*), then the process's mode restored.
  cudaGraphExec_t CaptureInMode(int mode, const std::function<void()>& enqueue) {
    int before = 0;
    EK(eplbGetEarlyLaunch(&before));
    EK(eplbSetEarlyLaunch(mode));
    cudaGraphExec_t x = Capture(enqueue);
    EK(eplbSetEarlyLaunch(before));
    return x;
  }
  // Mean seconds of a graph of `enqueue` captured in each early-launch mode
  // (off, on, auto; indexed by EPLB_EARLY_LAUNCH_*), `reps` launches each.
  std::vector<double> MeanPerMode(const std::function<void()>& enqueue, int reps) {
    std::vector<double> t(3);
    for (int mode : {EPLB_EARLY_LAUNCH_OFF, EPLB_EARLY_LAUNCH_ON, EPLB_EARLY_LAUNCH_AUTO}) {
      cudaGraphExec_t x = CaptureInMode(mode, enqueue);
      t[static_cast<size_t>(mode)] = Mean([&] { CK(cudaGraphLaunch(x, stream)); }, reps);
      CK(cudaGraphExecDestroy(x));
    }
    return t;
  }
  // Mean seconds of `op`, timed in the benchmark loop (its time is the
  // iteration's), after `warm` untimed runs.
  double LoopMean(benchmark::State& state, const std::function<void()>& op, int warm) {
    for (int i = 0; i < warm; ++i) op();
    double total = 0;
    int64_t iters = 0;
    for (auto _ : state) {
      const double t = Time(op);
      state.SetIterationTime(t);
      total += t;
      ++iters;
    }
    return total / iters;
  }
  // Mean seconds of `op`, timed in the benchmark loop (its time is the
  // iteration's), and of `baseline`, timed right after each op, so that
  // clock and thermal drift hit both alike.
  std::pair<double, double> TimeWithBaseline(benchmark::State& state,
                                             const std::function<void()>& op,
                                             const std::function<void()>& baseline) {
    op();
    baseline();
    double total = 0, total_base = 0;
    int64_t iters = 0;
    for (auto _ : state) {
      const double t = Time(op);
      state.SetIterationTime(t);
      total += t;
      total_base += Time(baseline);
      ++iters;
    }
    return {total / iters, total_base / iters};
  }
  // Seconds per launch of `enqueue` (one launch) in a CUDA graph of `reps`
  // of them, timed in the benchmark loop, and of an empty kernel in a graph
  // of `reps` empty kernels, timed before; sets the counters us_per_launch,
  // us_empty_launch and us_over_empty.
  void GraphPerLaunch(benchmark::State& state, int reps, const std::function<void()>& enqueue);
};

__global__ void EmptyKernel() {}

// Programmatic dependent launch (eplb launches its decode-size route and
// count kernels so where its early-launch mode says): the cheapest kernel
// that keeps stream order when launched early waits for the kernel before
// it, then lets the next one launch.
__global__ void EmptyPdlKernel() {
  eplb::GridDependencyWait();
  eplb::GridDependentsLaunch();
}

// The process's early-launch mode (EPLB_PDL or eplbSetEarlyLaunch; it
// takes effect on a device of compute capability 9.0 or more, as all the
// benchmark machines are).
int EarlyLaunchMode() {
  int mode = 0;
  EK(eplbGetEarlyLaunch(&mode));
  return mode;
}

// The counters `name`_off, _on and _auto: (t[mode] - base) * scale.
void ModeCounters(benchmark::State& state, const char* name, const std::vector<double>& t,
                  double base, double scale) {
  const char* suffix[3] = {"_off", "_on", "_auto"};
  for (int m = 0; m < 3; ++m)
    state.counters[std::string(name) + suffix[m]] = (t[static_cast<size_t>(m)] - base) * scale;
}

void Ctx::GraphPerLaunch(benchmark::State& state, int reps, const std::function<void()>& enqueue) {
  auto all = [&] {
    for (int i = 0; i < reps; ++i) enqueue();
  };
  cudaGraphExec_t gx = Capture(all);
  cudaGraphExec_t ge = Capture([&] {
    for (int i = 0; i < reps; ++i) EmptyKernel<<<1, 32, 0, stream>>>();
  });
  cudaGraphExec_t gp = Capture([&] {
    for (int i = 0; i < reps; ++i)
      CK(eplb::EnqueueKernelPdl(true, EmptyPdlKernel, dim3(1), dim3(32), 0, stream));
  });
  const double t_empty = Mean([&] { CK(cudaGraphLaunch(ge, stream)); }, 50);
  const double t_empty_pdl = Mean([&] { CK(cudaGraphLaunch(gp, stream)); }, 50);
  const std::vector<double> t_mode = MeanPerMode(all, 30);
  // One iteration = one graph of `reps` launches.
  const double t_op = LoopMean(
      state, [&] { CK(cudaGraphLaunch(gx, stream)); }, 4);
  state.counters["us_per_launch"] = t_op / reps * 1e6;
  state.counters["us_empty_launch"] = t_empty / reps * 1e6;
  state.counters["us_over_empty"] = (t_op - t_empty) / reps * 1e6;
  state.counters["ratio_vs_empty"] = t_op / t_empty;
  // The same against empty kernels launched early; per early-launch mode.
  state.counters["us_over_empty_pdl"] = (t_op - t_empty_pdl) / reps * 1e6;
  ModeCounters(state, "us_over_empty", t_mode, t_empty, 1e6 / reps);
  state.counters["mode"] = EarlyLaunchMode();
  cudaGraphExecDestroy(gx);
  cudaGraphExecDestroy(ge);
  cudaGraphExecDestroy(gp);
}

struct Placement {
  std::vector<int32_t> phy2log, log2phy, logcnt;
};

Placement MakePlacement(int32_t L, int32_t E, int32_t P, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Placement pl;
  const int32_t R1 = P - E + 1;
  for (int32_t l = 0; l < L; ++l) {
    std::vector<int32_t> p2l(P), cnt(E, 0), l2p(static_cast<size_t>(E) * R1, -1);
    for (int32_t p = 0; p < P; ++p) p2l[p] = p < E ? p : static_cast<int32_t>(rng() % E);
    for (int32_t p = 0; p < P; ++p) l2p[static_cast<size_t>(p2l[p]) * R1 + cnt[p2l[p]]++] = p;
    pl.phy2log.insert(pl.phy2log.end(), p2l.begin(), p2l.end());
    pl.logcnt.insert(pl.logcnt.end(), cnt.begin(), cnt.end());
    pl.log2phy.insert(pl.log2phy.end(), l2p.begin(), l2p.end());
  }
  return pl;
}

template <typename T>
T* Dev(const std::vector<T>& h) {
  T* d = nullptr;
  CK(cudaMalloc(&d, h.size() * sizeof(T)));
  CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Route + count over T x top-8 int32 ids, 256 -> 288: 64 Mi ids (hash path)
// and 4 Mi - 8 ids (rank path, the largest below EPLB_ROUTE_HASH_MIN_ITEMS).
void BM_RouteCountLarge(benchmark::State& state) {
  const double zipf = state.range(0) / 10.0;
  const int64_t T = state.range(1);  // 8 Mi: hash path; 512 Ki - 1: rank path (528 segments)
  const int32_t K = 8, E = 256, P = 288;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  Placement pl = MakePlacement(1, E, P, 1);
  int32_t* d_ids = Dev(Ids(n, E, zipf, 2));
  int32_t *d_out, *d_load, *d_l2p = Dev(pl.log2phy), *d_cnt = Dev(pl.logcnt);
  CK(cudaMalloc(&d_out, n * 4));
  CK(cudaMalloc(&d_load, P * 4));
  CK(cudaMemset(d_load, 0, P * 4));
  auto route = [&] {
    EK(eplbRouteCount(d_ids, EPLB_ID_INT32, T, nullptr, K, d_l2p, d_cnt, E, P, nullptr, d_out,
                      d_load, nullptr, c.stream));
  };
  auto copy = [&] { CK(cudaMemcpyAsync(d_out, d_ids, n * 4, cudaMemcpyDeviceToDevice, c.stream)); };
  const auto [t_route, t_copy] = c.TimeWithBaseline(state, route, copy);
  const double bytes = 8.0 * n;  // 4 B read + 4 B written per id
  state.counters["route_GBps"] = bytes / t_route * 1e-9;
  state.counters["memcpy_GBps"] = bytes / t_copy * 1e-9;
  state.counters["vs_memcpy"] = t_copy / t_route;
  state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
  cudaFree(d_ids);
  cudaFree(d_out);
  cudaFree(d_load);
  cudaFree(d_l2p);
  cudaFree(d_cnt);
}
BENCHMARK(BM_RouteCountLarge)
    ->Args({0, 8 << 20})
    ->Args({12, 8 << 20})
    ->Args({0, (1 << 19) - 1})
    ->Args({12, (1 << 19) - 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Count-only (eplbCount) over T x top-8 int32 physical ids, 288 slots, 64 Mi
// ids, uniform and Zipf(1.2): bytes = ids read; the baseline is a
// device-to-device copy of the same ids (their bytes read + written), timed
// right after each count. vs_memcpy = count's bytes per second over the
// copy's.
void BM_CountLarge(benchmark::State& state) {
  const double zipf = state.range(0) / 10.0;
  const int64_t T = 8 << 20;
  const int32_t K = 8, P = 288;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  int32_t* d_ids = Dev(Ids(n, P, zipf, 2));
  int32_t *d_out, *d_load;
  CK(cudaMalloc(&d_out, n * 4));
  CK(cudaMalloc(&d_load, P * 4));
  CK(cudaMemset(d_load, 0, P * 4));
  auto count = [&] {
    EK(eplbCount(d_ids, EPLB_ID_INT32, T, nullptr, K, P, nullptr, d_load, nullptr, c.stream));
  };
  auto copy = [&] { CK(cudaMemcpyAsync(d_out, d_ids, n * 4, cudaMemcpyDeviceToDevice, c.stream)); };
  const auto [t_count, t_copy] = c.TimeWithBaseline(state, count, copy);
  const double count_gbps = 4.0 * n / t_count * 1e-9;
  const double copy_gbps = 8.0 * n / t_copy * 1e-9;
  state.counters["count_GBps"] = count_gbps;
  state.counters["memcpy_GBps"] = copy_gbps;
  state.counters["vs_memcpy"] = count_gbps / copy_gbps;
  state.SetBytesProcessed(static_cast<int64_t>(4.0 * n) * state.iterations());
  cudaFree(d_ids);
  cudaFree(d_out);
  cudaFree(d_load);
}
BENCHMARK(BM_CountLarge)->Arg(0)->Arg(12)->UseManualTime()->Unit(benchmark::kMicrosecond);

// Count-only at decode sizes, T x top-8 int32 (second argument 1: int64)
// physical ids with a device token count: a graph of 64 eplbCount launches
// vs a graph of 64 empty kernels; us_over_empty per launch.
void BM_CountDecodeGraph(benchmark::State& state) {
  const int64_t T = state.range(0);
  const bool ids64 = state.range(1) != 0;
  const int32_t K = 8, P = 288, reps = 64;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  const std::vector<int32_t> ids = Ids(n, P, 1.2, 4);
  void* d_ids = ids64 ? static_cast<void*>(Dev(std::vector<int64_t>(ids.begin(), ids.end())))
                      : static_cast<void*>(Dev(ids));
  int32_t* d_load;
  CK(cudaMalloc(&d_load, P * 4));
  CK(cudaMemset(d_load, 0, P * 4));
  int32_t* d_valid = Dev(std::vector<int32_t>{static_cast<int32_t>(T)});
  c.GraphPerLaunch(state, reps, [&] {
    EK(eplbCount(d_ids, ids64 ? EPLB_ID_INT64 : EPLB_ID_INT32, T, d_valid, K, P, nullptr, d_load,
                 nullptr, c.stream));
  });
  for (void* p : {d_ids, static_cast<void*>(d_load), static_cast<void*>(d_valid)}) cudaFree(p);
}
BENCHMARK(BM_CountDecodeGraph)
    ->ArgsProduct({{64, 512, 1024, 8192}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Planner config of the DeepSeek-V3 shape: L layers, 256 -> 288 experts,
// 8 groups, 4 nodes, 32 GPUs.
eplbPlanConfig_t Dsv3PlanConfig(int32_t L) {
  eplbPlanConfig_t cfg = EPLB_PLAN_CONFIG_INIT;
  cfg.num_layers = L;
  cfg.num_logical_experts = 256;
  cfg.num_physical_experts = 288;
  cfg.num_groups = 8;
  cfg.num_nodes = 4;
  cfg.num_ranks = 32;
  cfg.migration = EPLB_MIGRATION_NONE;
  return cfg;
}

// The host planner's placement of one DeepSeek-V3-shaped layer for the load
// of `sample`: the hot experts hold the most replicas, as in service.
Placement PlannedPlacement(const std::vector<int32_t>& sample) {
  const eplbPlanConfig_t cfg = Dsv3PlanConfig(1);
  const int32_t E = cfg.num_logical_experts, P = cfg.num_physical_experts;
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  for (int32_t v : sample) ++load[static_cast<size_t>(v)];
  Placement pl;
  pl.phy2log.resize(static_cast<size_t>(P));
  pl.logcnt.resize(static_cast<size_t>(E));
  pl.log2phy.resize(static_cast<size_t>(E) * (P - E + 1));
  EK(eplbPlanCompute(&cfg, load.data(), nullptr, pl.phy2log.data(), pl.logcnt.data(),
                     pl.log2phy.data(), nullptr));
  return pl;
}

// Per-launch cost at decode sizes: a graph of 64 route+count launches vs a
// graph of 64 empty kernels; us_over_empty = (route - empty) / 64. Second
// argument: 0 a random placement (redundant slots to random experts), 1
// the planner's placement for the ids' own distribution (its hot experts
// have many replicas, so their items use replicas past the kernel's staged
// table columns).
void BM_RouteCountDecodeGraph(benchmark::State& state) {
  const int64_t T = state.range(0);
  const bool planned = state.range(1) != 0;
  const int32_t K = 8, E = 256, P = 288, reps = 64;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  // Ids with one seed share one expert permutation, whatever their count.
  Placement pl =
      planned ? PlannedPlacement(Ids(size_t{1} << 20, E, 1.2, 4)) : MakePlacement(1, E, P, 3);
  state.counters["max_replicas"] = *std::max_element(pl.logcnt.begin(), pl.logcnt.end());
  int32_t* d_ids = Dev(Ids(n, E, 1.2, 4));
  int32_t *d_out, *d_load, *d_l2p = Dev(pl.log2phy), *d_cnt = Dev(pl.logcnt);
  int32_t* d_valid = Dev(std::vector<int32_t>{static_cast<int32_t>(T)});
  int32_t* d_rec = Dev(std::vector<int32_t>{1});
  CK(cudaMalloc(&d_out, n * 4));
  CK(cudaMalloc(&d_load, P * 4));
  CK(cudaMemset(d_load, 0, P * 4));
  c.GraphPerLaunch(state, reps, [&] {
    EK(eplbRouteCount(d_ids, EPLB_ID_INT32, T, d_valid, K, d_l2p, d_cnt, E, P, d_rec, d_out, d_load,
                      nullptr, c.stream));
  });
  for (void* p : {(void*)d_ids, (void*)d_out, (void*)d_load, (void*)d_l2p, (void*)d_cnt,
                  (void*)d_valid, (void*)d_rec})
    cudaFree(p);
}
BENCHMARK(BM_RouteCountDecodeGraph)
    ->ArgsProduct({{64, 512, 1024, 8192}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// One decode step of a 58-layer model: 58 route+count + window update in one
// graph, vs a graph of 59 empty kernels.
void BM_DecodeStepGraph(benchmark::State& state) {
  const int64_t T = state.range(0);
  const int32_t L = 58, K = 8, E = 256, P = 288, W = 1000;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  Placement pl = MakePlacement(L, E, P, 5);
  int32_t* d_ids = Dev(Ids(n * L, E, 1.2, 6));
  int32_t *d_out, *d_pass, *d_win, *d_state;
  int64_t* d_sum;
  int32_t *d_l2p = Dev(pl.log2phy), *d_cnt = Dev(pl.logcnt), *d_p2l = Dev(pl.phy2log);
  int32_t* d_valid = Dev(std::vector<int32_t>{static_cast<int32_t>(T)});
  int32_t* d_rec = Dev(std::vector<int32_t>{1});
  CK(cudaMalloc(&d_out, n * L * 4));
  CK(cudaMalloc(&d_pass, static_cast<size_t>(L) * P * 4));
  CK(cudaMalloc(&d_win, static_cast<size_t>(W) * L * E * 4));
  CK(cudaMalloc(&d_sum, static_cast<size_t>(L) * E * 8));
  CK(cudaMalloc(&d_state, 8));
  CK(cudaMemset(d_pass, 0, static_cast<size_t>(L) * P * 4));
  CK(cudaMemset(d_win, 0, static_cast<size_t>(W) * L * E * 4));
  CK(cudaMemset(d_sum, 0, static_cast<size_t>(L) * E * 8));
  CK(cudaMemset(d_state, 0, 8));
  const int32_t R1 = P - E + 1;
  auto enqueue = [&](bool empty) {
    for (int32_t l = 0; l < L; ++l) {
      if (empty) {
        EmptyKernel<<<1, 32, 0, c.stream>>>();
      } else {
        EK(eplbRouteCount(d_ids + n * l, EPLB_ID_INT32, T, d_valid, K,
                          d_l2p + static_cast<size_t>(l) * E * R1,
                          d_cnt + static_cast<size_t>(l) * E, E, P, d_rec, d_out + n * l,
                          d_pass + static_cast<size_t>(l) * P, nullptr, c.stream));
      }
    }
    if (empty) {
      EmptyKernel<<<1, 32, 0, c.stream>>>();
    } else {
      EK(eplbWindowUpdate(d_p2l, d_pass, L, E, P, W, d_win, d_sum, d_state, c.stream));
    }
  };
  cudaGraphExec_t gr = c.Capture([&] { enqueue(false); }), ge = c.Capture([&] { enqueue(true); });
  const double t_empty = c.Mean([&] { CK(cudaGraphLaunch(ge, c.stream)); }, 50);
  const std::vector<double> t_mode = c.MeanPerMode([&] { enqueue(false); }, 30);
  const double t_step = c.LoopMean(
      state, [&] { CK(cudaGraphLaunch(gr, c.stream)); }, 4);
  state.counters["us_step"] = t_step * 1e6;
  state.counters["us_empty59"] = t_empty * 1e6;
  state.counters["ratio_vs_empty"] = t_step / t_empty;
  ModeCounters(state, "us_step", t_mode, 0, 1e6);
  state.counters["mode"] = EarlyLaunchMode();
  cudaGraphExecDestroy(gr);
  cudaGraphExecDestroy(ge);
  for (void* p :
       {(void*)d_ids, (void*)d_out, (void*)d_pass, (void*)d_win, (void*)d_state, (void*)d_sum,
        (void*)d_l2p, (void*)d_cnt, (void*)d_p2l, (void*)d_valid, (void*)d_rec})
    cudaFree(p);
}
BENCHMARK(BM_DecodeStepGraph)->Arg(64)->Arg(512)->UseManualTime()->Unit(benchmark::kMicrosecond);

// Stand-in for an engine's top-k kernel: block (s, b) of `threads` threads
// writes the ids of items [s*Z + b*threads, ...) of segment s (Z: the
// route segment length), one item per thread per step.
template <bool kPdl = false>
__global__ void EngineStandInKernel(const int32_t* ids, int32_t* out, int64_t cap,
                                    int64_t segment_items) {
  if constexpr (kPdl) {  // an engine kernel written for early launch
    eplb::GridDependencyWait();
    eplb::GridDependentsLaunch();
  }
  const int64_t seg_end =
      (blockIdx.x + 1) * segment_items < cap ? (blockIdx.x + 1) * segment_items : cap;
  const int64_t begin = blockIdx.x * segment_items + int64_t{blockIdx.y} * blockDim.x;
  const int64_t end =
      gridDim.y == 1 ? seg_end : (begin + blockDim.x < seg_end ? begin + blockDim.x : seg_end);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) out[i] = ids[i];
}

// Decode-size route+count fused into an engine kernel with the functions of
// eplb_device.cuh (recipe_route.cuh), each a graph of 64 launches, per
// launch over the same engine kernel without routing: the warp recipe (one
// warp per segment) and EplbBlockRoute (16 warps, one item per thread,
// counting in shared memory first above 512 items as eplbRouteCount does);
// and, for comparison, the engine kernel followed by eplbRouteCount, with
// the engine kernel launched normally and launched early (programmatic
// dependent launch; it waits first thing and then lets the next kernel
// launch: an engine written for early launch, where eplbRouteCount's own
// early launch on (EPLB_PDL=1) pays off).
void BM_FusedRouteDecodeGraph(benchmark::State& state) {
  const int64_t T = state.range(0);
  const int32_t K = 8, E = 256, P = 288, reps = 64;
  const size_t n = static_cast<size_t>(T * K);
  Ctx c;
  Placement pl = MakePlacement(1, E, P, 3);
  int32_t* d_ids = Dev(Ids(n, E, 1.2, 4));
  int32_t *d_mid, *d_out, *d_load, *d_l2p = Dev(pl.log2phy), *d_cnt = Dev(pl.logcnt);
  int32_t* d_valid = Dev(std::vector<int32_t>{static_cast<int32_t>(T)});
  int32_t* d_rec = Dev(std::vector<int32_t>{1});
  CK(cudaMalloc(&d_mid, n * 4));  // the engine kernel's ids, routed by eplbRouteCount
  CK(cudaMalloc(&d_out, n * 4));
  CK(cudaMalloc(&d_load, P * 4));
  CK(cudaMemset(d_load, 0, P * 4));
  int32_t segs = 0;
  int64_t z = 0;
  eplb_test::RecipeSegments(static_cast<int64_t>(n), &segs, &z);
  const dim3 block_grid(segs, static_cast<unsigned>((z + 511) / 512));
  // 0 engine (warp shape), 1 warp recipe, 2 engine (block shape),
  // 3 EplbBlockRoute, 4 engine (block shape) + eplbRouteCount, 5 engine
  // launched early, 6 engine launched early + eplbRouteCount.
  auto capture_into = [&](int mode) {
    for (int i = 0; i < reps; ++i) {
      if (mode == 0)
        EngineStandInKernel<false>
            <<<segs, 32, 0, c.stream>>>(d_ids, d_out, static_cast<int64_t>(n), z);
      if (mode == 1)
        CK(eplb_test::LaunchRecipeRoute(d_ids, false, T, d_valid, K, d_l2p, d_cnt, E, P, d_rec,
                                        d_out, d_load, nullptr, c.stream));
      if (mode == 2 || mode == 4)
        EngineStandInKernel<false><<<block_grid, 512, 0, c.stream>>>(
            d_ids, mode == 4 ? d_mid : d_out, static_cast<int64_t>(n), z);
      if (mode == 3)
        CK(eplb_test::LaunchBlockRecipeRoute<16>(d_ids, false, T, d_valid, K, d_l2p, d_cnt, E, P,
                                                 d_rec, d_out, d_load, nullptr, n > 512, c.stream));
      if (mode == 5 || mode == 6)
        CK(eplb::EnqueueKernelPdl(true, EngineStandInKernel<true>, block_grid, dim3(512), 0,
                                  c.stream, static_cast<const int32_t*>(d_ids),
                                  mode == 6 ? d_mid : d_out, static_cast<int64_t>(n), z));
      if (mode == 4 || mode == 6)
        EK(eplbRouteCount(d_mid, EPLB_ID_INT32, T, d_valid, K, d_l2p, d_cnt, E, P, d_rec, d_out,
                          d_load, nullptr, c.stream));
    }
  };
  auto capture = [&](int mode) { return c.Capture([&] { capture_into(mode); }); };
  cudaGraphExec_t gx[7];
  for (int m = 0; m < 7; ++m) gx[m] = capture(m);
  double t[7];
  for (int m : {0, 1, 2, 4, 5, 6}) t[m] = c.Mean([&] { CK(cudaGraphLaunch(gx[m], c.stream)); }, 30);
  t[3] = c.LoopMean(
      state, [&] { CK(cudaGraphLaunch(gx[3], c.stream)); }, 4);
  const double us = 1e6 / reps;
  state.counters["us_engine"] = t[2] * us;
  state.counters["us_block_fused_over_engine"] = (t[3] - t[2]) * us;
  state.counters["us_separate_over_engine"] = (t[4] - t[2]) * us;
  state.counters["us_warp_recipe_over_engine"] = (t[1] - t[0]) * us;
  state.counters["us_separate_over_early_engine"] = (t[6] - t[5]) * us;
  // eplbRouteCount with early launch on, after either engine kernel (in
  // the auto mode, a launch after the engine's kernel is normal).
  cudaGraphExec_t on4 = c.CaptureInMode(EPLB_EARLY_LAUNCH_ON, [&] { capture_into(4); });
  cudaGraphExec_t on6 = c.CaptureInMode(EPLB_EARLY_LAUNCH_ON, [&] { capture_into(6); });
  const double t_on4 = c.Mean([&] { CK(cudaGraphLaunch(on4, c.stream)); }, 30);
  const double t_on6 = c.Mean([&] { CK(cudaGraphLaunch(on6, c.stream)); }, 30);
  state.counters["us_separate_over_engine_on"] = (t_on4 - t[2]) * us;
  state.counters["us_separate_over_early_engine_on"] = (t_on6 - t[5]) * us;
  CK(cudaGraphExecDestroy(on4));
  CK(cudaGraphExecDestroy(on6));
  state.counters["mode"] = EarlyLaunchMode();
  for (cudaGraphExec_t x : gx) cudaGraphExecDestroy(x);
  for (void* p : {(void*)d_ids, (void*)d_mid, (void*)d_out, (void*)d_load, (void*)d_l2p,
                  (void*)d_cnt, (void*)d_valid, (void*)d_rec})
    cudaFree(p);
}
BENCHMARK(BM_FusedRouteDecodeGraph)
    ->Arg(64)
    ->Arg(512)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Window update, read-out and full-ring reduce at W=1000, 58 x 256 (288
// slots); baseline: an empty kernel launch on the same stream. The update
// folds a pass of 512 tokens x top-8 per layer each time: the pass is
// copied back in before every update (the update zeroes it), and the
// baseline copies it too before its empty kernel.
void BM_Window(benchmark::State& state) {
  const int which = static_cast<int>(state.range(0));  // 0 update, 1 readout, 2 reduce
  const int32_t L = 58, E = 256, P = 288, W = 1000;
  Ctx c;
  Placement pl = MakePlacement(L, E, P, 7);
  int32_t* d_p2l = Dev(pl.phy2log);
  int32_t *d_pass, *d_win, *d_state;
  int64_t *d_sum, *d_out;
  CK(cudaMalloc(&d_pass, static_cast<size_t>(L) * P * 4));
  CK(cudaMalloc(&d_win, static_cast<size_t>(W) * L * E * 4));
  CK(cudaMalloc(&d_sum, static_cast<size_t>(L) * E * 8));
  CK(cudaMalloc(&d_out, static_cast<size_t>(L) * E * 8));
  CK(cudaMalloc(&d_state, 8));
  std::vector<int32_t> pass(static_cast<size_t>(L) * P, 0);
  std::mt19937_64 rng(9);
  for (int32_t l = 0; l < L; ++l)
    for (int32_t i = 0; i < 512 * 8; ++i) ++pass[static_cast<size_t>(l) * P + rng() % P];
  int32_t* d_pass_src = Dev(pass);
  auto refill = [&] {
    CK(cudaMemcpyAsync(d_pass, d_pass_src, pass.size() * 4, cudaMemcpyDeviceToDevice, c.stream));
  };
  CK(cudaMemset(d_win, 0, static_cast<size_t>(W) * L * E * 4));
  CK(cudaMemset(d_sum, 0, static_cast<size_t>(L) * E * 8));
  CK(cudaMemset(d_state, 0, 8));
  auto op = [&] {
    if (which == 0) {
      refill();
      EK(eplbWindowUpdate(d_p2l, d_pass, L, E, P, W, d_win, d_sum, d_state, c.stream));
    }
    if (which == 1) EK(eplbWindowReadout(d_sum, L, E, d_out, c.stream));
    if (which == 2) EK(eplbWindowReduce(d_win, W, L, E, d_out, c.stream));
  };
  // Baseline and operation alternate in the benchmark loop; for the update
  // both include the copy, so `us` and the ratio do too (us_over_baseline
  // is the update's own cost).
  const auto [t_op, t_base] = c.TimeWithBaseline(state, op, [&] {
    if (which == 0) refill();
    EmptyKernel<<<1, 32, 0, c.stream>>>();
  });
  state.counters["us"] = t_op * 1e6;
  state.counters["us_baseline"] = t_base * 1e6;
  state.counters["us_over_baseline"] = (t_op - t_base) * 1e6;
  state.counters["ratio_vs_baseline"] = t_op / t_base;
  if (which == 2) state.counters["ring_GBps"] = 4.0 * W * L * E / t_op * 1e-9;
  for (void* p : {(void*)d_p2l, (void*)d_pass, (void*)d_pass_src, (void*)d_win, (void*)d_state,
                  (void*)d_sum, (void*)d_out})
    cudaFree(p);
}
BENCHMARK(BM_Window)->Arg(0)->Arg(1)->Arg(2)->UseManualTime()->Unit(benchmark::kMicrosecond);

// GPU planner, DeepSeek-V3 shape (58 x 256 -> 288, G=8, M=4, N=32), vs the
// host planner (eplbPlanCompute, wall clock) on the same loads. Argument:
// 0 no old placement; 1 migration PRESERVE and 2 FULL against an old
// placement (the plan of other loads).
void BM_PlanGpu(benchmark::State& state) {
  const int32_t L = 58, E = 256, P = 288;
  const int mode = static_cast<int>(state.range(0));
  Ctx c;
  eplbPlanConfig_t cfg = Dsv3PlanConfig(L);
  std::mt19937_64 rng(8);
  auto loads = [&] {
    std::vector<int64_t> load(static_cast<size_t>(L) * E);
    for (int32_t l = 0; l < L; ++l) {
      std::vector<int32_t> ids = Ids(20000, E, 1.2, rng());
      for (int32_t v : ids) ++load[static_cast<size_t>(l) * E + v];
    }
    return load;
  };
  const std::vector<int64_t> load = loads();
  std::vector<int32_t> old(static_cast<size_t>(L) * P), old_cnt(static_cast<size_t>(L) * E);
  EK(eplbPlanCompute(&cfg, loads().data(), nullptr, old.data(), old_cnt.data(), nullptr, nullptr));
  if (mode == 1) cfg.migration = EPLB_MIGRATION_PRESERVE;
  if (mode == 2) cfg.migration = EPLB_MIGRATION_FULL;
  const int32_t* h_old = mode == 0 ? nullptr : old.data();
  std::vector<int32_t> h_p2l(static_cast<size_t>(L) * P), h_cnt(static_cast<size_t>(L) * E),
      h_l2p(static_cast<size_t>(L) * E * 33);
  size_t ws = 0;
  EK(eplbPlanComputeGpuWorkspaceSize(&cfg, &ws));
  void* d_ws;
  CK(cudaMalloc(&d_ws, ws));
  int64_t* d_load = Dev(load);
  int32_t* d_old = mode == 0 ? nullptr : Dev(old);
  int32_t *d_p2l, *d_cnt, *d_l2p;
  CK(cudaMalloc(&d_p2l, h_p2l.size() * 4));
  CK(cudaMalloc(&d_cnt, h_cnt.size() * 4));
  CK(cudaMalloc(&d_l2p, h_l2p.size() * 4));
  // Host planner, same input.
  EK(eplbPlanCompute(&cfg, load.data(), h_old, h_p2l.data(), h_cnt.data(), h_l2p.data(), nullptr));
  const int host_reps = 20;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < host_reps; ++i)
    EK(eplbPlanCompute(&cfg, load.data(), h_old, h_p2l.data(), h_cnt.data(), h_l2p.data(),
                       nullptr));
  const double t_host =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / host_reps;
  auto op = [&] {
    EK(eplbPlanComputeGpu(&cfg, d_load, d_old, d_p2l, d_cnt, d_l2p, d_ws, ws, c.stream));
  };
  const double t_gpu = c.LoopMean(state, op, 1);
  std::vector<int32_t> g_p2l(h_p2l.size()), g_cnt(h_cnt.size()), g_l2p(h_l2p.size());
  CK(cudaMemcpy(g_p2l.data(), d_p2l, g_p2l.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(g_cnt.data(), d_cnt, g_cnt.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(g_l2p.data(), d_l2p, g_l2p.size() * 4, cudaMemcpyDeviceToHost));
  state.counters["us_gpu"] = t_gpu * 1e6;
  state.counters["us_host"] = t_host * 1e6;
  state.counters["host_over_gpu"] = t_host / t_gpu;
  // All three outputs equal the host planner's; a mismatch fails the run.
  const bool equal = g_p2l == h_p2l && g_cnt == h_cnt && g_l2p == h_l2p;
  state.counters["bit_equal"] = equal ? 1 : 0;
  if (!equal) {
    std::fprintf(stderr, "BM_PlanGpu/%d: the GPU plan differs from the host plan\n", mode);
    std::exit(1);
  }
  for (void* p : {d_ws, (void*)d_load, (void*)d_old, (void*)d_p2l, (void*)d_cnt, (void*)d_l2p})
    cudaFree(p);
}
BENCHMARK(BM_PlanGpu)->Arg(0)->Arg(1)->Arg(2)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
