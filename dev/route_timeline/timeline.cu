// Per-block timeline of route+count builds at decode sizes: every variant
// is a copy of kernels/route_count.cu instrumented by instrument.py and
// compiled into its own namespace (run.sh writes variants.inc). Lane 0 of
// every warp records globaltimer and clock64 at the stamps instrument.py
// placed: 0 entry, 1 after barrier 1, 2 tables stored (loads landed; in
// blocks that do not stage the tables, right after 1 and meaningless), 3
// after barrier 2, 4 the item's slot stored, 5 exit (1-3 only where the
// variant routes with the header's EplbBlockRoute). Single launches with a
// host sync between them (colder than in a CUDA graph); per size and
// variant, medians over 50 launches (TL_WARM=N: each the last of N + 1
// launches in one CUDA graph) of: the kernel's span (first entry to
// last exit), the last block of segment 0 (cycles of its SM from its
// first entry to each stamp's last warp), and when the other blocks exit.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench_check.h"
#include "bench_ids.h"
#include "eplb/eplb.h"
#include "eplb/eplb_device.cuh"
#include "launch.cuh"

// Blocks past kMaxBlocks are not stamped (the sub-block kernels launch at
// most 256 at these sizes); a block has at most 32 warps.
constexpr int kMaxBlocks = 256, kMaxWarps = 32, kStamps = 6;
struct TlRec {
  unsigned long long g[kStamps];
  long long c[kStamps];
  unsigned grid_y;
};
__device__ __forceinline__ unsigned long long TlGt() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
  return t;
}
__device__ __forceinline__ long long TlClk() {
  long long t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t)::"memory");
  return t;
}
#define TL_AT(k)                                             \
  do {                                                       \
    const unsigned b_ = blockIdx.x * gridDim.y + blockIdx.y; \
    if ((threadIdx.x & 31u) == 0u && b_ < kMaxBlocks) {      \
      TlRec& r_ = tl_arr[b_][threadIdx.x >> 5];              \
      r_.g[k] = TlGt();                                      \
      r_.c[k] = TlClk();                                     \
      r_.grid_y = gridDim.y;                                 \
    }                                                        \
  } while (0)

using Launcher = decltype(&eplb::kernels::LaunchRouteCount);
struct Variant {
  const char* name;
  Launcher f;
  const void* stamps;  // the variant's tl_arr
};

#include "variants.inc"  // namespaces eplb::tl0, tl1, ... and kVariants[]

