// Churn-aware policy: see churn_policy.h for the why and the move set.
#include "churn_policy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <queue>
#include <utility>

#include "error.h"

namespace eplb {

namespace {
// Ratio given to a move that gains balance without a new holding (it undoes
// an earlier move of this call or is a local copy): taken before any other.
constexpr double kFreeRatio = 1e300;
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
  // The fresh plan (switch move).
  bool target_valid = false;
  double target_max = 0.0;
  int64_t target_new_holdings = 0;
  // The sticky plan: the fresh plan's counts and group -> node map, packed
  // to keep old holdings. (A second variant on the old group -> node map with
  // counts replicated per node won a third of the switches on drift but
  // lowered the forward balancedness on shift by 0.001-0.004 and was neutral
  // on drift: dropped, which also saves a packing per layer.)
  bool sticky_valid = false;
  double sticky_max = 0.0;
  int64_t sticky_new_holdings = 0;
  // Best pending move: kind 0 none, 1 single slot edits, 2 switch to the
  // fresh plan, 3 switch to the sticky plan.
  int32_t kind = 0;
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
  bool cand_has_target = false;
  bool cand_has_sticky = false;
  double cand_bal = 0.0;
  std::vector<int32_t> cand_base, target, sticky;
};

ChurnPlanner::ChurnPlanner() = default;
ChurnPlanner::~ChurnPlanner() = default;

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
  for (int32_t k = 0; k < K; ++k) {
    double* est = state + static_cast<size_t>(k) * LE;
    const double decay = std::pow(0.5, 1.0 / c.half_lives[k]);
    for (int32_t l = 0; l < L; ++l) {
      const int64_t* a = load + static_cast<size_t>(l) * E;
      double* f = est + static_cast<size_t>(l) * E;
      double atot = 0.0, ftot = 0.0;
      for (int32_t e = 0; e < E; ++e) {
        atot += static_cast<double>(a[e]);
        ftot += f[e];
      }
      // Error of the estimate before it sees the step (a step without load
      // says nothing about the distribution).
      if (atot > 0.0) {
        double sq = 0.0;
        for (int32_t e = 0; e < E; ++e) {
          const double fe = ftot > 0.0 ? f[e] / ftot : 1.0 / E;
          const double d = fe - static_cast<double>(a[e]) / atot;
          sq += d * d;
        }
        double& x = err[static_cast<size_t>(k) * L + l];
        x = err_decay * x + sq;
      }
      for (int32_t e = 0; e < E; ++e) f[e] = decay * f[e] + static_cast<double>(a[e]);
    }
  }
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
void ChurnPlanner::Rebuild(const PlanShape& s, Layer& ly, const double* w) {
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
      const int32_t g = ly.slots[p] / experts_per_group_;
      const int32_t node = (p / slots_per_rank_) / ranks_per_node_;
      if (ly.group_node[g] == -2) {
        ly.group_node[g] = node;
      } else if (ly.group_node[g] != node) {
        ly.group_node[g] = -1;
        ly.split = true;
      }
    }
  }
}

