// The exact, migration-aware host planner: the DeepSeek hierarchical / global
// EPLB policy with the normative arithmetic and tie-breaking of
// shared/conformance/README.md, plus migration-aware relabeling against an old
// placement. Pure host C++ (no CUDA headers); every function here is host
// only, blocks, and runs on host pointers.
//
// Determinism (why every rank and the GPU planner get the same plan):
//   - a replica load is one IEEE float64 division (double)w / count (the
//     int64 -> double conversion is exact because loads are < 2^53);
//   - a group load is an exact int64 sum;
//   - a pack load is a float64 sum, added one item at a time in insertion
//     order (never reassociated; the build uses -ffp-contract=off and no
//     fast-math, and x86-64 uses SSE2 doubles, so no FMA and no x87 excess
//     precision);
//   - every selection compares these exact values, breaking exact ties by a
//     fixed integer key (earliest list position, lowest pack index). Heaps and
//     index sorts used for speed order by the full (value, index) key, so they
//     choose exactly what the linear scans / stable sorts of the README choose.
//   The GPU planner must perform the same sequence of float64 operations
//   (replica loads w / count, pack sums in insertion order); the selection
//   structure (heap, scan, parallel argmin on the same key) does not matter.
//   - migration uses integer weights and an exact assignment with fixed
//     tie-breaking (assignment.h), so it is deterministic too.
#pragma once

#include <cstdint>
#include <vector>

#include "error.h"

namespace eplb {

// Shape of a planning problem. Letters as in DESIGN.md: L layers, E logical
// experts, P physical slots, G groups, M nodes, N ranks (one GPU each).
struct PlanShape {
  int32_t num_layers = 0;            // L, 1..128
  int32_t num_logical_experts = 0;   // E, 1..1024
  int32_t num_physical_experts = 0;  // P, E..4096, P % N == 0
  int32_t num_groups = 1;            // G, 1..E
  int32_t num_nodes = 1;             // M, 1..N
  int32_t num_ranks = 1;             // N, 1..1024
};

// Values equal eplbPolicy_t.
enum class Policy : int { kAuto = 0, kHierarchical = 1, kGlobal = 2, kChurnAware = 3 };
// Values equal eplbMigration_t.
enum class Migration : int { kNone = 0, kPreserve = 1, kFull = 2 };

// Limits (equal to the EPLB_MAX_* macros of eplb.h, which this header must
// not include).
constexpr int32_t kMaxLayers = 128;
constexpr int32_t kMaxLogicalExperts = 1024;
constexpr int32_t kMaxPhysicalExperts = 4096;
constexpr int32_t kMaxRanks = 1024;
constexpr int64_t kMaxLoad = int64_t{1} << 53;

// Checks the limits: 1 <= L <= 128, 1 <= E <= 1024, E <= P <= 4096,
// 1 <= N <= 1024, P % N == 0, 1 <= G <= E, 1 <= M <= N. The policy table
// (N % M, G % M, E % G) is checked by ResolvePolicy. Throws
// Error(kInvalidArgument) whose message names the field (e.g.
// "num_physical_experts (7) must be a multiple of num_ranks (2)").
void ValidateShape(const PlanShape& shape);

// The policy that runs for `policy` on a valid shape (call ValidateShape
// first). kAuto: hierarchical when N % M == 0, G % M == 0 and E % G == 0;
// global when N % M == 0 and G % M != 0; otherwise kInvalidArgument.
// kHierarchical: itself when N % M == 0, G % M == 0, E % G == 0, else
// kInvalidArgument. kGlobal: always kGlobal (one group, one node; G, M
// ignored). kChurnAware: kChurnAware when the AUTO table accepts the shape
// (its fresh plans use the AUTO choice, see BasePolicy), else
// kInvalidArgument. Throws kInvalidArgument also for a value outside the enum.
Policy ResolvePolicy(const PlanShape& shape, Policy policy);

// The plain policy (kHierarchical or kGlobal) that computes fresh plans for
// `policy`: ResolvePolicy, with kChurnAware mapped to the AUTO choice.
Policy BasePolicy(const PlanShape& shape, Policy policy);

// Checks h_load[L][E] (host): every load in [0, 2^53) and every layer's total
// below 2^53. Throws kInvalidArgument naming "h_load[l][e]" or the layer.
void ValidateLoads(const PlanShape& shape, const int64_t* load);

// Checks a placement [L][P] (host): every entry in [0, E) and every expert
// holding at least one slot in every layer. `name` names the argument in the
// message (e.g. "h_old_phy2log"). Throws kInvalidArgument.
void ValidatePlacement(const PlanShape& shape, const int32_t* phy2log,
                       const char* name = "phy2log");

// log2phy[L][E][P-E+1] (host output) from phy2log[L][P] (host input): for
// each expert its slots ascending, padded with -1. phy2log must be valid
// (ValidatePlacement). Allocates nothing. Thread safe.
void BuildLog2Phy(const PlanShape& shape, const int32_t* phy2log, int32_t* log2phy);

// logcnt[L][E] (host output): replicas of each expert in phy2log (valid).
void BuildLogCnt(const PlanShape& shape, const int32_t* phy2log, int32_t* logcnt);

// Number of (layer, slot) entries where phy2log differs from old_phy2log.
int64_t CountMovedSlots(const PlanShape& shape, const int32_t* phy2log, const int32_t* old_phy2log);

struct PlanMetrics {
  double balancedness = 0.0;  // mean over layers of mean rank load / max rank load
  double max_load_sum = 0.0;  // sum over layers of the max rank load
  int64_t moved_slots = -1;   // vs old_phy2log; -1 when none given
};

// Scores a valid placement on a load (README "Checks"): rank load = sum over
// the rank's slots, in slot order, of (double)w[e] / count[e] with count from
// the placement itself; a layer whose max rank load is 0 counts as 1.
// layer_balancedness[L] (host, optional) receives each layer's value;
// old_phy2log (optional) gives moved_slots. Allocates nothing; thread safe.
PlanMetrics Evaluate(const PlanShape& shape, const int64_t* load, const int32_t* phy2log,
                     const int32_t* old_phy2log, double* layer_balancedness);

// What Planner::Plan decided.
struct PlanResult {
  Policy policy = Policy::kAuto;  // the plain policy that ran (kHierarchical / kGlobal)
  int64_t moved_slots = -1;       // vs old_phy2log; -1 without one
};

// The planner. Owns reusable scratch: after the first call for a shape (or a
// Reserve), planning that shape again allocates nothing. Not thread safe: use
// one Planner per thread (the C API keeps one per thread). All pointers are
// host pointers; every call blocks.
class Planner {
 public:
  Planner();
  ~Planner();
  Planner(const Planner&) = delete;
  Planner& operator=(const Planner&) = delete;

