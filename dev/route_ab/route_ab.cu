// Same-run A/B of route+count builds: every variant is a copy of
// kernels/route_count.cu from some revision, compiled into its own
// namespace (run.sh writes variants.inc), so all are timed in one process,
// interleaved, on one GPU. Reports, per variant: equality of outputs, counts
// and invalid counts with the first variant; the hash path (64 Mi ids) as a
// ratio of the device-to-device copy, timed right after each route and after
// an L2 flush; decode sizes as us per launch over an empty kernel, in CUDA
// graphs of 64 launches, with two floors in the sub-block kernel's launch
// shape (an empty kernel, a copy of the ids) and a 32-thread empty kernel
// launched with programmatic dependent launch (the floor of a variant
// launched so; the library does under EPLB_PDL=1, which the harness passes
// on to every variant). Env: ROUTE_AB_DECODE_ONLY=1
// skips the hash path; ROUTE_AB_LOAD_AWARE=1 gives the decode runs a
// load-aware placement (each redundant slot to the expert with the most
// items per replica); ROUTE_AB_VALID_DIV=d routes the decode runs with a
// device token count of T / d; ROUTE_AB_ENGINE=1 (2) puts a stand-in engine
// kernel, launched normally (early), before every launch, and the decode
// figures are then over a graph of that kernel alone.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_check.h"
#include "bench_ids.h"
#include "kernels/enqueue.cuh"
#include "eplb/eplb.h"
#include "eplb/eplb_device.cuh"
#include "launch.cuh"

using Launcher = decltype(&eplb::kernels::LaunchRouteCount);
struct Variant {
  const char* name;
  Launcher f;
};

#include "variants.inc"  // namespaces eplb::ab0, ab1, ... and kVariants[]

namespace {

constexpr int kNumVariants = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));

// Also launched early (programmatic dependent launch, eplb::EnqueueKernelPdl):
// the floor of a variant launched so.
__global__ void EmptyKernel() {}

// Floors at decode sizes, in the sub-block kernel's launch shape (grid
// segments x 512-item sub-blocks, 512 threads, its dynamic shared memory):
// an empty kernel, and one that only copies each thread's id.
__global__ void ShapedEmptyKernel() {}
__global__ void ShapedCopyKernel(const int32_t* ids, int32_t* out, uint32_t cap,
                                 uint32_t seg_items) {
  const uint32_t i = blockIdx.x * seg_items + blockIdx.y * 512 + threadIdx.x;
  if (i < cap) out[i] = ids[i];
}

// ROUTE_AB_ENGINE: a stand-in engine kernel (copies the ids, 512 threads per
// block) before every route launch, launched normally (1) or early (2: it
// waits for the previous kernel first thing, then lets the next launch).
template <bool kPdl>
__global__ void EngineKernel(const int32_t* ids, int32_t* out, uint32_t n) {
  if (kPdl) {
    eplb::GridDependencyWait();
    eplb::GridDependentsLaunch();
  }
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = ids[i];
}

struct Dev {
  int32_t *l2p, *cnt, *ids, *out, *load, *valid, *rec, *scratch;
  unsigned long long* inv;
};

}  // namespace