// Packs replicas (counts tcnt, group g on node gnode[g] when hierarchical) keeping a
// replica on a rank that held its expert in `old` while that rank stays <= cap;
// the rest go largest first to the least loaded rank with a free slot of the
// expert's node. Kept experts keep their old slot. Writes out[P].
void ChurnPlanner::StickyPlan(const PlanShape& s, const double* w, const int32_t* old,
                              const int32_t* gnode, const int32_t* tcnt, double cap, int32_t* out) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = slots_per_rank_, R = ranks_per_node_;
  // avail_ ([E][N]) and mark_ ([N][E]) stay all zero between calls (every entry set here is
  // reset below), so no per-call clearing of the [N][E] tables.
  const size_t NE = static_cast<size_t>(N) * E;
  if (avail_.size() != NE) avail_.assign(NE, 0);
  if (mark_.size() != NE) mark_.assign(NE, 0);
  for (int32_t p = 0; p < P; ++p) ++avail_[static_cast<size_t>(old[p]) * N + p / S];
  // Largest first; ties by expert (the sort key is total, so the order is
  // unique). Sorted per expert, then expanded: a replica's key depends only
  // on its expert, so this is the order of sorting the replicas, at E
  // instead of P entries.
  expert_items_.clear();
  for (int32_t e = 0; e < E; ++e)
    if (tcnt[e] > 0) expert_items_.push_back({w[e] / tcnt[e], e});
  std::sort(expert_items_.begin(), expert_items_.end(),
            [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
              if (a.first != b.first) return a.first > b.first;
              return a.second < b.second;
            });
  items_.clear();
  for (const std::pair<double, int32_t>& it : expert_items_)
    for (int32_t k = 0; k < tcnt[it.second]; ++k) items_.push_back(it);
  // First rank of each expert's node (hierarchical), without a division per
  // replica.
  node_lo_.resize(E);
  for (int32_t e = 0; e < E; ++e) node_lo_[e] = 0;
  if (hier_)
    for (int32_t g = 0, e = 0; e < E; ++g)
      for (int32_t k = 0; k < experts_per_group_; ++k, ++e) node_lo_[e] = gnode[g] * R;
  const int32_t span = hier_ ? R : N;
  pack_load_.assign(N, 0.0);
  free_.assign(N, S);
  assign_rank_.resize(P);
  leftover_.clear();
  for (size_t k = 0; k < items_.size(); ++k) {
    const int32_t e = items_[k].second;
    const double x = items_[k].first;
    const int32_t lo = node_lo_[e], hi = lo + span;
    // avail_ is [E][N]: the ranks of one expert are adjacent.
    int16_t* av = avail_.data() + static_cast<size_t>(e) * N;
    int32_t best = -1;
    for (int32_t r = lo; r < hi; ++r) {
      if (av[r] == 0 || free_[r] == 0) continue;
      if (!(pack_load_[r] + x <= cap)) continue;
      if (best < 0 || pack_load_[r] < pack_load_[best]) best = r;
    }
    if (best < 0) {
      leftover_.push_back(static_cast<int32_t>(k));
      assign_rank_[k] = -1;
      continue;
    }
    --av[best];
    --free_[best];
    pack_load_[best] += x;
    assign_rank_[k] = best;
  }
  for (int32_t k : leftover_) {
    const int32_t e = items_[k].second;
    const int32_t lo = node_lo_[e], hi = lo + span;
    int32_t best = -1;
    for (int32_t r = lo; r < hi; ++r) {
      if (free_[r] == 0) continue;
      if (best < 0 || pack_load_[r] < pack_load_[best]) best = r;
    }
    EPLB_ASSERT(best >= 0);  // a node's slots equal its groups' replicas
    --free_[best];
    pack_load_[best] += items_[k].first;
    assign_rank_[k] = best;
  }
  // Per rank: experts that were there keep their slot, the others fill the
  // freed slots in slot order. mark_[r*E+e] = replicas of e assigned to r.
  for (int32_t p = 0; p < P; ++p) avail_[static_cast<size_t>(old[p]) * N + p / S] = 0;
  for (size_t k = 0; k < items_.size(); ++k)
    ++mark_[static_cast<size_t>(assign_rank_[k]) * E + items_[k].second];
  for (int32_t p = 0; p < P; ++p) {
    int32_t& m = mark_[static_cast<size_t>(p / S) * E + old[p]];
    if (m > 0) {
      out[p] = old[p];
      --m;
    } else {
      out[p] = -1;
    }
  }
  // Each rank's assigned experts ascending (at most S of them), so the free
  // slots take the remaining ones in expert order without scanning [E].
  free_.assign(N, 0);
  rank_items_.resize(P);
  for (size_t k = 0; k < items_.size(); ++k) {
    const int32_t r = assign_rank_[k];
    rank_items_[static_cast<size_t>(r) * S + free_[r]++] = items_[k].second;
  }
  for (int32_t r = 0; r < N; ++r) {
    int32_t* list = rank_items_.data() + static_cast<size_t>(r) * S;
    std::sort(list, list + free_[r]);
    int32_t next = 0;
    for (int32_t p = r * S; p < (r + 1) * S; ++p) {
      if (out[p] >= 0) continue;
      while (mark_[static_cast<size_t>(r) * E + list[next]] == 0) ++next;
      out[p] = list[next];
      --mark_[static_cast<size_t>(r) * E + list[next]];
    }
  }
}

