// Churn-aware policy: see churn_policy.h for the why and the move set.
#include "churn_policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <queue>
#include <utility>

#include "error.h"
#include "parallel.h"

namespace eplb {

namespace {
// Ratio given to a move that gains balance without a new holding (it undoes
// an earlier move of this call or is a local copy): taken before any other.
constexpr double kFreeRatio = 1e300;
// Fewest layers a range of candidate building takes (a layer whose
// candidates are rebuilt costs ~40 us; handing a range to a pool thread
// costs a wake-up).
constexpr int32_t kMinLayersPerThread = 4;
}  // namespace

struct ChurnPlanner::Layer {
  std::vector<int32_t> slots;       // [P] current placement
  std::vector<int32_t> cnt;         // [E] replicas
  std::vector<double> rank_load;    // [N] on the forecast
  std::vector<int16_t> held;        // [N][E] replicas of e on rank r now
  std::vector<uint8_t> old_held;    // [N][E] rank r held e before the call
  std::vector<int32_t> group_node;  // [G] node of each group (hierarchical), -1 split
  int64_t new_holdings = 0;         // vs old, this layer
  double max_load = 0.0;
  double mean = 0.0;
  bool split = false;  // some group on several nodes
  // Candidate placements of the whole layer (switch moves): the fresh plan
  // relabelled onto the old placement (first: forced layers and warm-up
  // take it), then the tight and loose sticky packings (churn_policy.h).
  struct Cand {
    std::vector<int32_t> pl;  // [P]
    double max = 0.0;         // max rank load on the forecast
    int64_t holdings = 0;     // new holdings vs the old placement
    bool valid = false;       // not taken yet this call
  };
  std::vector<Cand> cands;
  int32_t num_cands = 0;
  // The fresh plan of the base policy on the forecast it was built on (any
  // rank labels): its balancedness is what the layer could reach.
  std::vector<int32_t> fresh;
  double fresh_max = 0.0;
  // Best pending move: kind 0 none, 1 single slot edits, 2 switch to
  // candidate `cand`.
  int32_t kind = 0;
  int32_t cand = -1;
  int32_t edit_slot[2] = {-1, -1};
  int32_t edit_expert[2] = {-1, -1};
  int32_t num_edits = 0;
  double gain = 0.0;  // in overall balancedness
  int64_t cost = 0;
  double ratio = 0.0;
  int32_t moves = 0;
  // Candidate cache, kept across calls (a function of the call history,
  // which is the same on every rank): the candidates above, built from the
  // placement cand_base; reused while the fresh plan's balancedness on the
  // current forecast stays within refresh_tolerance of its value when built.
  bool cache_valid = false;
  double cand_bal = 0.0;
  std::vector<int32_t> cand_base;
  bool built = false;  // candidates (re)built this call
};

// Scratch of one candidate-building thread: the base policy's planner (not
// thread safe), the assignment solver and the per-layer temporaries of the
// relabelling and the packings. No result depends on what a Work held
// before (every buffer is sized and filled before it is read).
struct ChurnPlanner::Work {
  Planner planner;
  AssignmentSolver assign;
  std::vector<int64_t> overlap, scaled;
  std::vector<int32_t> node_perm, rank_perm, perm_scratch;
  std::vector<int32_t> old_start, old_slots, old_rank, cursor, kept_slot, slot_used;
  std::vector<int32_t> target_cnt, score_cnt;
  std::vector<double> share;  // [E] w[e] / target_cnt[e]: a replica's load in the fresh plan
  std::vector<uint64_t> sort_a, sort_b;
  // The replicas to pack, largest first (PrepareSticky): load, expert, first
  // rank of the expert's node.
  std::vector<double> item_x;
  std::vector<int32_t> item_e, item_lo;
  int32_t num_items = 0;
  std::vector<int32_t> leftover, free, assign_rank, gnode;
  std::vector<double> pack_load, eff;
  // Per rank, the experts its old placement holds (IndexOld): bit e % 64 of
  // word [r][e / 64].
  std::vector<uint64_t> old_bits;
  // Per expert, the old ranks holding it (bit r), when N <= 64.
  std::vector<uint64_t> old_holders;
  int32_t words = 0;
  std::vector<int32_t> mark, free_list, out_tmp, node_fill;

  // Sizes every buffer for a shape (no allocation once sized): the
  // functions below write through raw pointers and never resize.
  void Size(int32_t E, int32_t P, int32_t N, int32_t M, int32_t R, int32_t G) {
    const size_t e = static_cast<size_t>(std::max(E, 1)), p = static_cast<size_t>(P);
    const size_t n = static_cast<size_t>(N);
    scaled.resize(e);
    target_cnt.resize(e);
    score_cnt.resize(e);
    share.resize(e);
    sort_a.resize(e);
    sort_b.resize(e);
    old_start.resize(e + 1);
    cursor.resize(std::max(e, n));
    for (std::vector<int32_t>* v :
         {&old_slots, &old_rank, &kept_slot, &item_e, &item_lo, &leftover, &assign_rank})
      v->resize(p);
    item_x.resize(p);
    slot_used.resize(p + 1);
    free_list.resize(p + 1);
    out_tmp.resize(p + 1);
    free.resize(n + 1);
    pack_load.resize(n + 1);
    eff.resize(n + 1);
    mark.resize(n);
    words = (std::max(E, 1) + 63) / 64;
    old_bits.resize(n * static_cast<size_t>(words));
    old_holders.resize(e);
    rank_perm.resize(n);
    node_perm.resize(static_cast<size_t>(M));
    node_fill.resize(static_cast<size_t>(M) + 1);
    perm_scratch.resize(static_cast<size_t>(R));
    gnode.resize(static_cast<size_t>(std::max(G, 1)));
    overlap.resize(std::max(static_cast<size_t>(M) * M, static_cast<size_t>(R) * R));
  }
};

ChurnPlanner::ChurnPlanner() = default;
ChurnPlanner::~ChurnPlanner() = default;

void ChurnPlanner::set_threads(int32_t n) {
  EPLB_CHECK_ARG(n >= 0, "churn planner threads (%d) must be >= 0", n);
  threads_ = n;
}

void ValidateChurnOptions(const PlanShape& shape, const ChurnOptions& o) {
  EPLB_CHECK_ARG(std::isfinite(o.max_moved_fraction) && o.max_moved_fraction >= 0.0 &&
                     o.max_moved_fraction <= 1.0,
                 "churn->max_moved_fraction (%g) must be in [0, 1]", o.max_moved_fraction);
  EPLB_CHECK_ARG(std::isfinite(o.min_gain) && o.min_gain >= 0.0,
                 "churn->min_gain (%g) must be finite and >= 0", o.min_gain);
  EPLB_CHECK_ARG(std::isfinite(o.sticky_slack) && o.sticky_slack >= -1.0 && o.sticky_slack <= 10.0,
                 "churn->sticky_slack (%g) must be in [-1, 10]", o.sticky_slack);
  EPLB_CHECK_ARG(std::isfinite(o.min_gain_per_churn) && o.min_gain_per_churn >= 0.0,
                 "churn->min_gain_per_churn (%g) must be finite and >= 0", o.min_gain_per_churn);
  EPLB_CHECK_ARG(!std::isnan(o.refresh_tolerance), "churn refresh_tolerance (%g) must not be NaN",
                 o.refresh_tolerance);
  if (o.load_estimate != nullptr) {
    const int64_t n = static_cast<int64_t>(shape.num_layers) * shape.num_logical_experts;
    for (int64_t i = 0; i < n; ++i) {
      const double v = o.load_estimate[i];
      EPLB_CHECK_ARG(std::isfinite(v) && v >= 0.0 && v < 9.0e15,
                     "churn->h_load_estimate[%lld][%lld] (%g) must be finite, >= 0 and < 2^53",
                     static_cast<long long>(i / shape.num_logical_experts),
                     static_cast<long long>(i % shape.num_logical_experts), v);
    }
  }
}

int64_t CountNewHoldings(const PlanShape& s, const int32_t* phy2log, const int32_t* old) {
  const int32_t P = s.num_physical_experts, S = P / s.num_ranks;
  int64_t n = 0;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int32_t* a = phy2log + static_cast<size_t>(l) * P;
    const int32_t* b = old + static_cast<size_t>(l) * P;
    for (int32_t r = 0; r < s.num_ranks; ++r) {
      for (int32_t i = r * S; i < (r + 1) * S; ++i) {
        bool seen = false, before = false;
        for (int32_t k = r * S; k < i && !seen; ++k) seen = a[k] == a[i];
        if (seen) continue;
        for (int32_t k = r * S; k < (r + 1) * S && !before; ++k) before = b[k] == a[i];
        if (!before) ++n;
      }
    }
  }
  return n;
}

