// The churn-aware planning policy (EPLB_POLICY_CHURN_AWARE): starts from the
// placement in force and moves only what pays on a forecast of the next
// window's load. Pure host C++ (no CUDA headers).
//
// Why: a placement is computed from the past and used in the future, and every
// expert that lands on a rank that did not hold it costs a weight transfer.
// Replanning from scratch on the last window chases noise (the next window
// is as balanced as with a frozen placement) and moves most slots. This
// policy (1) plans on a long, exponentially weighted memory of the load (the
// caller keeps it with UpdateLoadEstimate or the adaptive forecast below),
// (2) gives every layer a few candidate placements that start from the
// current one, (3) spends a per-call budget of new holdings on them across
// all layers globally, in order of predicted balancedness gain per newly held
// (rank, expert) pair, and (4) keeps the old placement when the total
// predicted gain is below a threshold.
//
// Candidates of a layer, on the forecast w[e] (rank load = sum over its slots
// of w[e] / count[e]; the layer's objective is its max rank load, since the
// mean is fixed), all from the fresh plan of the base policy on w (its
// replica counts, its group -> node map, its max load T):
//   fresh   the fresh plan relabelled onto the current placement (nodes,
//           then ranks within a node, by exact maximum assignment of the
//           (rank, expert) pairs they share; a kept expert keeps its slot);
//   tight   a sticky packing at cap T: replicas largest first, each stays on
//           a rank that holds its expert while that rank stays <= T, else
//           goes at once to the least loaded rank of its node. Near the fresh
//           plan's balance at a fraction of its new holdings (on synthetic
//           drift ~0.02 less balanced on the forecast at a third or less of
//           the fresh plan's new holdings):
//           the candidate that makes a third of a replan's churn enough;
//   loose   a sticky packing at cap (1 + sticky_slack) T whose displaced
//           replicas are packed after all kept ones: the fewest new holdings.
// A layer may take several in one call (e.g. loose, then fresh), each
// charged its new holdings beyond those already taken. Optional single-slot
// moves (swap / shed / replicate, off by default) are one more candidate set:
//   swap       a slot of the most loaded rank exchanges its expert with a slot
//              of another rank;
//   shed       a slot of the most loaded rank holding an expert with >= 2
//              replicas is given to another expert;
//   replicate  a slot of another rank holding an expert with >= 2 replicas is
//              given to an expert of the most loaded rank.
// Hierarchical shapes keep every group on one node: swaps stay inside a node,
// a new replica goes to a rank of its group's node, and a layer whose old
// placement splits a group over nodes (e.g. the initial placement) is
// switched to the fresh plan unconditionally ("forced", outside the budget).
// Cost: per layer whose candidates are (re)built, one plan of the base
// policy plus a relabelling and two packings of P replicas, all O(P) but
// the assignments (O(R^3) per node for R ranks per node). The layers'
// candidates are built on several threads (ChurnPlanner::set_threads).
//
// Determinism: float64 in a fixed order, candidates scanned in a fixed order
// with strict comparisons (first found wins), layers ordered by (ratio,
// layer index); no unordered containers. Same inputs, same plan on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "assignment.h"
#include "planner.h"