int main() {
  const int32_t E = 256, P = 288, R1 = P - E + 1, K = 8;
  const int nv = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));
  std::mt19937_64 rng(1);
  std::vector<int32_t> p2l(P), cnt(E, 0), l2p(E * R1, -1);
  for (int p = 0; p < P; ++p) p2l[p] = p < E ? p : static_cast<int32_t>(rng() % E);
  for (int p = 0; p < P; ++p) l2p[p2l[p] * R1 + cnt[p2l[p]]++] = p;
  const size_t nmax = size_t{8192} * K;
  int32_t *l2p_d, *cnt_d, *ids_d, *out_d, *load_d, *valid_d, *rec_d;
  unsigned long long* inv_d;
  CK(cudaMalloc(&l2p_d, l2p.size() * 4));
  CK(cudaMalloc(&cnt_d, E * 4));
  CK(cudaMalloc(&ids_d, nmax * 4));
  CK(cudaMalloc(&out_d, nmax * 4));
  CK(cudaMalloc(&load_d, P * 4));
  CK(cudaMalloc(&valid_d, 4));
  CK(cudaMalloc(&rec_d, 4));
  CK(cudaMalloc(&inv_d, 8));
  CK(cudaMemcpy(l2p_d, l2p.data(), l2p.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(cnt_d, cnt.data(), E * 4, cudaMemcpyHostToDevice));
  const auto ids = Ids(nmax, E, 1.2, 4);
  CK(cudaMemcpy(ids_d, ids.data(), nmax * 4, cudaMemcpyHostToDevice));
  const int32_t one = 1;
  CK(cudaMemcpy(rec_d, &one, 4, cudaMemcpyHostToDevice));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  static TlRec h[kMaxBlocks][kMaxWarps];
  const char* warm_env = std::getenv("TL_WARM");
  const int warm_n = warm_env != nullptr ? std::atoi(warm_env) : 0;
  auto med = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x.empty() ? 0.0 : x[x.size() / 2];
  };
  for (int64_t T : {64, 512, 1024, 8192}) {
    const int32_t t32 = static_cast<int32_t>(T);
    CK(cudaMemcpy(valid_d, &t32, 4, cudaMemcpyHostToDevice));
    for (int v = 0; v < nv; ++v) {
      void* stamps_d = nullptr;
      CK(cudaGetSymbolAddress(&stamps_d, kVariants[v].stamps));
      std::vector<double> span, others, cyc[kStamps];
      // TL_WARM=N: the stamped launch is the last of N + 1 back-to-back
      // launches in one CUDA graph (warm, as in bench_kernels), not a
      // single launch after a host sync.
      cudaGraphExec_t warm = nullptr;
      if (warm_n > 0) {
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int k = 0; k <= warm_n; ++k)
          CK(kVariants[v].f(ids_d, false, T, valid_d, K, l2p_d, cnt_d, E, P, rec_d, out_d, load_d,
                            inv_d, s));
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&warm, g, 0));
        CK(cudaGraphDestroy(g));
      }
      for (int rep = 0; rep < 60; ++rep) {
        CK(cudaMemsetAsync(stamps_d, 0, sizeof(h), s));
        CK(cudaMemsetAsync(load_d, 0, P * 4, s));
        if (warm != nullptr)
          CK(cudaGraphLaunch(warm, s));
        else
          CK(kVariants[v].f(ids_d, false, T, valid_d, K, l2p_d, cnt_d, E, P, rec_d, out_d, load_d,
                            inv_d, s));
        CK(cudaMemcpyAsync(h, stamps_d, sizeof(h), cudaMemcpyDeviceToHost, s));
        CK(cudaStreamSynchronize(s));
        if (rep < 10) continue;
        unsigned long long g0 = ~0ull, g5 = 0, oe = 0;
        long long c0 = 1ll << 62, ck[kStamps] = {};
        const int per = static_cast<int>(h[0][0].grid_y);  // blocks per segment
        for (int b = 0; b < kMaxBlocks; ++b)
          for (int w = 0; w < kMaxWarps; ++w) {
            const TlRec& r = h[b][w];
            if (r.g[0] == 0) continue;  // no such warp or block
            g0 = std::min(g0, r.g[0]);
            g5 = std::max(g5, r.g[5]);
            if (b == per - 1) {
              c0 = std::min(c0, r.c[0]);
              for (int k = 1; k < kStamps; ++k)
                if (r.g[k] != 0) ck[k] = std::max(ck[k], r.c[k]);
            } else if (per > 1 && b % per != per - 1) {
              oe = std::max(oe, r.g[5]);
            }
          }
        span.push_back(double(g5 - g0));
        others.push_back(oe > 0 ? double(oe - g0) : 0.0);
        for (int k = 1; k < kStamps; ++k) cyc[k].push_back(ck[k] != 0 ? double(ck[k] - c0) : -1.0);
      }
      std::printf(
          "%ld tokens x top-8, %s: span %.0f ns, other blocks' exit %.0f ns; last block of "
          "segment 0, cycles from entry:",
          static_cast<long>(T), kVariants[v].name, med(span), med(others));
      const char* names[kStamps] = {"", "barrier 1", "loads landed", "barrier 2", "slot", "exit"};
      for (int k = 1; k < kStamps; ++k)
        if (med(cyc[k]) >= 0) std::printf(" %s %.0f", names[k], med(cyc[k]));
      std::printf("\n");
      if (warm != nullptr) CK(cudaGraphExecDestroy(warm));
    }
  }
  return 0;
}