void UpdateLoadEstimate(int64_t n, double decay, const int64_t* load, double* estimate) {
  for (int64_t i = 0; i < n; ++i) estimate[i] = decay * estimate[i] + static_cast<double>(load[i]);
}

void ValidateForecastConfig(const ForecastConfig& c) {
  EPLB_CHECK_ARG(c.num_half_lives >= 1 && c.num_half_lives <= kMaxForecastHalfLives,
                 "forecast num_half_lives (%d) must be in [1, %d]", c.num_half_lives,
                 kMaxForecastHalfLives);
  for (int32_t k = 0; k < c.num_half_lives; ++k)
    EPLB_CHECK_ARG(std::isfinite(c.half_lives[k]) && c.half_lives[k] > 0.0,
                   "forecast half_lives[%d] (%g) must be finite and > 0", k, c.half_lives[k]);
  EPLB_CHECK_ARG(std::isfinite(c.error_half_life) && c.error_half_life > 0.0,
                 "forecast error_half_life (%g) must be finite and > 0", c.error_half_life);
}

int64_t ForecastStateSize(int32_t L, int32_t E, const ForecastConfig& c) {
  return static_cast<int64_t>(c.num_half_lives) * L * (static_cast<int64_t>(E) + 1);
}

void UpdateForecastState(int32_t L, int32_t E, const ForecastConfig& c, const int64_t* load,
                         double* state) {
  const int32_t K = c.num_half_lives;
  const size_t LE = static_cast<size_t>(L) * E;
  double* err = state + static_cast<size_t>(K) * LE;
  const double err_decay = std::pow(0.5, 1.0 / c.error_half_life);
  double decay[kMaxForecastHalfLives];
  for (int32_t k = 0; k < K; ++k) decay[k] = std::pow(0.5, 1.0 / c.half_lives[k]);
  // Per layer, the sums of the step and of the K estimates, then the K
  // errors, each in ascending expert order as always; the K + 1 sums (then
  // the K errors) advance side by side in one pass, so that the adds of
  // different sums overlap instead of each sum waiting on its own chain.
  // Layers are independent: a few threads take contiguous ranges (each
  // layer's arithmetic is the same whichever thread runs it).
  ParallelRanges(L, DefaultHostThreads(), 8, [&](int32_t lo, int32_t hi, int32_t) {
    double* f[kMaxForecastHalfLives];
    for (int32_t l = lo; l < hi; ++l) {
      const int64_t* a = load + static_cast<size_t>(l) * E;
      for (int32_t k = 0; k < K; ++k)
        f[k] = state + static_cast<size_t>(k) * LE + static_cast<size_t>(l) * E;
      double atot = 0.0, ftot[kMaxForecastHalfLives] = {}, sq[kMaxForecastHalfLives] = {};
      for (int32_t e = 0; e < E; ++e) {
        atot += static_cast<double>(a[e]);
        for (int32_t k = 0; k < K; ++k) ftot[k] += f[k][e];
      }
      if (atot > 0.0) {
        // Error of each estimate before it sees the step (a step without
        // load says nothing about the distribution), and its update: each
        // element's update needs only its own old value.
        for (int32_t e = 0; e < E; ++e) {
          const double share = static_cast<double>(a[e]) / atot;
          for (int32_t k = 0; k < K; ++k) {
            const double fe = ftot[k] > 0.0 ? f[k][e] / ftot[k] : 1.0 / E;
            const double d = fe - share;
            sq[k] += d * d;
            f[k][e] = decay[k] * f[k][e] + static_cast<double>(a[e]);
          }
        }
        for (int32_t k = 0; k < K; ++k) {
          double& x = err[static_cast<size_t>(k) * L + l];
          x = err_decay * x + sq[k];
        }
      } else {
        for (int32_t k = 0; k < K; ++k)
          for (int32_t e = 0; e < E; ++e) f[k][e] = decay[k] * f[k][e] + static_cast<double>(a[e]);
      }
    }
  });
}

void ForecastFromState(int32_t L, int32_t E, const ForecastConfig& c, const double* state,
                       double* forecast, int32_t* chosen) {
  const int32_t K = c.num_half_lives;
  const size_t LE = static_cast<size_t>(L) * E;
  const double* err = state + static_cast<size_t>(K) * LE;
  for (int32_t l = 0; l < L; ++l) {
    int32_t best = 0;
    for (int32_t k = 1; k < K; ++k)
      if (err[static_cast<size_t>(k) * L + l] < err[static_cast<size_t>(best) * L + l]) best = k;
    const double* f = state + static_cast<size_t>(best) * LE + static_cast<size_t>(l) * E;
    std::copy(f, f + E, forecast + static_cast<size_t>(l) * E);
    if (chosen != nullptr) chosen[l] = best;
  }
}

// Recomputes counts, rank loads (slot order), max, groups' nodes from slots.
void ChurnPlanner::Rebuild(const PlanShape& s, Layer& ly, const double* w) const {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  std::fill(ly.cnt.begin(), ly.cnt.end(), 0);
  for (int32_t p = 0; p < P; ++p) ++ly.cnt[ly.slots[p]];
  ly.max_load = 0.0;
  for (int32_t r = 0; r < N; ++r) {
    double acc = 0.0;
    for (int32_t p = r * slots_per_rank_; p < (r + 1) * slots_per_rank_; ++p)
      acc += w[ly.slots[p]] / ly.cnt[ly.slots[p]];
    ly.rank_load[r] = acc;
    if (acc > ly.max_load) ly.max_load = acc;
  }
  (void)E;
  ly.split = false;
  if (hier_) {
    std::fill(ly.group_node.begin(), ly.group_node.end(), -2);
    for (int32_t p = 0; p < P; ++p) {
      const int32_t g = exp_group_[ly.slots[p]];
      const int32_t node = slot_node_[p];
      if (ly.group_node[g] == -2) {
        ly.group_node[g] = node;
      } else if (ly.group_node[g] != node) {
        ly.group_node[g] = -1;
        ly.split = true;
      }
    }
  }
}