namespace eplb {

struct ChurnOptions {
  // [L][E] host forecast of the next window's load (any positive scale), or
  // nullptr to use the plan's load as the forecast.
  const double* load_estimate = nullptr;
  // Budget: at most floor(max_moved_fraction * L * P) new (layer, rank,
  // expert) holdings per call (forced layers excepted). In [0, 1]; 1 also
  // starts every layer from the fresh plan (warm-up from an arbitrary
  // placement).
  double max_moved_fraction = 0.29;
  // Skip threshold: keep the old placement when the predicted gain in
  // balancedness (mean over layers, on the forecast) is below this. >= 0.
  double min_gain = 0.001;
  // A move is taken only if its predicted gain in overall balancedness per
  // unit of churn (its new holdings / (L * P)) is at least this. >= 0. The
  // budget is then spent only where it pays: 0.075 keeps the shared trace's
  // churn near 0.05-0.10 while a drifting load may use the whole budget.
  double min_gain_per_churn = 0.075;
  // Also try single-slot moves (swap / shed / replicate), not only layer
  // switches. Off by default: on the real trace the single moves reached a
  // lower forward balancedness (their placements fit the forecast but are
  // less robust to the next window than the planner's packing) and cost
  // 30-100x the plan time.
  bool single_moves = false;
  // Sticky candidates (tight and loose, see above): the loose one's cap is
  // (1 + sticky_slack) * the fresh plan's max load. Negative disables both
  // (the fresh plan is the only candidate). In [-1, 10]. 0.1: the
  // forecast's error exceeds 10%, and on the shared trace 0.1 gained over
  // 0.02 at less churn.
  double sticky_slack = 0.1;
  // Candidate reuse across calls of one ChurnPlanner (C++ only; the C API
  // plans every call from scratch): a layer's candidates are rebuilt only
  // when its placement changed other than by this planner's own output, or
  // when the cached fresh plan's balancedness on the current forecast fell
  // more than this below its value when built. Why: building candidates
  // (a fresh plan, its relabelling, two sticky packings) is the whole cost
  // of a call, and on a slowly moving forecast the cached plan is as good as
  // a fresh one within this tolerance. The reuse depends on the call
  // history, which is the same on every rank that makes the same calls.
  // Negative: rebuild every call (the result depends on this call alone).
  double refresh_tolerance = 0.01;
};

// Checks the options for `shape` (valid); throws kInvalidArgument naming the
// field ("churn->max_moved_fraction (1.5) must be in [0, 1]"). The estimate,
// when given, must be finite and >= 0 everywhere.
void ValidateChurnOptions(const PlanShape& shape, const ChurnOptions& options);

struct ChurnResult {
  bool skipped = false;          // the old placement was kept
  int64_t new_holdings = 0;      // CountNewHoldings(new, old)
  int64_t budget = 0;            // floor(max_moved_fraction * L * P)
  int64_t forced_holdings = 0;   // new holdings of forced layers (not charged)
  int32_t forced_layers = 0;     // layers switched because old split a group
  int32_t switched_layers = 0;   // layers that took the fresh plan by choice
  int32_t moves = 0;             // single moves taken
  double predicted_before = 0;   // balancedness of old on the forecast
  double predicted_after = 0;    // of the result on the forecast
  int32_t candidates_built = 0;  // layers whose candidates were (re)built this call
};

// (layer, rank, expert) triples held in phy2log and not in old_phy2log: the
// numerator of churn (weights that must cross the network). Both valid [L][P].
int64_t CountNewHoldings(const PlanShape& shape, const int32_t* phy2log,
                         const int32_t* old_phy2log);

// estimate[i] = decay * estimate[i] + load[i] for i < n, float64, in index
// order: the exponentially decayed load accumulator whose value is the
// forecast the policy wants. Call it once per step with that step's logical
// load [L][E] (decay = 0.5^(1 / half_life_steps)); start from zeros.
void UpdateLoadEstimate(int64_t n, double decay, const int64_t* load, double* estimate);

// Adaptive forecast: K exponentially decayed estimates with different
// half-lives, and per (estimate, layer) a decayed squared error of how each
// estimate (normalized to a distribution) predicted the next step's load
// distribution; the forecast of a layer is the estimate with the least error
// (lowest k on ties). Why: popularity changes at different speeds in
// different deployments (and after a shift): a long memory averages noise
// away on a stable load, a short one follows a drift; the per-layer choice is
// a function of the history alone, so every rank makes the same one.
// State (caller owned, zeros at start): ForecastStateSize doubles, laid out
// [K][L][E] estimates then [K][L] errors.
constexpr int32_t kMaxForecastHalfLives = 8;
struct ForecastConfig {
  int32_t num_half_lives = 4;
  double half_lives[kMaxForecastHalfLives] = {4.0, 16.0, 64.0, 256.0};
  double error_half_life = 30.0;  // steps, of the prediction error
};
// Throws kInvalidArgument naming the field (1..8 half-lives, each > 0 and
// finite; error_half_life > 0).
void ValidateForecastConfig(const ForecastConfig& config);
int64_t ForecastStateSize(int32_t num_layers, int32_t num_logical_experts,
                          const ForecastConfig& config);
// Folds one step's load [L][E] into the state (float64, fixed order).
void UpdateForecastState(int32_t num_layers, int32_t num_logical_experts,
                         const ForecastConfig& config, const int64_t* load, double* state);
// forecast[L][E]: per layer the chosen estimate (its own scale); chosen[L]
// (nullable) receives the index of the half-life used.
void ForecastFromState(int32_t num_layers, int32_t num_logical_experts,
                       const ForecastConfig& config, const double* state, double* forecast,
                       int32_t* chosen);

class ChurnPlanner {
 public:
  ChurnPlanner();
  ~ChurnPlanner();
  ChurnPlanner(const ChurnPlanner&) = delete;
  ChurnPlanner& operator=(const ChurnPlanner&) = delete;