  // Grows the scratch for `shape` (valid) so later calls allocate nothing.
  void Reserve(const PlanShape& shape);

  // Plans every layer.
  //   load        [L][E] loads (validated here: ValidateLoads).
  //   old_phy2log [L][P] previous placement or nullptr (validated here).
  //   phy2log     [L][P] output; logcnt [L][E] output; log2phy
  //               [L][E][P-E+1] output or nullptr.
  // policy: kAuto, kHierarchical or kGlobal (kChurnAware is planned by
  // churn_policy, not here: kInvalidArgument). migration applies only with an
  // old placement: kNone keeps the reference slot order, kPreserve keeps an
  // expert already on a GPU in its old slot, kFull also relabels GPU packs
  // (within a node) and node packs by exact assignment to keep the most slots;
  // the multiset of per-rank loads is always that of the plain plan, and
  // kFull never moves more slots than kPreserve.
  // Throws kInvalidArgument (shape, policy table, loads, old placement); on a
  // throw the outputs may be partly written (the C API plans into scratch and
  // copies out on success).
  PlanResult Plan(const PlanShape& shape, Policy policy, Migration migration, const int64_t* load,
                  const int32_t* old_phy2log, int32_t* phy2log, int32_t* logcnt, int32_t* log2phy);

  // One layer, no validation: shape valid, `policy` already resolved
  // (kHierarchical or kGlobal, e.g. from ResolvePolicy), load [E] valid,
  // old_phy2log [P] valid or nullptr. Writes phy2log [P] and logcnt [E].
  // Returns the slots that differ from old_phy2log (0 without one).
  int64_t PlanLayer(const PlanShape& shape, Policy policy, Migration migration, const int64_t* load,
                    const int32_t* old_phy2log, int32_t* phy2log, int32_t* logcnt);

  // The phases of PlanLayer, exposed for benchmarks and tests. They share the
  // scratch of the last PlanLayer-style sequence:
  //   ReplicateLayer: groups -> nodes and per-node replication; fills logcnt.
  //   PackLayer:      per-node packing of replicas onto GPUs; writes phy2log
  //                   in reference order.
  //   MigrateLayer:   relabels / reorders phy2log against old_phy2log.
  void ReplicateLayer(const PlanShape& shape, Policy policy, const int64_t* load, int32_t* logcnt);
  void PackLayer(int32_t* phy2log);
  void MigrateLayer(Migration migration, const int32_t* old_phy2log, int32_t* phy2log);

 private:
  struct Scratch;
  Scratch* s_;
};

}  // namespace eplb