// The layer's old placement `old` as lists: wk.old_slots holds, for each
// expert, the old slots holding it (ascending), from wk.old_start[e], and
// wk.old_rank their ranks; wk.old_bits the experts of each old rank and
// wk.old_holders (N <= 64) the old ranks of each expert. Shared
// by the relabelling and the sticky packings of one layer. The hot loops below read the Work's
// buffers through local pointers: a byte or int store through a vector would otherwise make the
// compiler reload every vector's data pointer (it may alias them).
void ChurnPlanner::IndexOld(Work& wk, const PlanShape& s, const int32_t* old) const {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  int32_t* start = wk.old_start.data();
  int32_t* cur = wk.cursor.data();
  int32_t* slots = wk.old_slots.data();
  int32_t* ranks = wk.old_rank.data();
  const int32_t* srank = slot_rank_.data();
  std::fill(start, start + E + 1, 0);
  for (int32_t p = 0; p < P; ++p) ++start[old[p] + 1];
  for (int32_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::copy(start, start + E, cur);
  for (int32_t p = 0; p < P; ++p) {
    const int32_t i = cur[old[p]]++;
    slots[i] = p;
    ranks[i] = srank[p];
  }
  const int32_t W = wk.words;
  uint64_t* bits = wk.old_bits.data();
  std::fill(bits, bits + static_cast<size_t>(s.num_ranks) * W, 0);
  for (int32_t p = 0; p < P; ++p)
    bits[static_cast<size_t>(srank[p]) * W + (old[p] >> 6)] |= uint64_t{1} << (old[p] & 63);
  if (s.num_ranks <= 64) {
    uint64_t* holders = wk.old_holders.data();
    std::fill(holders, holders + E, 0);
    for (int32_t p = 0; p < P; ++p) holders[old[p]] |= uint64_t{1} << srank[p];
  }
}

// The replicas to pack (counts tcnt, loads wk.share, group g on node
// gnode[g] when hierarchical), by node, then largest first, ties by expert:
// a stable LSD
// radix sort on the high 32 bits of the replica load (order preserving for
// doubles >= 0), from the experts in ascending order; the four digit
// histograms are counted in one pass, and a digit all keys share is skipped.
// Why not std::sort: on 256 keys its mispredicted branches cost about as much
// as a packing. Keys equal in their high 32 bits (relative difference <
// 2^-20) count as ties; the order is still a fixed function of the inputs.
void ChurnPlanner::PrepareSticky(Work& wk, const PlanShape& s, const int32_t* gnode,
                                 const int32_t* tcnt) const {
  const int32_t E = s.num_logical_experts;
  const int32_t R = ranks_per_node_;
  const double* share = wk.share.data();
  uint64_t* a = wk.sort_a.data();
  uint64_t* b = wk.sort_b.data();
  uint32_t n = 0;
  for (int32_t e = 0; e < E; ++e) {
    if (tcnt[e] <= 0) continue;
    uint64_t bits;
    std::memcpy(&bits, &share[e], sizeof bits);
    const uint32_t key = ~static_cast<uint32_t>(bits >> 32);  // descending
    a[n++] = (static_cast<uint64_t>(key) << 32) | static_cast<uint32_t>(e);
  }
  uint32_t hist[4][256];
  std::memset(hist, 0, sizeof hist);
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t k = a[i];
    ++hist[0][(k >> 32) & 0xff];
    ++hist[1][(k >> 40) & 0xff];
    ++hist[2][(k >> 48) & 0xff];
    ++hist[3][k >> 56];
  }
  for (int32_t pass = 0; pass < 4 && n > 0; ++pass) {
    const int32_t shift = 32 + 8 * pass;
    uint32_t* h = hist[pass];
    if (h[(a[0] >> shift) & 0xff] == n) continue;  // one digit: no-op pass
    uint32_t sum = 0;
    for (int32_t d = 0; d < 256; ++d) {
      const uint32_t c = h[d];
      h[d] = sum;
      sum += c;
    }
    for (uint32_t i = 0; i < n; ++i) b[h[(a[i] >> shift) & 0xff]++] = a[i];
    std::swap(a, b);
  }
  double* ix = wk.item_x.data();
  int32_t* ie = wk.item_e.data();
  int32_t* ilo = wk.item_lo.data();
  const int32_t* egroup = exp_group_.data();
  // Grouped by node, largest first within a node: a packing keeps each
  // replica in its expert's node, so the nodes pack independently and this
  // order gives the same placement as the global one; consecutive replicas
  // then update the same few ranks (predictable store-to-load forwarding
  // instead of loads that may or may not alias the last placement).
  const int32_t M = hier_ ? s.num_nodes : 1;
  int32_t* fill = wk.node_fill.data();
  std::fill(fill, fill + M + 1, 0);
  if (hier_) {
    for (uint32_t i = 0; i < n; ++i) {
      const int32_t e = static_cast<int32_t>(a[i] & 0xffffffffu);
      fill[gnode[egroup[e]] + 1] += tcnt[e];
    }
    for (int32_t j = 0; j < M; ++j) fill[j + 1] += fill[j];
  }
  for (uint32_t i = 0; i < n; ++i) {
    const int32_t e = static_cast<int32_t>(a[i] & 0xffffffffu);
    const double x = share[e];
    const int32_t node = hier_ ? gnode[egroup[e]] : 0;
    const int32_t lo = node * R;  // first rank of the expert's node
    int32_t m = fill[node];
    for (int32_t k = 0; k < tcnt[e]; ++k, ++m) {
      ix[m] = x;
      ie[m] = e;
      ilo[m] = lo;
    }
    fill[node] = m;
  }
  const int32_t m = fill[M - 1];  // the last node ends the items
  wk.num_items = m;
}

namespace {
// Least loaded rank of [lo, lo + span) by eff (a full rank's is +inf), the
// lowest on ties; written without data-dependent branches (the loads are
// unpredictable). Eight ranks (a node of 8 GPUs) reduce as a tree: a shorter
// dependency chain than the scan, with the same result (the right half wins
// only when strictly less, so the lowest index among the minima wins).
inline int32_t LeastLoaded(const double* eff, int32_t lo, int32_t span) {
  if (span == 8) {
    const double* v = eff + lo;
    const bool c1 = v[1] < v[0], c3 = v[3] < v[2], c5 = v[5] < v[4], c7 = v[7] < v[6];
    const int32_t i01 = c1 ? 1 : 0, i23 = c3 ? 3 : 2, i45 = c5 ? 5 : 4, i67 = c7 ? 7 : 6;
    const double m01 = c1 ? v[1] : v[0], m23 = c3 ? v[3] : v[2];
    const double m45 = c5 ? v[5] : v[4], m67 = c7 ? v[7] : v[6];
    const bool c03 = m23 < m01, c47 = m67 < m45;
    const int32_t i03 = c03 ? i23 : i01, i47 = c47 ? i67 : i45;
    const double m03 = c03 ? m23 : m01, m47 = c47 ? m67 : m45;
    return lo + (m47 < m03 ? i47 : i03);
  }
  int32_t best = lo;
  double best_load = eff[lo];
  for (int32_t r = lo + 1; r < lo + span; ++r) {
    const double v = eff[r];
    const bool better = v < best_load;
    best = better ? r : best;
    best_load = better ? v : best_load;
  }
  return best;
}

// v[b]: byte j is bit j of b (8 byte counters, one add per mask).
struct SpreadBits {
  uint64_t v[256];
  constexpr SpreadBits() : v() {
    for (int32_t b = 0; b < 256; ++b)
      for (int32_t j = 0; j < 8; ++j) v[b] |= static_cast<uint64_t>((b >> j) & 1) << (8 * j);
  }
};
constexpr SpreadBits kSpreadBits;

// An optimal permutation of the n x n assignment: when every row has a
// strict maximum and those columns differ, that permutation is the unique
// optimum (any other loses in some row and gains in none), which the exact
// solver would return too; otherwise the solver. Why: relabelling a fresh
// plan onto a placement it resembles mostly gives such matrices, and the
// solver was a tenth of a call.
void SolvePerm(AssignmentSolver& solver, int32_t n, const int64_t* w, int32_t* perm) {
  if (n <= 64) {
    uint64_t cols = 0;
    bool ok = true;
    for (int32_t i = 0; i < n && ok; ++i) {
      const int64_t* row = w + static_cast<size_t>(i) * n;
      int32_t best = 0;
      bool unique = true;
      for (int32_t j = 1; j < n; ++j) {
        if (row[j] > row[best]) {
          best = j;
          unique = true;
        } else if (row[j] == row[best]) {
          unique = false;
        }
      }
      ok = unique && ((cols >> best) & 1u) == 0;
      cols |= uint64_t{1} << best;
      perm[i] = best;
    }
    if (ok) return;
  }
  solver.SolveMax(n, w, perm);
}
}  // namespace

