// Replay of a load history through a planning policy: what EPLB gains (the
// balance of the *next* window) and what it pays (experts whose weights must
// cross the network). Pure host C++. Used by `eplb replay`, `eplb demo` and
// the tests.
//
// Definitions (normative; tests/host/replay.cc re-scores them independently):
//   - steps s = 0..S-1, each an [L][E] load; interval I. Rearrangement points
//     t = I, 2I, ... while t + I <= S. At t the policy sees only steps < t and
//     returns a placement; before the first point the initial placement is in
//     force (routed experts in order, then slot E+i holds expert i % E).
//   - forward balancedness of a rearrangement: the placement scored on the
//     sum of steps [t, t+I) (rank load = sum over its slots of w[e]/count[e];
//     layer value mean/max, 1 when max is 0; mean over layers). Overall: mean
//     over rearrangement points. A skipped rearrangement keeps the previous
//     placement and is scored the same way.
//   - churn of a rearrangement: (layer, rank, expert) held after and not
//     before, over L*P; 0 when skipped. Overall: mean over all points but the
//     first (which leaves the arbitrary initial placement).
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "churn_policy.h"
#include "planner.h"
#include "trace_format.h"

namespace eplb {

enum class ReplayPolicy : int {
  kReference = 0,  // default policy (AUTO), migration NONE, on the sum of the last I steps
  kChurnAware,     // ChurnPlanner on an exponentially decayed estimate
  kHistory,        // default policy on the sum of all steps so far
  kHindsight,      // one placement planned on the whole trace (sees the future)
  kStatic,         // the reference's first plan, never moved again
};

// "reference", "churn-aware", "history", "hindsight", "static".
const char* ReplayPolicyName(ReplayPolicy policy);
// Parses a name above (also "churn"); throws kInvalidArgument.
ReplayPolicy ParseReplayPolicy(const std::string& name);

// Defaults of the churn-aware policy as replayed (see churn_policy.h and the
// header's eplbChurnOptions_t for why).
constexpr double kDefaultHalfLifeSteps = 200.0;

struct ReplayConfig {
  int32_t num_physical_experts = 0;  // P
  int32_t num_ranks = 0;             // N
  int32_t num_groups = 1;            // G
  int32_t num_nodes = 1;             // M
  int32_t interval = 10;             // I, >= 1
  ReplayPolicy policy = ReplayPolicy::kChurnAware;
  ChurnOptions churn;                              // load_estimate is ignored: the replay keeps it
  double half_life_steps = kDefaultHalfLifeSteps;  // of the decayed estimate, > 0
  // Adaptive forecast (ForecastConfig) instead of the single half-life.
  bool adaptive_forecast = true;
  ForecastConfig forecast;
  int64_t bytes_per_expert = 0;  // for bytes moved; 0 = not reported
  bool keep_placements = true;   // log every placement (tests re-score them)
  // Called after each rearrangement with (done, total); may be empty.
  std::function<void(int32_t, int32_t)> progress;
};

struct ReplayResult {
  std::string policy;
  std::string source;  // trace path or synthetic description
  PlanShape shape;
  int32_t interval = 0;
  int32_t num_steps = 0;
  double forward_balancedness = 0.0;  // mean over points
  double churn = 0.0;                 // mean over points but the first
  int32_t rearrangements = 0;
  int32_t skipped = 0;
  double plan_seconds_mean = 0.0;  // wall time per planning call
  // Churn-aware: wall time per point folding the steps since the last one
  // into the forecast (an engine folds each step as it comes); else 0.
  double forecast_seconds_mean = 0.0;
  int64_t bytes_per_expert = 0;
  int64_t bytes_moved = 0;             // sum of new holdings * bytes_per_expert (all points)
  std::vector<int32_t> step;           // [R] rearrangement point t
  std::vector<double> balancedness;    // [R] forward balancedness
  std::vector<double> churn_per;       // [R]
  std::vector<int64_t> new_holdings;   // [R]
  std::vector<uint8_t> skipped_per;    // [R]
  std::vector<double> predicted_gain;  // [R] churn-aware only (else 0)
  // [R+1][L][P]: the initial placement, then the one in force after each
  // point (empty unless keep_placements).
  std::vector<std::vector<int32_t>> placements;
};

// The initial placement [L][P]: slot p < E holds p, slot E+i holds i % E.
std::vector<int32_t> InitialPlacement(const PlanShape& shape);

// Replays `trace` (loads [S][L][E]) under `config`. Host; blocks; thread safe
// (no shared state). Throws kInvalidArgument for a bad shape or config (e.g.
// fewer than 2 * interval steps) naming the field.
ReplayResult RunReplay(const LoadTrace& trace, const ReplayConfig& config);

// ---- synthetic histories ----
enum class SyntheticMode : int { kStationary = 0, kDrift, kShift };
const char* SyntheticModeName(SyntheticMode mode);
SyntheticMode ParseSyntheticMode(const std::string& name);  // throws kInvalidArgument

struct SyntheticConfig {
  SyntheticMode mode = SyntheticMode::kDrift;
  uint64_t seed = 1;
  int32_t num_steps = 300;
  // DeepSeek-V3 shape by default (58 MoE layers, 256 experts, top-8).
  int32_t num_layers = 58;
  int32_t num_logical_experts = 256;
  int32_t num_groups = 8;
  int32_t topk = 8;
  double tokens_per_step = 1024.0;  // mean; steps vary log-normally
  // Popularity: per-expert log-weight spread, per-group spread, per-step
  // noise (batch composition), drift correlation time (steps) and the
  // period of abrupt changes (shift).
  double popularity_sigma = 0.8;
  double group_sigma = 0.3;
  double step_sigma = 0.4;
  double drift_steps = 150.0;
  int32_t shift_every = 100;
};

// A deterministic (seeded, platform independent arithmetic) synthetic
// history. Row sums are exactly tokens * topk. Throws kInvalidArgument.
LoadTrace GenerateSynthetic(const SyntheticConfig& config);

// ---- output ----
// Terminal table of one or more results (same history), one row each.
void PrintReplayTable(std::ostream& out, const std::vector<ReplayResult>& results);
// JSON object: forward_balancedness, churn, rearrangements, skipped, and the
// per-rearrangement arrays (step, balancedness, churn, new_holdings, skipped).
void WriteReplayJson(std::ostream& out, const ReplayResult& result);
// Self-contained HTML page (inline SVG): balancedness over time and churn per
// rearrangement of `result` against `reference`.
void WriteReplayHtml(std::ostream& out, const ReplayResult& result, const ReplayResult& reference);

}  // namespace eplb
