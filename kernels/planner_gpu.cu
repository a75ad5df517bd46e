// The host planner (host/planner.cc) on the device: one block per layer. The
// float64 operations are the host's, in the host's order (replica load =
// (double)w / count, pack loads summed in insertion order, group loads exact
// int64 sums converted once); only the selection structure differs (warp
// argmin/argmax on the same (value, index) key instead of heaps and scans),
// which cannot change a choice. Built with --fmad=false; double division is
// IEEE round-to-nearest.
#include <cuda_runtime.h>

#include <cfloat>

#include "assignment_core.h"
#include "enqueue.cuh"
#include "launch.cuh"

namespace eplb {
namespace kernels {
namespace {

constexpr int kPlanThreads = 256;
constexpr int kPlanWarps = kPlanThreads / 32;

size_t Align(size_t b) {
  return (b + 255) / 256 * 256;
}

// Per-layer scratch, carved from the caller's workspace.
struct LayerScratch {
  double* items;         // [max(P, G)]
  int32_t* ord;          // [max(P, G)] sorted order
  int32_t* pack_of;      // [max(P, G)]
  int32_t* pos_of;       // [max(P, G)]
  int32_t* node_group;   // [G]
  int32_t* node_expert;  // [E]
  int32_t* rep_expert;   // [P]
  int32_t* cnt;          // [E]
  double* cur;           // [E] by node-local position
  double* pack_load;     // [N]
  int32_t* pack_cnt;     // [N]
  int32_t* fresh;        // [P] plan before PRESERVE
  int32_t* taken;        // [P]
  // FULL only:
  int64_t* inter;      // [N][N] slots kept if new GPU k lands on old GPU j
  int64_t* vnode;      // [M][M] best kept slots of new node a on old node b
  int32_t* perm_all;   // [M][M][bs] that block's GPU assignment
  int32_t* sigma;      // [M] node assignment
  int32_t* relabeled;  // [P] the fresh plan, GPUs relabeled
  char* probs;         // [M * M] block problems' scratch, prob bytes each
  char* node_prob;     // the node problem's scratch
};

struct ScratchLayout {
  size_t items, ord, pack_of, pos_of, node_group, node_expert, rep_expert, cnt, cur, pack_load,
      pack_cnt, fresh, taken, inter, vnode, perm_all, sigma, relabeled, probs, prob, node_prob,
      total;
};

// One assignment problem's scratch in FULL: a bs x bs copy of its weights
// (bs = 0: none), then assignment::SolveMax's arrays for size n (a block:
// n = bs, GPUs per node; the node problem: n = M, its weights being vnode).
size_t ProblemBytes(int32_t bs, int32_t n) {
  const size_t b = static_cast<size_t>(bs), u = static_cast<size_t>(n);
  return Align(8 * (b * b + u * u + 3 * (u + 1)) + 4 * (3 * (u + 1) + 4 * u) + (u + 1));
}

__device__ assignment::Scratch CarveProblem(char* base, int32_t bs, int32_t n, int64_t** w) {
  const size_t u = static_cast<size_t>(n);
  int64_t* q = reinterpret_cast<int64_t*>(base);
  *w = q;
  q += static_cast<size_t>(bs) * bs;
  assignment::Scratch sc;
  sc.cost = q;
  q += u * u;
  sc.u = q;
  sc.v = q + (u + 1);
  sc.minv = q + 2 * (u + 1);
  int32_t* r = reinterpret_cast<int32_t*>(q + 3 * (u + 1));
  sc.p = r;
  sc.way = r + (u + 1);
  sc.match_row = r + 2 * (u + 1);
  r += 3 * (u + 1);
  sc.active_rows = r;
  sc.active_cols = r + u;
  sc.col_used = r + 2 * u;
  sc.row_in = r + 3 * u;
  sc.used = reinterpret_cast<char*>(r + 4 * u);
  return sc;
}

ScratchLayout Layout(const GpuPlanShape& s, bool hierarchical, bool full) {
  const size_t n = static_cast<size_t>(
      s.num_physical_experts > s.num_groups ? s.num_physical_experts : s.num_groups);
  const size_t E = s.num_logical_experts, P = s.num_physical_experts, G = s.num_groups,
               N = s.num_ranks;
  ScratchLayout l;
  size_t o = 0;
  l.items = o;
  o += Align(8 * n);
  l.ord = o;
  o += Align(4 * n);
  l.pack_of = o;
  o += Align(4 * n);
  l.pos_of = o;
  o += Align(4 * n);
  l.node_group = o;
  o += Align(4 * G);
  l.node_expert = o;
  o += Align(4 * E);
  l.rep_expert = o;
  o += Align(4 * P);
  l.cnt = o;
  o += Align(4 * E);
  l.cur = o;
  o += Align(8 * E);
  l.pack_load = o;
  o += Align(8 * N);
  l.pack_cnt = o;
  o += Align(4 * N);
  l.fresh = o;
  o += Align(4 * P);
  l.taken = o;
  o += Align(4 * P);
  l.inter = l.vnode = l.perm_all = l.sigma = l.relabeled = l.probs = l.prob = l.node_prob = o;
  if (full) {
    const int32_t M = hierarchical ? s.num_nodes : 1, bs = s.num_ranks / M;
    const size_t mm = static_cast<size_t>(M) * M;
    l.inter = o;
    o += Align(8 * N * N);
    l.vnode = o;
    o += Align(8 * mm);
    l.perm_all = o;
    o += Align(4 * mm * bs);
    l.sigma = o;
    o += Align(4 * M);
    l.relabeled = o;
    o += Align(4 * P);
    l.prob = ProblemBytes(bs, bs);
    l.probs = o;
    o += mm * l.prob;
    l.node_prob = o;
    o += ProblemBytes(0, M);
  }
  l.total = o;
  return l;
}

struct Best {
  double v;
  int32_t k;  // -1: none
};

// Lightest non-full pack: smaller load, then lower index.
__device__ __forceinline__ Best MinPack(Best a, Best b) {
  if (b.k < 0) return a;
  if (a.k < 0) return b;
  if (b.v < a.v || (b.v == a.v && b.k < a.k)) return b;
  return a;
}
// Heaviest replica load: larger value, then lower position.
__device__ __forceinline__ Best MaxItem(Best a, Best b) {
  if (b.k < 0) return a;
  if (a.k < 0) return b;
  if (b.v > a.v || (b.v == a.v && b.k < a.k)) return b;
  return a;
}

template <bool kMin>
__device__ __forceinline__ Best WarpReduce(Best b) {
  for (int o = 16; o > 0; o >>= 1) {
    Best x;
    x.v = __shfl_xor_sync(0xffffffffu, b.v, o);
    x.k = __shfl_xor_sync(0xffffffffu, b.k, o);
    b = kMin ? MinPack(b, x) : MaxItem(b, x);
  }
  return b;
}

// Greedy phase of balanced packing, by one warp: items[ord[t]] for t in
// [0, n) go to the lightest non-full pack of m (n / m each). Pack k's state
// lives with lane k % 32, which alone reads and writes it.
__device__ void WarpGreedy(const double* items, const int32_t* ord, int32_t n, int32_t m,
                           double* pl, int32_t* pc, int32_t* pack_of, int32_t* pos_of) {
  const int lane = threadIdx.x & 31;
  const int32_t cap = n / m;
  if (cap == 1) {
    for (int32_t i = lane; i < n; i += 32) {
      pack_of[i] = i;
      pos_of[i] = 0;
    }
    return;
  }
  if (m <= 32) {
    // Common case (up to 32 GPUs per node): pack `lane` lives in registers,
    // so a step's only dependency on the previous one is the pack state;
    // the next item's loads overlap the reduction. Same float64 sums in the
    // same order as below.
    double my_load = 0.0;
    int32_t my_cnt = 0;
    for (int32_t t = 0; t < n; ++t) {
      const int32_t i = ord[t];
      const double v = items[i];
      Best b = (lane < m && my_cnt < cap) ? Best{my_load, lane} : Best{0.0, -1};
      b = WarpReduce<true>(b);
      if (b.k == lane) {
        pack_of[i] = lane;
        pos_of[i] = my_cnt++;
        my_load += v;
      }
    }
    return;
  }
  for (int32_t k = lane; k < m; k += 32) {
    pl[k] = 0.0;
    pc[k] = 0;
  }
  for (int32_t t = 0; t < n; ++t) {
    Best b{0.0, -1};
    for (int32_t k = lane; k < m; k += 32) {
      if (pc[k] < cap) b = MinPack(b, Best{pl[k], k});
    }
    b = WarpReduce<true>(b);
    if ((b.k & 31) == lane) {
      const int32_t i = ord[t];
      pack_of[i] = b.k;
      pos_of[i] = pc[b.k]++;
      pl[b.k] += items[i];
    }
  }
}

// Stable descending order of items[0, n) (key: load desc, index asc) by
// counting, over `stride` threads starting at `tid`.
__device__ void RankSort(const double* items, int32_t n, int32_t* ord, int tid, int stride) {
  for (int32_t i = tid; i < n; i += stride) {
    const double v = items[i];
    int32_t r = 0;
    for (int32_t j = 0; j < n; ++j) {
      const double u = items[j];
      r += (u > v || (u == v && j < i)) ? 1 : 0;
    }
    ord[r] = i;
  }
}

// kFull: FULL migration (step 4), in its own instance: its solver needs
// registers and a stack the other plans do not. One block per layer: one
// resident block per SM is all it needs (min blocks 1 lets ptxas keep the
// plain instance at 60 registers without spills).
template <bool kFull>
__global__ void __launch_bounds__(kPlanThreads, 1)
    PlanKernel(GpuPlanShape shape, ScratchLayout lay, const int64_t* __restrict__ load_all,
               const int32_t* __restrict__ old_all, bool preserve, bool hier,
               int32_t* __restrict__ phy2log_all, int32_t* __restrict__ logcnt_all,
               int32_t* __restrict__ log2phy_all, char* workspace) {
  const int32_t layer = blockIdx.x;
  const int32_t E = shape.num_logical_experts, P = shape.num_physical_experts, N = shape.num_ranks;
  const int32_t G = hier ? shape.num_groups : 1;
  const int32_t M = hier ? shape.num_nodes : 1;
  const int32_t epg = E / G, gpn = G / M, epn = E / M, rpn = P / M, bs = N / M, spg = P / N;
  char* ws = workspace + static_cast<size_t>(layer) * lay.total;
  LayerScratch s;
  s.items = reinterpret_cast<double*>(ws + lay.items);
  s.ord = reinterpret_cast<int32_t*>(ws + lay.ord);
  s.pack_of = reinterpret_cast<int32_t*>(ws + lay.pack_of);
  s.pos_of = reinterpret_cast<int32_t*>(ws + lay.pos_of);
  s.node_group = reinterpret_cast<int32_t*>(ws + lay.node_group);
  s.node_expert = reinterpret_cast<int32_t*>(ws + lay.node_expert);
  s.rep_expert = reinterpret_cast<int32_t*>(ws + lay.rep_expert);
  s.cnt = reinterpret_cast<int32_t*>(ws + lay.cnt);
  s.cur = reinterpret_cast<double*>(ws + lay.cur);
  s.pack_load = reinterpret_cast<double*>(ws + lay.pack_load);
  s.pack_cnt = reinterpret_cast<int32_t*>(ws + lay.pack_cnt);
  s.fresh = reinterpret_cast<int32_t*>(ws + lay.fresh);
  s.taken = reinterpret_cast<int32_t*>(ws + lay.taken);
  const int64_t* load = load_all + static_cast<int64_t>(layer) * E;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // 1. Groups onto nodes (exact int64 group sums, packed as doubles).
  for (int32_t g = tid; g < G; g += blockDim.x) {
    int64_t sum = 0;
    for (int32_t i = 0; i < epg; ++i) sum += load[g * epg + i];
    s.items[g] = static_cast<double>(sum);
  }
  __syncthreads();
  if (G / M > 1) RankSort(s.items, G, s.ord, tid, blockDim.x);
  __syncthreads();
  if (warp == 0) WarpGreedy(s.items, s.ord, G, M, s.pack_load, s.pack_cnt, s.pack_of, s.pos_of);
  __syncthreads();
  for (int32_t g = tid; g < G; g += blockDim.x) s.node_group[s.pack_of[g] * gpn + s.pos_of[g]] = g;
  __syncthreads();
  for (int32_t x = tid; x < E; x += blockDim.x) {
    const int32_t j = x / epg, i = x % epg;
    s.node_expert[x] = s.node_group[j] * epg + i;
  }
  __syncthreads();

  // 2. Replication, one warp per node; position i's state lives with lane i % 32.
  const int32_t red = rpn - epn;
  for (int32_t n = warp; n < M; n += kPlanWarps) {
    const int32_t* ne = s.node_expert + n * epn;
    int32_t* re = s.rep_expert + n * rpn;
    double* cur = s.cur + n * epn;
    for (int32_t i = lane; i < epn; i += 32) {
      s.cnt[ne[i]] = 1;
      cur[i] = static_cast<double>(load[ne[i]]);
      re[i] = ne[i];
    }
    for (int32_t t = 0; t < red; ++t) {
      Best b{0.0, -1};
      for (int32_t i = lane; i < epn; i += 32) b = MaxItem(b, Best{cur[i], i});
      b = WarpReduce<false>(b);
      if ((b.k & 31) == lane) {
        const int32_t e = ne[b.k];
        const int32_t c = ++s.cnt[e];
        cur[b.k] = static_cast<double>(load[e]) / c;
        re[epn + t] = e;
      }
    }
  }
  __syncthreads();

  // 3. Replicas onto each node's GPUs.
  for (int32_t j = tid; j < P; j += blockDim.x) {
    const int32_t e = s.rep_expert[j];
    s.items[j] = static_cast<double>(load[e]) / s.cnt[e];
  }
  __syncthreads();
  if (rpn / bs > 1) {
    for (int32_t j = tid; j < P; j += blockDim.x) {
      const int32_t n = j / rpn, i = j % rpn;
      const double* it = s.items + n * rpn;
      const double v = it[i];
      int32_t r = 0;
      for (int32_t q = 0; q < rpn; ++q) {
        const double u = it[q];
        r += (u > v || (u == v && q < i)) ? 1 : 0;
      }
      s.ord[n * rpn + r] = i;
    }
  }
  __syncthreads();
  for (int32_t n = warp; n < M; n += kPlanWarps) {
    WarpGreedy(s.items + n * rpn, s.ord + n * rpn, rpn, bs, s.pack_load + n * bs,
               s.pack_cnt + n * bs, s.pack_of + n * rpn, s.pos_of + n * rpn);
  }
  __syncthreads();
  int32_t* phy2log = phy2log_all + static_cast<int64_t>(layer) * P;
  int32_t* fresh = preserve ? s.fresh : phy2log;
  for (int32_t j = tid; j < P; j += blockDim.x) {
    const int32_t n = j / rpn;
    fresh[n * rpn + s.pack_of[j] * spg + s.pos_of[j]] = s.rep_expert[j];
  }
  __syncthreads();

  // 4. FULL: relabel the fresh plan's GPUs within nodes, then its nodes,
  // to keep the most slots of the old placement, as the host planner's
  // MigrateLayer does, with the same solver (assignment_core.h). The host
  // skips the solver where a bound settles a block (all zero, the identity
  // or distinct unique row maxima attaining it); those cases are exactly
  // the solver's answers, so solving every block gives the same choices.
  const int32_t* plan = fresh;
  if constexpr (kFull) {
    s.inter = reinterpret_cast<int64_t*>(ws + lay.inter);
    s.vnode = reinterpret_cast<int64_t*>(ws + lay.vnode);
    s.perm_all = reinterpret_cast<int32_t*>(ws + lay.perm_all);
    s.sigma = reinterpret_cast<int32_t*>(ws + lay.sigma);
    s.relabeled = reinterpret_cast<int32_t*>(ws + lay.relabeled);
    s.probs = ws + lay.probs;
    s.node_prob = ws + lay.node_prob;
    const int32_t* old = old_all + static_cast<int64_t>(layer) * P;
    // inter[k][j]: multiset intersection of new GPU k and old GPU j.
    for (int32_t x = tid; x < N * N; x += blockDim.x) {
      const int32_t* nk = fresh + (x / N) * spg;
      const int32_t* oj = old + (x % N) * spg;
      int64_t kept = 0;
      for (int32_t r = 0; r < spg; ++r) {
        const int32_t e = nk[r];
        bool first = true;
        for (int32_t q = 0; q < r; ++q) first = first && nk[q] != e;
        if (!first) continue;
        int32_t cn = 0, co = 0;
        for (int32_t q = r; q < spg; ++q) cn += nk[q] == e;
        for (int32_t q = 0; q < spg; ++q) co += oj[q] == e;
        kept += cn < co ? cn : co;
      }
      s.inter[x] = kept;
    }
    __syncthreads();
    // (a) Each (new node a, old node b) block: the best GPU assignment; on
    // the diagonal the identity when it is as good.
    for (int32_t blk = tid; blk < M * M; blk += blockDim.x) {
      const int32_t a = blk / M, b = blk % M;
      int64_t* w;
      const assignment::Scratch sc = CarveProblem(s.probs + blk * lay.prob, bs, bs, &w);
      int64_t idv = 0;
      for (int32_t k = 0; k < bs; ++k)
        for (int32_t j = 0; j < bs; ++j) {
          w[k * bs + j] = s.inter[static_cast<int64_t>(a * bs + k) * N + b * bs + j];
          if (j == k) idv += w[k * bs + j];
        }
      int32_t* perm = s.perm_all + blk * bs;
      const int64_t v = assignment::SolveMax(bs, w, perm, sc);
      if (a == b && idv == v)
        for (int32_t k = 0; k < bs; ++k) perm[k] = k;
      s.vnode[blk] = v;
    }
    __syncthreads();
    // (b) Nodes onto old nodes, weighted by their blocks' best; the
    // identity when it is as good.
    if (tid == 0) {
      if (M == 1) {
        s.sigma[0] = 0;
      } else {
        int64_t* w;
        const assignment::Scratch sc = CarveProblem(s.node_prob, 0, M, &w);
        int64_t idv = 0;
        for (int32_t a = 0; a < M; ++a) idv += s.vnode[a * M + a];
        const int64_t v = assignment::SolveMax(M, s.vnode, s.sigma, sc);
        if (idv == v)
          for (int32_t a = 0; a < M; ++a) s.sigma[a] = a;
      }
    }
    __syncthreads();
    for (int32_t x = tid; x < P; x += blockDim.x) {
      const int32_t kg = x / spg, a = kg / bs;
      const int32_t tg = s.sigma[a] * bs + s.perm_all[(a * M + s.sigma[a]) * bs + kg % bs];
      s.relabeled[tg * spg + x % spg] = fresh[x];
    }
    __syncthreads();
    plan = s.relabeled;
  }

  // 5. PRESERVE (and FULL after its relabeling): per GPU, an expert
  // already there keeps its old slot.
  if (preserve) {
    const int32_t* old = old_all + static_cast<int64_t>(layer) * P;
    for (int32_t g = tid; g < N; g += blockDim.x) {
      const int32_t* nw = plan + g * spg;
      const int32_t* od = old + g * spg;
      int32_t* tk = s.taken + g * spg;
      int32_t* out = phy2log + g * spg;
      for (int32_t i = 0; i < spg; ++i) tk[i] = 0;
      for (int32_t r = 0; r < spg; ++r) {
        out[r] = -1;
        for (int32_t i = 0; i < spg; ++i) {
          if (!tk[i] && nw[i] == od[r]) {
            tk[i] = 1;
            out[r] = od[r];
            break;
          }
        }
      }
      int32_t j = 0;
      for (int32_t r = 0; r < spg; ++r) {
        if (out[r] >= 0) continue;
        while (tk[j]) ++j;
        out[r] = nw[j++];
      }
    }
    __syncthreads();
  }

  // 6. logcnt and log2phy (slots ascending, -1 padded).
  int32_t* logcnt = logcnt_all + static_cast<int64_t>(layer) * E;
  for (int32_t e = tid; e < E; e += blockDim.x) logcnt[e] = s.cnt[e];
  if (log2phy_all != nullptr) {
    const int32_t R1 = P - E + 1;
    int32_t* l2p = log2phy_all + static_cast<int64_t>(layer) * E * R1;
    for (int32_t e = tid; e < E; e += blockDim.x) {
      int32_t* row = l2p + static_cast<int64_t>(e) * R1;
      int32_t k = 0;
      for (int32_t p = 0; p < P && k < R1; ++p)
        if (phy2log[p] == e) row[k++] = p;
      for (; k < R1; ++k) row[k] = -1;
    }
  }
}

}  // namespace

size_t PlanGpuWorkspaceBytes(const GpuPlanShape& shape, bool hierarchical, bool full) {
  return Layout(shape, hierarchical, full).total * static_cast<size_t>(shape.num_layers);
}

cudaError_t LaunchPlanGpu(const GpuPlanShape& shape, bool hierarchical, const int64_t* load,
                          const int32_t* old_phy2log, GpuMigration migration, int32_t* phy2log,
                          int32_t* logcnt, int32_t* log2phy, void* workspace, cudaStream_t stream) {
  const bool has_old = old_phy2log != nullptr && migration != GpuMigration::kNone;
  const bool full = has_old && migration == GpuMigration::kFull;
  const ScratchLayout lay = Layout(shape, hierarchical, full);
  auto kernel = full ? PlanKernel<true> : PlanKernel<false>;
  return EnqueueKernel(kernel, dim3(static_cast<unsigned>(shape.num_layers)), dim3(kPlanThreads), 0,
                       stream, shape, lay, load, old_phy2log, has_old, hierarchical, phy2log,
                       logcnt, log2phy, static_cast<char*>(workspace));
}

}  // namespace kernels
}  // namespace eplb