// Packs the prepared replicas (by node, largest first) keeping a replica on a rank
// that held its expert in `old` (IndexOld) while that rank stays <= cap, the
// least loaded such rank; otherwise onto the least loaded rank with a free
// slot of the expert's node: at once (inline_leftover) or after every
// replica that can stay. Why inline for the tight candidate: deferring lets the
// kept replicas fill ranks up to the cap and the displaced large replicas
// land on top of them (on synthetic drift, deferred packings at the fresh
// plan's max balanced ~0.08 worse). Kept replicas keep their old slot; the
// others fill the freed slots of their rank in packing order. Writes out[P].
void ChurnPlanner::StickyPlan(Work& wk, const PlanShape& s, const int32_t* old, double cap,
                              bool inline_leftover, int32_t* out, double* max_load,
                              int64_t* new_holdings) const {
  const int32_t P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = slots_per_rank_;
  const int32_t span = hier_ ? ranks_per_node_ : N;
  const int32_t n = wk.num_items;
  const int32_t W = wk.words;
  const double* ix = wk.item_x.data();
  const int32_t* ie = wk.item_e.data();
  const int32_t* ilo = wk.item_lo.data();
  const int32_t* ostart = wk.old_start.data();
  const int32_t* oslot = wk.old_slots.data();
  const int32_t* orank = wk.old_rank.data();
  const uint64_t* obits = wk.old_bits.data();
  // Rank N and slot P are sinks: the loops below write a replica that does
  // not take a rank (deferred) or a slot (kept) there instead of branching
  // on whether it does (which is unpredictable).
  double* load = wk.pack_load.data();   // [N + 1]
  double* eff = wk.eff.data();          // [N + 1] load, or +inf once the rank is full
  int32_t* fre = wk.free.data();        // [N + 1]
  int32_t* used = wk.slot_used.data();  // [P + 1]
  int32_t* arank = wk.assign_rank.data();
  int32_t* kept = wk.kept_slot.data();
  int32_t* left = wk.leftover.data();
  const double kFull = std::numeric_limits<double>::infinity();
  for (int32_t r = 0; r <= N; ++r) {
    load[r] = 0.0;
    fre[r] = S;
    eff[r] = S != 0 ? 0.0 : kFull;
  }
  std::fill(used, used + P + 1, 0);
  auto place = [&](int32_t r, double x) {
    load[r] += x;
    const int32_t f = --fre[r];
    eff[r] = f != 0 ? load[r] : kFull;
  };
  int32_t num_left = 0;
  for (int32_t k = 0; k < n; ++k) {
    const int32_t e = ie[k];
    const double x = ix[k];
    const int32_t lo = ilo[k];
    // The old slots of e, ascending: the first unused one of each rank is
    // the candidate (ranks outside the node cannot keep it). A full rank's
    // eff is +inf, which fails the cap.
    int32_t best_slot = -1, best_rank = N;
    double best_load = kFull;
    for (int32_t i = ostart[e]; i < ostart[e + 1]; ++i) {
      const int32_t p = oslot[i], r = orank[i];
      const double v = eff[r];
      // Branch-free: whether a slot can keep its expert is unpredictable.
      const bool ok = (used[p] == 0) &
                      (static_cast<uint32_t>(r - lo) < static_cast<uint32_t>(span)) &
                      (v + x <= cap) & (v < best_load);
      best_slot = ok ? p : best_slot;
      best_rank = ok ? r : best_rank;
      best_load = ok ? v : best_load;
    }
    const bool keep = best_slot >= 0;
    used[keep ? best_slot : P] = 1;
    kept[k] = best_slot;
    int32_t r = best_rank;  // N (the sink) when not kept
    if (inline_leftover && !keep) {
      // A branch: predicted, it keeps the least loaded rank off the chain
      // of the replicas that stay.
      r = LeastLoaded(eff, lo, span);
      EPLB_ASSERT(eff[r] < kFull);  // a node's slots equal its groups' replicas
    } else if (!inline_leftover) {
      left[num_left] = k;
      num_left += keep ? 0 : 1;
    }
    place(r, x);
    arank[k] = r;
  }
  for (int32_t j = 0; j < num_left; ++j) {
    const int32_t k = left[j];
    const int32_t r = LeastLoaded(eff, ilo[k], span);
    EPLB_ASSERT(eff[r] < kFull);
    place(r, ix[k]);
    arank[k] = r;
  }
  // Free slots of each rank in slot order (flist from r * S), filled in
  // packing order. A replica that did not keep a slot is a new holding
  // unless its rank held the expert or took another replica of it (the
  // replicas of an expert are adjacent in the items: mark[r] is the expert
  // rank r last took).
  int32_t* tmp = wk.out_tmp.data();      // [P + 1]
  int32_t* flist = wk.free_list.data();  // [P + 1]
  int32_t* cur = wk.cursor.data();
  int32_t* mark = wk.mark.data();
  for (int32_t r = 0; r < N; ++r) {
    int32_t c = r * S;
    for (int32_t p = r * S; p < (r + 1) * S; ++p) {
      flist[c] = p;
      c += used[p] ^ 1;
    }
    cur[r] = r * S;
    mark[r] = -1;
  }
  flist[P] = P;  // read (not used) by a kept replica of a rank whose free slots are taken
  for (int32_t p = 0; p < P; ++p) tmp[p] = used[p] ? old[p] : -1;
  int64_t holdings = 0;
  for (int32_t k = 0; k < n; ++k) {
    const int32_t e = ie[k], r = arank[k];
    const int32_t keep = kept[k] >= 0;
    const int32_t seen = mark[r] == e;
    mark[r] = e;
    const int32_t c = cur[r];
    cur[r] = c + (keep ^ 1);
    tmp[keep ? P : flist[c]] = e;
    const int32_t held =
        static_cast<int32_t>((obits[static_cast<size_t>(r) * W + (e >> 6)] >> (e & 63)) & 1u);
    holdings += (keep | seen | held) ^ 1;
  }
  std::copy(tmp, tmp + P, out);
  double mx = 0.0;
  for (int32_t r = 0; r < N; ++r) mx = std::max(mx, load[r]);
  *max_load = mx;
  *new_holdings = holdings;
}