// Finds the layer's best single move (or the switch) by gain per new
// holding; stores it in ly and returns its ratio (0 when none gains).
double ChurnPlanner::BestMove(const PlanShape& s, Layer& ly, const double* w, double total) {
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
      std::vector<int32_t>& fill = target_cnt_;  // reused as a cursor
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
  // switch: the fresh plan or the sticky plan, when it beats both the layer
  // and the best move.
  if (ly.target_valid && ly.target_max > 0.0 && ly.target_max < ly.max_load) {
    const double gain = (mean / ly.target_max - base_bal) / L;
    const int64_t cost = ly.target_new_holdings - ly.new_holdings;
    const double ratio = cost <= 0 ? kFreeRatio + gain : gain / static_cast<double>(cost);
    if (gain > 0.0 && ratio > ly.ratio) {
      ly.kind = 2;
      ly.ratio = ratio;
      ly.gain = gain;
      ly.cost = cost;
    }
  }
  if (ly.sticky_valid && ly.sticky_max > 0.0 && ly.sticky_max < ly.max_load) {
    const double gain = (mean / ly.sticky_max - base_bal) / L;
    const int64_t cost = ly.sticky_new_holdings - ly.new_holdings;
    const double ratio = cost <= 0 ? kFreeRatio + gain : gain / static_cast<double>(cost);
    if (gain > 0.0 && ratio > ly.ratio) {
      ly.kind = 3;
      ly.ratio = ratio;
      ly.gain = gain;
      ly.cost = cost;
    }
  }
  return ly.ratio;
}

// Max rank load of placement pl [P] on w (counts from pl itself).
double ChurnPlanner::MaxLoad(const PlanShape& s, const double* w, const int32_t* pl) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  std::fill(score_cnt_.begin(), score_cnt_.begin() + E, 0);
  for (int32_t p = 0; p < P; ++p) ++score_cnt_[pl[p]];
  double mx = 0.0;
  for (int32_t r = 0; r < N; ++r) {
    double acc = 0.0;
    for (int32_t p = r * slots_per_rank_; p < (r + 1) * slots_per_rank_; ++p)
      acc += w[pl[p]] / score_cnt_[pl[p]];
    if (acc > mx) mx = acc;
  }
  return mx;
}

// CountNewHoldings of one layer (pl, ol [P]) in O(P) with stamps: the
// candidates are counted on every rebuild, and the quadratic per-rank scan
// was 6% of a call.
int64_t ChurnPlanner::LayerNewHoldings(const PlanShape& s, const int32_t* pl, const int32_t* ol) {
  const int32_t E = s.num_logical_experts, N = s.num_ranks, S = slots_per_rank_;
  if (holding_stamp_.size() != static_cast<size_t>(E)) {
    holding_stamp_.assign(E, 0);
    holding_epoch_ = 0;
  }
  int64_t n = 0;
  for (int32_t r = 0; r < N; ++r) {
    if (holding_epoch_ >= 0x7ffffff0) {
      std::fill(holding_stamp_.begin(), holding_stamp_.end(), 0);
      holding_epoch_ = 0;
    }
    // old experts of r get `held`; a counted new expert gets `counted`.
    const int32_t held = ++holding_epoch_, counted = ++holding_epoch_;
    for (int32_t p = r * S; p < (r + 1) * S; ++p) holding_stamp_[ol[p]] = held;
    for (int32_t p = r * S; p < (r + 1) * S; ++p) {
      int32_t& st = holding_stamp_[pl[p]];
      if (st != held && st != counted) {
        st = counted;
        ++n;
      }
    }
  }
  return n;
}