int main() {
  const int32_t E = 256, P = 288, R1 = P - E + 1, K = 8;
  const bool decode_only = std::getenv("ROUTE_AB_DECODE_ONLY") != nullptr;
  const bool load_aware = std::getenv("ROUTE_AB_LOAD_AWARE") != nullptr;
  std::mt19937_64 rng(1);
  std::vector<int32_t> p2l(P), cnt(E, 0), l2p(E * R1, -1);
  for (int p = 0; p < P; ++p) p2l[p] = p < E ? p : static_cast<int32_t>(rng() % E);
  for (int p = 0; p < P; ++p) l2p[p2l[p] * R1 + cnt[p2l[p]]++] = p;
  const size_t nmax = size_t{64} << 20;
  Dev d;
  CK(cudaMalloc(&d.l2p, l2p.size() * 4));
  CK(cudaMalloc(&d.cnt, E * 4));
  CK(cudaMemcpy(d.l2p, l2p.data(), l2p.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d.cnt, cnt.data(), E * 4, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&d.ids, nmax * 4));
  CK(cudaMalloc(&d.out, nmax * 4));
  CK(cudaMalloc(&d.scratch, size_t{8192} * K * 4));
  CK(cudaMalloc(&d.load, P * 4));
  CK(cudaMalloc(&d.valid, 4));
  CK(cudaMalloc(&d.rec, 4));
  CK(cudaMalloc(&d.inv, 8));
  const int32_t one = 1;
  CK(cudaMemcpy(d.rec, &one, 4, cudaMemcpyHostToDevice));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  auto time = [&](const std::function<void()>& f) {
    CK(cudaEventRecord(a, s));
    f();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return double(ms) * 1e3;
  };
  auto med = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  auto route = [&](int v, int64_t T, bool dev_valid) {
    CK(kVariants[v].f(d.ids, false, T, dev_valid ? d.valid : nullptr, K, d.l2p, d.cnt, E, P, d.rec,
                      d.out, d.load, d.inv, s));
  };
  int failures = 0;
  auto check = [&](int64_t T, bool dev_valid) {
    const size_t n = size_t(T) * K;
    std::vector<int32_t> o0, l0;
    unsigned long long i0 = 0;
    for (int v = 0; v < kNumVariants; ++v) {
      CK(cudaMemsetAsync(d.load, 0, P * 4, s));
      CK(cudaMemsetAsync(d.inv, 0, 8, s));
      CK(cudaMemsetAsync(d.out, 0x7f, n * 4, s));
      route(v, T, dev_valid);
      std::vector<int32_t> o(n), l(P);
      unsigned long long inv = 0;
      CK(cudaMemcpyAsync(o.data(), d.out, n * 4, cudaMemcpyDeviceToHost, s));
      CK(cudaMemcpyAsync(l.data(), d.load, P * 4, cudaMemcpyDeviceToHost, s));
      CK(cudaMemcpyAsync(&inv, d.inv, 8, cudaMemcpyDeviceToHost, s));
      CK(cudaStreamSynchronize(s));
      if (v == 0) {
        o0 = o, l0 = l, i0 = inv;
      } else if (o != o0 || l != l0 || inv != i0) {
        std::printf("DIFF: %s vs %s at T=%ld\n", kVariants[v].name, kVariants[0].name, long(T));
        ++failures;
      }
    }
  };
  if (!decode_only) {
    char* flush;
    const size_t flush_bytes = size_t{256} << 20;
    CK(cudaMalloc(&flush, flush_bytes));
    for (double zipf : {0.0, 1.2}) {
      const int64_t T = 8 << 20;
      const size_t n = size_t(T) * K;
      const auto ids = Ids(n, E, zipf, zipf == 0.0 ? 2 : 12);
      CK(cudaMemcpy(d.ids, ids.data(), n * 4, cudaMemcpyHostToDevice));
      check(T, false);
      auto copy = [&] { CK(cudaMemcpyAsync(d.out, d.ids, n * 4, cudaMemcpyDeviceToDevice, s)); };
      for (int flushed = 0; flushed < 2; ++flushed) {
        std::vector<double> tc, tv[kNumVariants];
        for (int r = 0; r < 30; ++r)
          for (int v = 0; v < kNumVariants; ++v) {
            if (flushed) CK(cudaMemsetAsync(flush, r, flush_bytes, s));
            tv[v].push_back(time([&] { route(v, T, false); }));
            if (flushed) CK(cudaMemsetAsync(flush, r, flush_bytes, s));
            tc.push_back(time(copy));
          }
        std::printf("hash path, 64 Mi ids, zipf %.1f, %s: copy %.1f us; vs copy:", zipf,
                    flushed ? "after an L2 flush" : "right after the route", med(tc));
        for (int v = 0; v < kNumVariants; ++v)
          std::printf(" %s %.3f", kVariants[v].name, med(tc) / med(tv[v]));
        std::printf("\n");
      }
    }
    CK(cudaFree(flush));
  }
  {
    const auto ids = Ids(size_t(8192) * K, E, 1.2, 4);
    CK(cudaMemcpy(d.ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    if (load_aware) {
      std::vector<double> load(E, 0.0);
      for (int32_t v : ids) load[v] += 1;
      std::vector<int32_t> c(E, 1), g2l(P), gc(E, 0), gl2p(E * R1, -1);
      for (int p = 0; p < E; ++p) g2l[p] = p;
      for (int p = E; p < P; ++p) {
        int best = 0;
        for (int e = 1; e < E; ++e)
          if (load[e] / c[e] > load[best] / c[best]) best = e;
        g2l[p] = best;
        ++c[best];
      }
      for (int p = 0; p < P; ++p) gl2p[g2l[p] * R1 + gc[g2l[p]]++] = p;
      std::printf("load-aware placement: up to %d replicas\n",
                  *std::max_element(gc.begin(), gc.end()));
      CK(cudaMemcpy(d.l2p, gl2p.data(), gl2p.size() * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(d.cnt, gc.data(), E * 4, cudaMemcpyHostToDevice));
    }
  }
  // ROUTE_AB_VALID_DIV=d: a device token count of T / d (a graph captured
  // at a padded size), so the later items are rejected.
  const char* valid_div = std::getenv("ROUTE_AB_VALID_DIV");
  const int64_t div = valid_div != nullptr ? std::max<int64_t>(1, std::atoll(valid_div)) : 1;
  const char* engine_env = std::getenv("ROUTE_AB_ENGINE");
  const int engine = engine_env != nullptr ? std::atoi(engine_env) : 0;
  if (engine != 0)
    std::printf("every launch after an engine kernel launched %s; \"empty\" is that kernel alone\n",
                engine == 2 ? "early" : "normally");
  for (int64_t T : {64, 512, 1024, 8192}) {
    const int32_t t32 = int32_t(T / div);
    CK(cudaMemcpy(d.valid, &t32, 4, cudaMemcpyHostToDevice));
    check(T, true);
    auto capture = [&](int v) {
      cudaGraph_t g;
      cudaGraphExec_t x;
      CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < 64; ++i) {
        if (engine != 0) {
          const uint32_t n = uint32_t(T * K);
          const dim3 eg((n + 511) / 512);
          if (engine == 2) {
            CK(eplb::EnqueueKernelPdl(true, EngineKernel<true>, eg, dim3(512), 0, s,
                                      static_cast<const int32_t*>(d.ids), d.scratch, n));
          } else {
            EngineKernel<false><<<eg, 512, 0, s>>>(d.ids, d.scratch, n);
          }
          if (v == -1) continue;
        }
        if (v == -2)
          CK(eplb::EnqueueKernelPdl(true, EmptyKernel, dim3(1), dim3(32), 0, s));
        else if (v < 0)
          EmptyKernel<<<1, 32, 0, s>>>();
        else
          route(v, T, true);
      }
      CK(cudaStreamEndCapture(s, &g));
      CK(cudaGraphInstantiate(&x, g, 0));
      CK(cudaGraphDestroy(g));
      return x;
    };
    int32_t segs = 0;
    int64_t seg_items = 0;
    eplb::ab0::RouteSegments(T * K, &segs, &seg_items);
    const dim3 shape(segs, static_cast<unsigned>((seg_items + 511) / 512));
    const size_t shape_smem = sizeof(int32_t) * (20 * E + P);
    auto capture_floor = [&](bool copy) {
      cudaGraph_t g;
      cudaGraphExec_t x;
      CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      for (int i = 0; i < 64; ++i) {
        if (copy)
          ShapedCopyKernel<<<shape, 512, shape_smem, s>>>(d.ids, d.out, uint32_t(T * K),
                                                          uint32_t(seg_items));
        else
          ShapedEmptyKernel<<<shape, 512, shape_smem, s>>>();
      }
      CK(cudaStreamEndCapture(s, &g));
      CK(cudaGraphInstantiate(&x, g, 0));
      CK(cudaGraphDestroy(g));
      return x;
    };
    cudaGraphExec_t gf[2] = {capture_floor(false), capture_floor(true)};
    std::vector<double> tf[2];
    cudaGraphExec_t ge = capture(-1), gp = capture(-2), gv[kNumVariants];
    for (int v = 0; v < kNumVariants; ++v) gv[v] = capture(v);
    std::vector<double> te, tp, tv[kNumVariants];
    for (int r = 0; r < 403; ++r) {
      const double t = time([&] { CK(cudaGraphLaunch(ge, s)); });
      if (r >= 3) te.push_back(t);
      const double tpr = time([&] { CK(cudaGraphLaunch(gp, s)); });
      if (r >= 3) tp.push_back(tpr);
      for (int f = 0; f < 2; ++f) {
        const double tfr = time([&] { CK(cudaGraphLaunch(gf[f], s)); });
        if (r >= 3) tf[f].push_back(tfr);
      }
      for (int v = 0; v < kNumVariants; ++v) {
        const double tvr = time([&] { CK(cudaGraphLaunch(gv[v], s)); });
        if (r >= 3) tv[v].push_back(tvr);
      }
    }
    std::printf("decode %ld tokens x top-8: empty %.2f us per launch; us over empty:", long(T),
                med(te) / 64);
    for (int v = 0; v < kNumVariants; ++v)
      std::printf(" %s %.2f", kVariants[v].name, (med(tv[v]) - med(te)) / 64);
    std::printf(
        "; floors in the sub-block shape (%u x %u blocks): empty %.2f, copy %.2f; "
        "empty kernel launched with PDL %.2f\n",
        shape.x, shape.y, (med(tf[0]) - med(te)) / 64, (med(tf[1]) - med(te)) / 64,
        (med(tp) - med(te)) / 64);
    for (int f = 0; f < 2; ++f) CK(cudaGraphExecDestroy(gf[f]));
    for (int v = 0; v < kNumVariants; ++v) CK(cudaGraphExecDestroy(gv[v]));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphExecDestroy(gp));
  }
  std::printf("%s\n", failures == 0 ? "all variants agree" : "VARIANTS DISAGREE");
  return failures == 0 ? 0 : 1;
}