// Relabels the fresh plan fr (reference order) onto the old placement (after
// IndexOld): nodes, then ranks within each node, by exact maximum assignment
// of the (rank, expert) pairs they share with the old placement; an expert
// the old rank held keeps its old slot. The loads per rank are the fresh
// plan's. Why not the planner's migration FULL: the same idea, but it also
// fixes slot order by its own rules, and it was a quarter of a call. Writes
// out[P] and its new holdings (CountNewHoldings of the layer: per rank, the
// distinct experts its old placement lacked); wk.gnode receives the
// relabelled group -> node map.
void ChurnPlanner::RelabelFresh(Work& wk, const PlanShape& s, const int32_t* fr, const int32_t* old,
                                int32_t* out, int64_t* new_holdings) const {
  const int32_t P = s.num_physical_experts, N = s.num_ranks, S = slots_per_rank_;
  const int32_t R = ranks_per_node_, M = hier_ ? s.num_nodes : 1;
  const int32_t G = hier_ ? s.num_groups : 1;
  int32_t* gnode = wk.gnode.data();
  int32_t* node_perm = wk.node_perm.data();
  int32_t* rank_perm = wk.rank_perm.data();
  int32_t* perm = wk.perm_scratch.data();
  int64_t* ov = wk.overlap.data();
  const int32_t* egroup = exp_group_.data();
  const int32_t* snode = slot_node_.data();
  const int32_t* ostart = wk.old_start.data();
  const int32_t* oslot = wk.old_slots.data();
  const int32_t* orank = wk.old_rank.data();
  std::fill(gnode, gnode + G, 0);
  if (hier_) {
    for (int32_t p = 0; p < P; ++p) gnode[egroup[fr[p]]] = snode[p];
    std::fill(ov, ov + static_cast<size_t>(M) * M, 0);
    for (int32_t p = 0; p < P; ++p) ++ov[static_cast<size_t>(gnode[egroup[old[p]]]) * M + snode[p]];
    SolvePerm(wk.assign, M, ov, node_perm);
    for (int32_t g = 0; g < G; ++g) gnode[g] = node_perm[gnode[g]];
  } else {
    node_perm[0] = 0;
  }
  // Per fresh node a (now node node_perm[a]): overlap of its ranks with the
  // ranks of the target node, counted per slot of the fresh rank whose
  // expert the old rank holds.
  // Up to 8 ranks per node, 64 ranks and 255 slots per rank: a fresh rank's
  // row is 8 byte counters in one word, each slot adding the byte-spread
  // mask of the target node's ranks that held its expert (wk.old_holders).
  const bool packed = R <= 8 && N <= 64 && S <= 255;
  const uint64_t* holders = wk.old_holders.data();
  for (int32_t a = 0; a < M; ++a) {
    const int32_t blo = node_perm[a] * R;
    if (packed) {
      const uint64_t node_mask = (uint64_t{1} << R) - 1;
      for (int32_t i = 0; i < R; ++i) {
        const int32_t fr_rank = a * R + i;
        uint64_t acc = 0;
        for (int32_t p = fr_rank * S; p < (fr_rank + 1) * S; ++p)
          acc += kSpreadBits.v[(holders[fr[p]] >> blo) & node_mask];
        int64_t* row = ov + static_cast<size_t>(i) * R;
        for (int32_t j = 0; j < R; ++j) row[j] = static_cast<int64_t>((acc >> (8 * j)) & 0xffu);
      }
    } else {
      std::fill(ov, ov + static_cast<size_t>(R) * R, 0);
      for (int32_t i = 0; i < R; ++i) {
        const int32_t fr_rank = a * R + i;
        int64_t* row = ov + static_cast<size_t>(i) * R;
        for (int32_t p = fr_rank * S; p < (fr_rank + 1) * S; ++p) {
          const int32_t e = fr[p];
          int32_t last = -1;
          for (int32_t k = ostart[e]; k < ostart[e + 1]; ++k) {
            const int32_t r = orank[k];
            if (r == last || static_cast<uint32_t>(r - blo) >= static_cast<uint32_t>(R)) continue;
            last = r;
            ++row[r - blo];
          }
        }
      }
    }
    SolvePerm(wk.assign, R, ov, perm);
    for (int32_t i = 0; i < R; ++i) rank_perm[a * R + i] = blo + perm[i];
  }
  // Fresh rank f -> rank rank_perm[f]: experts the old rank held keep a
  // slot holding them; the rest fill the free slots in fresh slot order.
  int32_t* used = wk.slot_used.data();
  int32_t* kept = wk.kept_slot.data();  // per fresh slot: its replica kept an old slot
  std::fill(used, used + P, 0);
  std::fill(kept, kept + P, 0);
  for (int32_t p = 0; p < P; ++p) out[p] = -1;
  int64_t holdings = 0;
  for (int32_t f = 0; f < N; ++f) {
    const int32_t r = rank_perm[f];
    for (int32_t p = f * S; p < (f + 1) * S; ++p) {
      const int32_t e = fr[p];
      bool held = false;
      for (int32_t k = ostart[e]; k < ostart[e + 1]; ++k) {
        if (orank[k] != r) continue;
        held = true;
        const int32_t q = oslot[k];
        if (used[q]) continue;
        used[q] = 1;
        out[q] = e;
        kept[p] = 1;
        break;
      }
      if (held) continue;
      // New on r unless an earlier slot of this fresh rank holds e too.
      bool dup = false;
      for (int32_t q = f * S; q < p; ++q) dup |= fr[q] == e;
      holdings += dup ? 0 : 1;
    }
  }
  for (int32_t f = 0; f < N; ++f) {
    const int32_t r = rank_perm[f];
    int32_t c = r * S;
    for (int32_t p = f * S; p < (f + 1) * S; ++p) {
      if (kept[p]) continue;
      while (out[c] >= 0) ++c;
      out[c] = fr[p];
    }
  }
  *new_holdings = holdings;
}