// Builds layer l's candidates (fresh plan relabelled onto ol, sticky plans)
// on w and stores them in the layer's cache.
void ChurnPlanner::BuildCandidates(const PlanShape& s, Policy base, double sticky_slack, int32_t l,
                                   const double* w, double total, const int32_t* ol) {
  Layer& ly = layers_[l];
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  const int32_t G = hier_ ? s.num_groups : 1;
  ly.cache_valid = true;
  ly.cand_base.assign(ol, ol + P);
  ly.target.resize(P);
  ly.cand_has_target = false;
  ly.cand_has_sticky = false;
  ly.cand_bal = 0.0;
  int32_t* tgt = ly.target.data();
  if (total > 0.0) {
    const double scale = 1125899906842624.0 / total;  // 2^50 / total: sums stay < 2^53
    for (int32_t e = 0; e < E; ++e) scaled_[e] = static_cast<int64_t>(std::floor(w[e] * scale));
    planner_.PlanLayer(s, base, Migration::kFull, scaled_.data(), ol, tgt, target_cnt_.data());
    for (int32_t e = 0; e < E; ++e) target_cnt_[e] = 0;
    for (int32_t p = 0; p < P; ++p) ++target_cnt_[tgt[p]];
    const double tmax = MaxLoad(s, w, tgt);
    ly.cand_has_target = true;
    ly.target_max = tmax;
    ly.cand_bal = tmax > 0.0 ? ly.mean / tmax : 1.0;
    ly.target_new_holdings = LayerNewHoldings(s, tgt, ol);
    if (sticky_slack >= 0.0 && !ly.split) {
      const double cap = tmax * (1.0 + sticky_slack);
      ly.sticky.resize(P);
      int32_t* st = ly.sticky.data();
      gnode_.assign(G, 0);
      if (hier_)
        for (int32_t p = 0; p < P; ++p)
          gnode_[tgt[p] / experts_per_group_] = (p / slots_per_rank_) / ranks_per_node_;
      StickyPlan(s, w, ol, gnode_.data(), target_cnt_.data(), cap, st);
      ly.cand_has_sticky = true;
      ly.sticky_max = MaxLoad(s, w, st);
      ly.sticky_new_holdings = LayerNewHoldings(s, st, ol);
    }
  } else if (ly.split) {
    // No load at all: any valid plan balances; take the base plan on zeros.
    std::fill(scaled_.begin(), scaled_.end(), 0);
    planner_.PlanLayer(s, base, Migration::kFull, scaled_.data(), ol, tgt, target_cnt_.data());
    ly.cand_has_target = true;
    ly.target_max = 0.0;
    ly.cand_bal = 1.0;
    ly.target_new_holdings = LayerNewHoldings(s, tgt, ol);
  }
  ++candidates_built_;
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
  candidates_built_ = 0;

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
  if (stamp_.size() != static_cast<size_t>(N)) {
    stamp_.assign(N, 0);
    stamp_value_ = 0;
  }
  scaled_.resize(E);
  target_cnt_.resize(std::max(E, 1));
  score_cnt_.resize(std::max(E, 1));
  totals_.resize(L);

  ChurnResult res;
  res.budget = static_cast<int64_t>(std::floor(o.max_moved_fraction * L * P));
  double before = 0.0;
  for (int32_t l = 0; l < L; ++l) {
    Layer& ly = layers_[l];
    const double* w = estimate + static_cast<size_t>(l) * E;
    const int32_t* ol = old + static_cast<size_t>(l) * P;
    ly.slots.assign(ol, ol + P);
    ly.cnt.resize(E);
    ly.rank_load.resize(N);
    ly.group_node.resize(G);
    if (single_moves_) {
      ly.held.assign(static_cast<size_t>(N) * E, 0);
      ly.old_held.assign(static_cast<size_t>(N) * E, 0);
      for (int32_t p = 0; p < P; ++p) {
        const size_t idx = static_cast<size_t>(p / slots_per_rank_) * E + ol[p];
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
    before += ly.max_load > 0.0 ? ly.mean / ly.max_load : 1.0;

    // Reuse the cached candidates while they were built from this placement
    // and the fresh plan still balances the forecast within the tolerance;
    // re-score them on the forecast. Otherwise rebuild them.
    bool reuse = o.refresh_tolerance >= 0.0 && ly.cache_valid && !ly.split &&
                 std::equal(ol, ol + P, ly.cand_base.begin());
    if (reuse && ly.cand_has_target) {
      ly.target_max = MaxLoad(s, w, ly.target.data());
      const double bal = ly.target_max > 0.0 ? ly.mean / ly.target_max : 1.0;
      reuse = !(bal < ly.cand_bal - o.refresh_tolerance);
    }
    if (reuse) {
      if (ly.cand_has_sticky) ly.sticky_max = MaxLoad(s, w, ly.sticky.data());
    } else {
      BuildCandidates(s, base, o.sticky_slack, l, w, total, ol);
    }
    ly.target_valid = ly.cand_has_target;
    ly.sticky_valid = ly.cand_has_sticky;
  }
  res.predicted_before = before / L;

  // Adopts plan `tgt` (a candidate of layer l), holding `holdings`.
  auto do_switch = [&](int32_t l, const int32_t* tgt, int64_t holdings) {
    Layer& ly = layers_[l];
    if (single_moves_) {
      for (int32_t p = 0; p < P; ++p) {
        const int32_t r = p / slots_per_rank_;
        --ly.held[static_cast<size_t>(r) * E + ly.slots[p]];
      }
      for (int32_t p = 0; p < P; ++p) {
        const int32_t r = p / slots_per_rank_;
        ++ly.held[static_cast<size_t>(r) * E + tgt[p]];
      }
    }
    ly.slots.assign(tgt, tgt + P);
    ly.new_holdings = holdings;
    Rebuild(s, ly, estimate + static_cast<size_t>(l) * E);
  };
  auto take_target = [&](int32_t l) {
    Layer& ly = layers_[l];
    do_switch(l, ly.target.data(), ly.target_new_holdings);
    ly.target_valid = false;  // taken
    ly.sticky_valid = false;
  };
  auto take_sticky = [&](int32_t l) {
    Layer& ly = layers_[l];
    do_switch(l, ly.sticky.data(), ly.sticky_new_holdings);
    ly.sticky_valid = false;  // taken; the fresh plan stays a candidate
  };

  // Forced: a layer that splits a group over nodes cannot be improved by
  // moves that keep groups whole; it takes the fresh plan.
  for (int32_t l = 0; l < L; ++l) {
    if (!layers_[l].split) continue;
    EPLB_ASSERT(layers_[l].target_valid);
    take_target(l);
    res.forced_holdings += layers_[l].new_holdings;
    ++res.forced_layers;
  }

  // An unlimited budget (warm-up) starts every layer from the fresh plan:
  // the planner's packing is a better start than any arbitrary placement.
  if (o.max_moved_fraction >= 1.0) {
    for (int32_t l = 0; l < L; ++l) {
      Layer& ly = layers_[l];
      if (ly.target_valid && ly.target_max < ly.max_load) {
        take_target(l);
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
    if (spent + ly.cost > res.budget) continue;  // does not fit: layer done
    const double* w = estimate + static_cast<size_t>(l) * E;
    const int64_t layer_before = ly.new_holdings;
    if (ly.kind >= 2) {
      if (ly.kind == 2) {
        take_target(l);
      } else {
        take_sticky(l);
      }
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
  res.candidates_built = candidates_built_;

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
        ly.target = ly.slots;
        ly.cand_has_target = true;
        ly.cand_has_sticky = false;
        ly.target_new_holdings = 0;
        ly.cand_bal = ly.max_load > 0.0 ? ly.mean / ly.max_load : 1.0;
      }
    }
  }
  BuildLogCnt(s, phy2log, logcnt);
  if (log2phy != nullptr) BuildLog2Phy(s, phy2log, log2phy);
  return res;
}

}  // namespace eplb