  // Plans from old_phy2log (required, valid) on the forecast. load [L][E] is
  // validated (ValidateLoads) and is the forecast when options has none.
  // Outputs phy2log [L][P], logcnt [L][E], log2phy [L][E][P-E+1] (nullable).
  // Host; blocks; not thread safe (owns scratch; one per thread; it starts
  // its own worker threads, see set_threads). Throws kInvalidArgument
  // (shape, policy table, loads, old placement, options).
  ChurnResult Plan(const PlanShape& shape, const ChurnOptions& options, const int64_t* load,
                   const int32_t* old_phy2log, int32_t* phy2log, int32_t* logcnt, int32_t* log2phy);

  // Threads that build the layers' candidates in Plan: n >= 1, or 0 (the
  // default) for DefaultHostThreads() at each call (EPLB_HOST_THREADS or
  // min(4, hardware threads)). Why: on drift nearly every layer rebuilds its
  // candidates each call, and the layers are independent. The result is the
  // same for every thread count (each layer is built by one thread, with the
  // same arithmetic; the cross-layer selection stays serial). Host; not
  // thread safe (call between Plan calls). Throws kInvalidArgument if n < 0.
  void set_threads(int32_t n);
  int32_t threads() const { return threads_; }

 private:
  struct Layer;
  struct Work;  // scratch of one candidate-building thread (churn_policy.cc)
  // max_cost: moves with more new holdings than this are not considered.
  double BestMove(const PlanShape& shape, Layer& ly, const double* w, double total,
                  int64_t max_cost = INT64_MAX);
  // The functions below read the planner's per-call tables (slot_rank_, ...)
  // and write only the given Work and Layer: several threads run them at once
  // on different layers.
  void Rebuild(const PlanShape& shape, Layer& ly, const double* w) const;
  void IndexOld(Work& wk, const PlanShape& shape, const int32_t* old) const;
  void PrepareSticky(Work& wk, const PlanShape& shape, const int32_t* gnode,
                     const int32_t* tcnt) const;
  void StickyPlan(Work& wk, const PlanShape& shape, const int32_t* old, double cap,
                  bool inline_leftover, int32_t* out, double* max_load,
                  int64_t* new_holdings) const;
  void RelabelFresh(Work& wk, const PlanShape& shape, const int32_t* fresh, const int32_t* old,
                    int32_t* out, int64_t* new_holdings) const;
  double MaxLoad(Work& wk, const PlanShape& shape, const double* w, const int32_t* placement) const;
  void BuildCandidates(Work& wk, const PlanShape& shape, Policy base, const ChurnOptions& options,
                       int32_t layer, const double* w, double total, const int32_t* old_layer);

  int32_t threads_ = 0;
  std::vector<std::unique_ptr<Work>> work_;  // [thread]
  std::vector<int32_t> slot_rank_, slot_node_, exp_group_;
  std::vector<Layer> layers_;
  PlanShape cache_shape_;  // shape and sticky_slack the cached candidates were built for
  double cache_slack_ = 0.0;
  std::vector<double> estimate_, totals_, before_;
  std::vector<std::pair<double, int32_t>> heap_;
  std::vector<int32_t> order_, holders_start_, holders_, holders_fill_, stamp_;
  int32_t stamp_value_ = 0;
  bool hier_ = false, single_moves_ = false;
  int32_t slots_per_rank_ = 0, ranks_per_node_ = 0, experts_per_group_ = 0;
};

}  // namespace eplb