// Finds the layer's best single move (or the switch) by gain per new
// holding; stores it in ly and returns its ratio (0 when none gains).
double ChurnPlanner::BestMove(const PlanShape& s, Layer& ly, const double* w, double total,
                              int64_t max_cost) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = slots_per_rank_;
  const double L = s.num_layers;
  ly.kind = 0;
  ly.ratio = 0.0;
  ly.gain = 0.0;
  ly.cost = 0;
  ly.num_edits = 0;
  if (ly.max_load <= 0.0 || total <= 0.0) return 0.0;
  const double mean = ly.mean;
  const double base_bal = mean / ly.max_load;

  // Ranks by load, descending (index on ties); only the single moves read
  // the order.
  int32_t top = 0;
  if (single_moves_) {
    for (int32_t r = 0; r < N; ++r) order_[r] = r;
    std::sort(order_.begin(), order_.begin() + N, [&](int32_t a, int32_t b) {
      if (ly.rank_load[a] != ly.rank_load[b]) return ly.rank_load[a] > ly.rank_load[b];
      return a < b;
    });
    top = order_[0];
  }
  const double M = ly.rank_load[top];
  const int32_t top_node = hier_ ? top / ranks_per_node_ : 0;

  // Distinct holder ranks of each expert (CSR), ascending rank; only the
  // single moves read it.
  if (single_moves_) {
    std::fill(holders_start_.begin(), holders_start_.begin() + E + 1, 0);
    for (int32_t r = 0; r < N; ++r)
      for (int32_t e = 0; e < E; ++e)
        if (ly.held[static_cast<size_t>(r) * E + e] > 0) ++holders_start_[e + 1];
    for (int32_t e = 0; e < E; ++e) holders_start_[e + 1] += holders_start_[e];
    {
      std::vector<int32_t>& fill = holders_fill_;
      for (int32_t e = 0; e < E; ++e) fill[e] = holders_start_[e];
      for (int32_t r = 0; r < N; ++r)
        for (int32_t e = 0; e < E; ++e)
          if (ly.held[static_cast<size_t>(r) * E + e] > 0) holders_[fill[e]++] = r;
    }
  }

  double best_ratio = 0.0, best_gain = 0.0;
  int64_t best_cost = 0;
  int32_t best_edit_slot[2] = {-1, -1}, best_edit_expert[2] = {-1, -1}, best_edits = 0;

  // Evaluates a move: slot i1 -> x1 (was y1), optional slot i2 -> x2 (was y2),
  // where the experts involved are {e1, e2} (distinct) with new counts c1, c2.
  struct Delta {
    int32_t rank, expert, dh;
  };
  auto eval = [&](int32_t e1, int32_t c1, int32_t e2, int32_t c2, const Delta* d, int32_t nd,
                  int32_t i1, int32_t x1, int32_t i2, int32_t x2) {
    if (++stamp_value_ == 0x7fffffff) {
      std::fill(stamp_.begin(), stamp_.end(), 0);
      stamp_value_ = 1;
    }
    const int32_t st = stamp_value_;
    auto hnew = [&](int32_t r, int32_t e) {
      int32_t h = ly.held[static_cast<size_t>(r) * E + e];
      for (int32_t k = 0; k < nd; ++k)
        if (d[k].rank == r && d[k].expert == e) h += d[k].dh;
      return h;
    };
    const double o1 = w[e1] / ly.cnt[e1], n1 = w[e1] / c1;
    const double o2 = w[e2] / ly.cnt[e2], n2 = w[e2] / c2;
    double newmax = 0.0;
    auto visit = [&](int32_t r) {
      if (stamp_[r] == st) return;
      stamp_[r] = st;
      const int32_t h1 = ly.held[static_cast<size_t>(r) * E + e1];
      const int32_t h2 = ly.held[static_cast<size_t>(r) * E + e2];
      const double v = ly.rank_load[r] - h1 * o1 - h2 * o2 + hnew(r, e1) * n1 + hnew(r, e2) * n2;
      if (v > newmax) newmax = v;
    };
    for (int32_t k = holders_start_[e1]; k < holders_start_[e1 + 1]; ++k) visit(holders_[k]);
    for (int32_t k = holders_start_[e2]; k < holders_start_[e2 + 1]; ++k) visit(holders_[k]);
    for (int32_t k = 0; k < nd; ++k) visit(d[k].rank);
    for (int32_t k = 0; k < N; ++k) {
      if (stamp_[order_[k]] != st) {
        if (ly.rank_load[order_[k]] > newmax) newmax = ly.rank_load[order_[k]];
        break;
      }
    }
    if (!(newmax < M)) return;
    const double gain = (mean / newmax - base_bal) / L;
    if (!(gain > 0.0)) return;
    int64_t cost = 0;
    for (int32_t k = 0; k < nd; ++k) {
      const size_t idx = static_cast<size_t>(d[k].rank) * E + d[k].expert;
      const bool before = ly.held[idx] > 0 && !ly.old_held[idx];
      const bool after = ly.held[idx] + d[k].dh > 0 && !ly.old_held[idx];
      cost += static_cast<int64_t>(after) - static_cast<int64_t>(before);
    }
    if (cost > max_cost) return;
    const double ratio = cost <= 0 ? kFreeRatio + gain : gain / static_cast<double>(cost);
    if (ratio > best_ratio) {
      best_ratio = ratio;
      best_gain = gain;
      best_cost = cost;
      best_edit_slot[0] = i1;
      best_edit_expert[0] = x1;
      best_edit_slot[1] = i2;
      best_edit_expert[1] = x2;
      best_edits = i2 >= 0 ? 2 : 1;
    }
  };

  const int32_t r_lo = hier_ ? top_node * ranks_per_node_ : 0;
  const int32_t r_hi = hier_ ? r_lo + ranks_per_node_ : N;
  const int32_t scan_end = single_moves_ ? (top + 1) * S : top * S;
  for (int32_t i = top * S; i < scan_end; ++i) {
    const int32_t a = ly.slots[i];
    const double la = w[a] / ly.cnt[a];
    // swap: slot i (a) <-> slot j (b) of another rank in the same node.
    for (int32_t r = r_lo; r < r_hi; ++r) {
      if (r == top) continue;
      for (int32_t j = r * S; j < (r + 1) * S; ++j) {
        const int32_t b = ly.slots[j];
        if (b == a || !(w[b] / ly.cnt[b] < la)) continue;
        const Delta d[4] = {{top, a, -1}, {top, b, +1}, {r, b, -1}, {r, a, +1}};
        eval(a, ly.cnt[a], b, ly.cnt[b], d, 4, i, b, j, a);
      }
    }
    // shed: slot i gives up a surplus replica of a to expert b.
    if (ly.cnt[a] >= 2) {
      for (int32_t b = 0; b < E; ++b) {
        if (b == a) continue;
        if (hier_ && ly.group_node[b / experts_per_group_] != top_node) continue;
        const Delta d[2] = {{top, a, -1}, {top, b, +1}};
        eval(a, ly.cnt[a] - 1, b, ly.cnt[b] + 1, d, 2, i, b, -1, -1);
      }
    }
    // replicate: a slot j of another rank holding a surplus replica of x
    // becomes a new replica of a. Only the first slot of a on top is tried.
    bool first = true;
    for (int32_t k = top * S; k < i; ++k) first = first && ly.slots[k] != a;
    if (!first) continue;
    for (int32_t r = r_lo; r < r_hi; ++r) {
      if (r == top) continue;
      for (int32_t j = r * S; j < (r + 1) * S; ++j) {
        const int32_t x = ly.slots[j];
        if (x == a || ly.cnt[x] < 2) continue;
        const Delta d[2] = {{r, x, -1}, {r, a, +1}};
        eval(a, ly.cnt[a] + 1, x, ly.cnt[x] - 1, d, 2, j, a, -1, -1);
      }
    }
  }
  (void)P;

  if (best_ratio > 0.0) {
    ly.kind = 1;
    ly.ratio = best_ratio;
    ly.gain = best_gain;
    ly.cost = best_cost;
    ly.num_edits = best_edits;
    for (int32_t k = 0; k < 2; ++k) {
      ly.edit_slot[k] = best_edit_slot[k];
      ly.edit_expert[k] = best_edit_expert[k];
    }
  }
  // switch: a candidate placement, when it beats both the layer and the
  // best move.
  for (int32_t k = 0; k < ly.num_cands; ++k) {
    const Layer::Cand& c = ly.cands[k];
    if (!c.valid || !(c.max > 0.0) || !(c.max < ly.max_load)) continue;
    const double gain = (mean / c.max - base_bal) / L;
    const int64_t cost = c.holdings - ly.new_holdings;
    if (cost > max_cost) continue;
    const double ratio = cost <= 0 ? kFreeRatio + gain : gain / static_cast<double>(cost);
    if (gain > 0.0 && ratio > ly.ratio) {
      ly.kind = 2;
      ly.cand = k;
      ly.ratio = ratio;
      ly.gain = gain;
      ly.cost = cost;
    }
  }
  return ly.ratio;
}

// Max rank load of placement pl [P] on w (counts from pl itself).
double ChurnPlanner::MaxLoad(Work& wk, const PlanShape& s, const double* w,
                             const int32_t* pl) const {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  std::fill(wk.score_cnt.begin(), wk.score_cnt.begin() + E, 0);
  for (int32_t p = 0; p < P; ++p) ++wk.score_cnt[pl[p]];
  double mx = 0.0;
  for (int32_t r = 0; r < N; ++r) {
    double acc = 0.0;
    for (int32_t p = r * slots_per_rank_; p < (r + 1) * slots_per_rank_; ++p)
      acc += w[pl[p]] / wk.score_cnt[pl[p]];
    if (acc > mx) mx = acc;
  }
  return mx;
}

// Builds layer l's candidates on w from the layer's placement ol and stores
// them in the layer's cache: the fresh plan of the base policy relabelled
// onto ol, and two sticky packings of its replica counts and group -> node
// map: inline at the fresh plan's max (near its balance at a fraction of its
// churn) and deferred at (1 + sticky_slack) times it (fewest new holdings).
void ChurnPlanner::BuildCandidates(Work& wk, const PlanShape& s, Policy base, const ChurnOptions& o,
                                   int32_t l, const double* w, double total, const int32_t* ol) {
  Layer& ly = layers_[l];
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  ly.cache_valid = true;
  ly.cand_base.assign(ol, ol + P);
  ly.fresh.resize(P);
  ly.num_cands = 0;
  ly.cands.reserve(3);  // references to candidates stay valid below
  auto next_cand = [&]() -> Layer::Cand& {
    if (ly.cands.size() <= static_cast<size_t>(ly.num_cands)) ly.cands.emplace_back();
    Layer::Cand& c = ly.cands[ly.num_cands++];
    c.pl.resize(P);
    return c;
  };
  ly.built = true;
  IndexOld(wk, s, ol);
  if (total <= 0.0) {
    // No load at all: any valid plan balances. Only a split layer needs
    // one (the base plan on zeros).
    ly.fresh_max = 0.0;
    ly.cand_bal = 1.0;
    ly.fresh.assign(ol, ol + P);  // scored by the reuse test next call
    if (ly.split) {
      std::fill(wk.scaled.begin(), wk.scaled.end(), 0);
      wk.planner.PlanLayer(s, base, Migration::kNone, wk.scaled.data(), nullptr, ly.fresh.data(),
                           wk.target_cnt.data());
      Layer::Cand& c = next_cand();
      RelabelFresh(wk, s, ly.fresh.data(), ol, c.pl.data(), &c.holdings);
      c.max = MaxLoad(wk, s, w, c.pl.data());
    }
    return;
  }
  // 2^50 / total, so that the scaled sums stay below 2^53. Below 2^-960 the
  // quotient would overflow (a valid estimate may be that small: only
  // ratios matter), so such loads are first scaled up by an exact power of
  // two; above it the factor is 2^0 and nothing changes.
  const int up = total < 0x1p-960 ? -std::ilogb(total) : 0;
  const double scale = 1125899906842624.0 / std::ldexp(total, up);
  for (int32_t e = 0; e < E; ++e)
    wk.scaled[e] = static_cast<int64_t>(std::ldexp(w[e], up) * scale);  // >= 0: floor
  wk.planner.PlanLayer(s, base, Migration::kNone, wk.scaled.data(), nullptr, ly.fresh.data(),
                       wk.target_cnt.data());
  // A replica's load, then the fresh plan's max rank load (as MaxLoad: its
  // counts are target_cnt).
  const int32_t* tcnt = wk.target_cnt.data();
  double* share = wk.share.data();
  for (int32_t e = 0; e < E; ++e) share[e] = tcnt[e] > 0 ? w[e] / tcnt[e] : 0.0;
  double tmax = 0.0;
  {
    const int32_t* fr = ly.fresh.data();
    for (int32_t r = 0; r < s.num_ranks; ++r) {
      double acc = 0.0;
      for (int32_t p = r * slots_per_rank_; p < (r + 1) * slots_per_rank_; ++p) acc += share[fr[p]];
      if (acc > tmax) tmax = acc;
    }
  }
  ly.fresh_max = tmax;
  ly.cand_bal = tmax > 0.0 ? ly.mean / tmax : 1.0;
  Layer::Cand& fresh = next_cand();
  RelabelFresh(wk, s, ly.fresh.data(), ol, fresh.pl.data(), &fresh.holdings);
  fresh.max = tmax;  // relabelling keeps every rank's load
  if (o.sticky_slack < 0.0 || ly.split) return;
  PrepareSticky(wk, s, wk.gnode.data(), tcnt);
  Layer::Cand& tight = next_cand();
  StickyPlan(wk, s, ol, tmax, true, tight.pl.data(), &tight.max, &tight.holdings);
  Layer::Cand& loose = next_cand();
  StickyPlan(wk, s, ol, tmax * (1.0 + o.sticky_slack), false, loose.pl.data(), &loose.max,
             &loose.holdings);
}

ChurnResult ChurnPlanner::Plan(const PlanShape& s, const ChurnOptions& o, const int64_t* load,
                               const int32_t* old, int32_t* phy2log, int32_t* logcnt,
                               int32_t* log2phy) {
  ValidateShape(s);
  const Policy base = BasePolicy(s, Policy::kChurnAware);
  ValidateLoads(s, load);
  EPLB_CHECK_ARG(old != nullptr, "h_old_phy2log is NULL (the churn-aware policy starts from it)");
  ValidatePlacement(s, old, "h_old_phy2log");
  ValidateChurnOptions(s, o);

  const int32_t L = s.num_layers, E = s.num_logical_experts, P = s.num_physical_experts;
  const int32_t N = s.num_ranks;
  single_moves_ = o.single_moves;
  hier_ = base == Policy::kHierarchical && s.num_nodes > 1;
  slots_per_rank_ = P / N;
  ranks_per_node_ = hier_ ? N / s.num_nodes : N;
  experts_per_group_ = hier_ ? E / s.num_groups : E;
  // Rank and node of each slot, group of each expert: the inner loops read
  // these instead of dividing (integer divisions in the per-slot loops of
  // the relabelling and the packings were a tenth of a call).
  slot_rank_.resize(P);
  slot_node_.resize(P);
  for (int32_t r = 0, p = 0; r < N; ++r)
    for (int32_t k = 0; k < slots_per_rank_; ++k, ++p) {
      slot_rank_[p] = r;
      slot_node_[p] = hier_ ? r / ranks_per_node_ : 0;
    }
  exp_group_.resize(E);
  for (int32_t e = 0; e < E; ++e) exp_group_[e] = hier_ ? e / experts_per_group_ : 0;
  const int32_t G = hier_ ? s.num_groups : 1;

  // The cache holds for one shape and one candidate construction.
  const bool same_key = cache_shape_.num_layers == L && cache_shape_.num_logical_experts == E &&
                        cache_shape_.num_physical_experts == P && cache_shape_.num_ranks == N &&
                        cache_shape_.num_groups == s.num_groups &&
                        cache_shape_.num_nodes == s.num_nodes && cache_slack_ == o.sticky_slack;
  if (!same_key) {
    for (Layer& ly : layers_) ly.cache_valid = false;
    cache_shape_ = s;
    cache_slack_ = o.sticky_slack;
  }
  const size_t LE = static_cast<size_t>(L) * E;
  const double* estimate = o.load_estimate;
  if (estimate == nullptr) {
    estimate_.resize(LE);
    for (size_t i = 0; i < LE; ++i) estimate_[i] = static_cast<double>(load[i]);
    estimate = estimate_.data();
  }
  if (layers_.size() < static_cast<size_t>(L)) layers_.resize(L);
  order_.resize(N);
  holders_start_.resize(E + 1);
  holders_.resize(static_cast<size_t>(P) + N);
  holders_fill_.resize(E);
  if (stamp_.size() != static_cast<size_t>(N)) {
    stamp_.assign(N, 0);
    stamp_value_ = 0;
  }
  totals_.resize(L);
  before_.resize(L);

  // Per-layer state and candidates: layers are independent, so they are
  // split over threads, each with its own Work (planner and scratch) and
  // writing only its layers' slots (layers_[l], totals_[l], before_[l]).
  // Every value is computed by the same code from the same inputs whatever
  // the thread count; the sums over layers below run serially in layer
  // order, so results do not depend on it.
  // No more Works than ParallelRanges can use (kMinLayersPerThread each).
  const int32_t threads =
      std::min(threads_ > 0 ? threads_ : DefaultHostThreads(),
               std::max<int32_t>(1, (L + kMinLayersPerThread - 1) / kMinLayersPerThread));
  while (work_.size() < static_cast<size_t>(threads)) work_.push_back(std::make_unique<Work>());
  for (int32_t t = 0; t < threads; ++t) {
    work_[static_cast<size_t>(t)]->Size(E, P, N, hier_ ? s.num_nodes : 1, ranks_per_node_, G);
  }
  ParallelRanges(L, threads, kMinLayersPerThread, [&](int32_t begin, int32_t end, int32_t t) {
    Work& wk = *work_[static_cast<size_t>(t)];
    for (int32_t l = begin; l < end; ++l) {
      Layer& ly = layers_[l];
      const double* w = estimate + static_cast<size_t>(l) * E;
      const int32_t* ol = old + static_cast<size_t>(l) * P;
      ly.built = false;
      ly.slots.assign(ol, ol + P);
      ly.cnt.resize(E);
      ly.rank_load.resize(N);
      ly.group_node.resize(G);
      if (single_moves_) {
        ly.held.assign(static_cast<size_t>(N) * E, 0);
        ly.old_held.assign(static_cast<size_t>(N) * E, 0);
        for (int32_t p = 0; p < P; ++p) {
          const size_t idx = static_cast<size_t>(slot_rank_[p]) * E + ol[p];
          ++ly.held[idx];
          ly.old_held[idx] = 1;
        }
      }
      ly.new_holdings = 0;
      ly.moves = 0;
      double total = 0.0;
      for (int32_t e = 0; e < E; ++e) total += w[e];
      totals_[l] = total;
      ly.mean = total / N;
      Rebuild(s, ly, w);
      before_[l] = ly.max_load > 0.0 ? ly.mean / ly.max_load : 1.0;

      // Reuse the cached candidates while they were built from this
      // placement and the fresh plan still balances the forecast within the
      // tolerance; re-score them on the forecast. Otherwise rebuild them. A
      // layer that splits a group, and every layer of a warm-up, always
      // rebuilds: it takes the fresh plan, which must be the current
      // forecast's.
      const bool forced = ly.split || o.max_moved_fraction >= 1.0;
      bool reuse = o.refresh_tolerance >= 0.0 && ly.cache_valid && !forced &&
                   std::equal(ol, ol + P, ly.cand_base.begin());
      if (reuse) {
        ly.fresh_max = MaxLoad(wk, s, w, ly.fresh.data());
        const double bal = ly.fresh_max > 0.0 ? ly.mean / ly.fresh_max : 1.0;
        reuse = !(bal < ly.cand_bal - o.refresh_tolerance);
      }
      if (reuse) {
        for (int32_t k = 0; k < ly.num_cands; ++k)
          ly.cands[k].max = MaxLoad(wk, s, w, ly.cands[k].pl.data());
      } else {
        BuildCandidates(wk, s, base, o, l, w, total, ol);
      }
      for (int32_t k = 0; k < ly.num_cands; ++k) ly.cands[k].valid = true;
    }
  });
  double before = 0.0;
  int32_t built = 0;
  for (int32_t l = 0; l < L; ++l) {
    before += before_[l];
    built += layers_[l].built ? 1 : 0;
  }

  ChurnResult res;
  res.budget = static_cast<int64_t>(std::floor(o.max_moved_fraction * L * P));
  res.predicted_before = before / L;

  // Adopts plan `tgt` (a candidate of layer l), holding `holdings`.
  auto do_switch = [&](int32_t l, const int32_t* tgt, int64_t holdings) {
    Layer& ly = layers_[l];
    if (single_moves_) {
      for (int32_t p = 0; p < P; ++p) {
        const int32_t r = slot_rank_[p];
        --ly.held[static_cast<size_t>(r) * E + ly.slots[p]];
      }
      for (int32_t p = 0; p < P; ++p) {
        const int32_t r = slot_rank_[p];
        ++ly.held[static_cast<size_t>(r) * E + tgt[p]];
      }
    }
    ly.slots.assign(tgt, tgt + P);
    ly.new_holdings = holdings;
    Rebuild(s, ly, estimate + static_cast<size_t>(l) * E);
  };
  auto take_cand = [&](int32_t l, int32_t k) {
    Layer& ly = layers_[l];
    do_switch(l, ly.cands[k].pl.data(), ly.cands[k].holdings);
    ly.cands[k].valid = false;  // taken
  };

  // Forced: a layer that splits a group over nodes cannot be improved by
  // moves that keep groups whole; it takes the fresh plan.
  for (int32_t l = 0; l < L; ++l) {
    if (!layers_[l].split) continue;
    EPLB_ASSERT(layers_[l].num_cands > 0);
    take_cand(l, 0);  // the fresh plan
    res.forced_holdings += layers_[l].new_holdings;
    ++res.forced_layers;
  }

  // An unlimited budget (warm-up) starts every layer from the fresh plan:
  // the planner's packing is a better start than any arbitrary placement.
  if (o.max_moved_fraction >= 1.0) {
    for (int32_t l = 0; l < L; ++l) {
      Layer& ly = layers_[l];
      if (ly.num_cands > 0 && ly.cands[0].valid && ly.cands[0].max < ly.max_load) {
        take_cand(l, 0);  // the fresh plan
        ++res.switched_layers;
      }
    }
  }

  // Greedy over layers by gain per new holding, under the budget.
  using Entry = std::pair<double, int32_t>;  // (ratio, -layer): max-heap
  heap_.clear();
  for (int32_t l = 0; l < L; ++l) {
    const double* w = estimate + static_cast<size_t>(l) * E;
    if (BestMove(s, layers_[l], w, totals_[l]) > 0.0) {
      heap_.push_back({layers_[l].ratio, -l});
      std::push_heap(heap_.begin(), heap_.end());
    }
  }
  int64_t spent = 0;
  for (int32_t k = 0; k < L; ++k) spent += layers_[k].new_holdings;
  spent -= res.forced_holdings;
  const int32_t max_moves_per_layer = 4 * P;
  while (!heap_.empty()) {
    std::pop_heap(heap_.begin(), heap_.end());
    const Entry top = heap_.back();
    heap_.pop_back();
    const int32_t l = -top.second;
    Layer& ly = layers_[l];
    if (ly.kind == 0 || ly.ratio != top.first) continue;  // stale
    // The threshold is per unit of churn (new holdings / (L * P)), so it
    // means the same for every shape.
    if (ly.ratio * (static_cast<double>(L) * P) < o.min_gain_per_churn) break;
    if (spent + ly.cost > res.budget) {
      // Does not fit: re-queue the layer with its best move that fits what
      // is left, if any (terminates: this happens only after spending).
      if (BestMove(s, ly, estimate + static_cast<size_t>(l) * E, totals_[l], res.budget - spent) >
          0.0) {
        heap_.push_back({ly.ratio, -l});
        std::push_heap(heap_.begin(), heap_.end());
      }
      continue;
    }
    const double* w = estimate + static_cast<size_t>(l) * E;
    const int64_t layer_before = ly.new_holdings;
    if (ly.kind == 2) {
      take_cand(l, ly.cand);
      ++res.switched_layers;
    } else {
      for (int32_t k = 0; k < ly.num_edits; ++k) {
        const int32_t p = ly.edit_slot[k], r = p / slots_per_rank_;
        const size_t from = static_cast<size_t>(r) * E + ly.slots[p];
        const size_t to = static_cast<size_t>(r) * E + ly.edit_expert[k];
        if (--ly.held[from] == 0 && !ly.old_held[from]) --ly.new_holdings;
        if (ly.held[to]++ == 0 && !ly.old_held[to]) ++ly.new_holdings;
        ly.slots[p] = ly.edit_expert[k];
      }
      Rebuild(s, ly, w);
      ++res.moves;
      ++ly.moves;
    }
    spent += ly.new_holdings - layer_before;
    if (ly.moves < max_moves_per_layer && BestMove(s, ly, w, totals_[l]) > 0.0) {
      heap_.push_back({ly.ratio, -l});
      std::push_heap(heap_.begin(), heap_.end());
    }
  }

  double after = 0.0;
  int64_t holdings = 0;
  for (int32_t l = 0; l < L; ++l) {
    const Layer& ly = layers_[l];
    after += ly.max_load > 0.0 ? ly.mean / ly.max_load : 1.0;
    holdings += ly.new_holdings;
  }
  res.predicted_after = after / L;
  res.new_holdings = holdings;
  res.candidates_built = built;

  if (res.forced_layers == 0 && res.predicted_after - res.predicted_before < o.min_gain) {
    res.skipped = true;
    res.new_holdings = 0;
    res.moves = 0;
    res.switched_layers = 0;
    res.predicted_after = res.predicted_before;
    std::copy(old, old + static_cast<size_t>(L) * P, phy2log);
  } else {
    for (int32_t l = 0; l < L; ++l) {
      Layer& ly = layers_[l];
      std::copy(ly.slots.begin(), ly.slots.end(), phy2log + static_cast<size_t>(l) * P);
      // A layer that moved is at its candidate: cache itself as the only
      // candidate (nothing to gain) until the forecast leaves it behind.
      if (!std::equal(ly.slots.begin(), ly.slots.end(), old + static_cast<size_t>(l) * P)) {
        ly.cache_valid = !ly.split;
        ly.cand_base = ly.slots;
        ly.fresh = ly.slots;
        ly.num_cands = 0;
        ly.cand_bal = ly.max_load > 0.0 ? ly.mean / ly.max_load : 1.0;
      }
    }
  }
  BuildLogCnt(s, phy2log, logcnt);
  if (log2phy != nullptr) BuildLog2Phy(s, phy2log, log2phy);
  return res;
}

}  // namespace eplb
