// The decisions of the per-rank state machine (DESIGN.md "host-side state
// machine"): step counting, when to rearrange, the order of the phases of a
// rearrangement, and the commit / rollback bookkeeping. Pure host C++ (no
// CUDA headers): it talks to the device only through StateBackend, so a host
// backend (threads as ranks, host memory as device memory) exercises every
// transition and fault without a GPU, and the CUDA/NCCL backend
// (host/cuda/state.h) stays a thin executor.
//
// Collective discipline (why the code below looks the way it does): every
// rank must make the same sequence of collective backend calls (AllReduceLoad,
// AgreeOnDigest, Exchange, RecordPass with stats) whatever happened locally.
// So a local failure (a read-out launch, the planner) is recorded, not thrown:
// the rank goes on into the agreement with a poison value, every rank sees the
// disagreement, nobody exchanges, and each rank then reports its own error
// (the poisoned rank its local cause, the others kMismatch). A failed
// collective, or a failure after weights began to move, leaves the state
// "broken": it refuses further steps (kInvalidUsage), because the ranks can no
// longer be assumed to be in step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "error.h"
#include "planner.h"

namespace eplb {

// Step flags (equal to EPLB_STEP_DUMMY / EPLB_STEP_STATS).
constexpr uint32_t kStepDummy = 0x1u;
constexpr uint32_t kStepStats = 0x2u;

// Phases of a rearrangement (equal to eplbStatePhase_t).
enum class StatePhase : int {
  kReadout = 0,
  kAllReduce = 1,
  kPlan = 2,
  kCheck = 3,
  kExchange = 4,
  kCommit = 5,
};
constexpr int kNumStatePhases = 6;

struct StateConfig {
  PlanShape shape;  // as configured (num_nodes as given)
  int32_t rank = 0;
  int32_t window_size = 1;
  int32_t step_interval = 1;
  Policy policy = Policy::kAuto;
  Migration migration = Migration::kFull;
};

// Throws kInvalidArgument naming the field: the shape limits and policy table
// (of the planning shape), rank in [0, N), window_size >= 1, step_interval >=
// 1, policy kAuto / kHierarchical / kGlobal (kChurnAware: kNotSupported),
// migration a valid value.
void ValidateStateConfig(const StateConfig& config);

// The shape the planner sees: num_nodes = 1 when N % M != 0 (as the reference
// state machine does), otherwise as configured.
PlanShape PlanningShape(const PlanShape& shape);

// The default initial placement [L][P] (host output): slot p < E holds expert
// p, slot E + i holds expert i % E.
void DefaultPlacement(const PlanShape& shape, int32_t* phy2log);

// The initial placement of a state: a copy of `given_phy2log` (validated), or
// the plan of `given_load` (validated; config's policy, no old placement), or
// the default one; at most one of the two may be given. Output [L][P] host.
void InitialPlacement(const StateConfig& config, const int32_t* given_phy2log,
                      const int64_t* given_load, int32_t* phy2log);

// What an exchange did on this rank.
struct ExchangeOutcome {
  Status status = Status::kSuccess;
  std::string message;
  // False: the exchange failed before any byte moved (weights all old).
  bool started = false;
  // Layers [0, layers_done) hold their new experts on this rank (or will,
  // in stream order); the others are untouched. L on success.
  int32_t layers_done = 0;
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
};

// Host buffers a plan is written into and committed from (the CUDA backend
// hands out pinned memory it copies from asynchronously).
struct PlanBuffers {
  int32_t* phy2log = nullptr;  // [L][P]
  int32_t* log2phy = nullptr;  // [L][E][P-E+1]
  int32_t* logcnt = nullptr;   // [L][E]
};

// The device side, as the logic needs it. Every method may throw eplb::Error.
// "Enqueue" methods return without waiting; "collective" methods must be
// called by every rank in the same order; "blocks" methods return with their
// result on the host.
class StateBackend {
 public:
  virtual ~StateBackend() = default;
  // Enqueue: fold the pass's counters into the window (discard them when
  // dummy) and zero them; with stats, compute the pass's balancedness
  // (collective). Never blocks.
  virtual void RecordPass(bool dummy, bool stats, int64_t step) = 0;
  // Marks the start of phase `phase` of a rearrangement on the stream
  // (kNumStatePhases: its end), for the device timings.
  virtual void MarkPhase(int phase) = 0;
  // Enqueue: window sum -> logical load [L][E] on the device.
  virtual void ReadoutLoad() = 0;
  // Collective, blocks: sums the read-out load over ranks into h_load [L][E].
  virtual void AllReduceLoad(int64_t* h_load) = 0;
  // Collective, blocks: true iff every rank passed the same digest and none
  // passed poison.
  virtual bool AgreeOnDigest(uint64_t digest, bool poison) = 0;
  // Buffers the next plan goes into; blocks until the last commit no longer
  // reads them.
  virtual PlanBuffers AcquirePlanBuffers() = 0;
  // The weight exchange from old to new ([L][P] host each), validated and
  // planned on the host before the plan check, whose hash folds in the
  // exchange's (one agreement for both). Local (no collective). Begin keeps
  // the pointers (new's rows may still be written); PrepareExchangeLayers
  // plans layers [lo, hi) once their rows are final (thread safe for
  // disjoint ranges; every layer once); Finish returns the hash. Any step
  // throws when the exchange would refuse (nothing prepared).
  virtual void BeginExchangePrepare(const int32_t* old_phy2log, const int32_t* new_phy2log) = 0;
  virtual void PrepareExchangeLayers(int32_t lo, int32_t hi) = 0;
  virtual uint64_t FinishExchangePrepare() = 0;
  // Collective: moves the weights as prepared last (every rank passed the
  // check). Errors of the exchange are returned in the outcome, not thrown.
  virtual ExchangeOutcome Exchange() = 0;
  // Enqueue: the maps of layers [first, first + count) from `plan` (the
  // buffers of AcquirePlanBuffers), ordered after the exchange.
  virtual void CommitMaps(int32_t first_layer, int32_t num_layers, const PlanBuffers& plan) = 0;
};

// What the last rearrangement did.
struct RearrangeReport {
  Status status = Status::kSuccess;
  std::string message;
  int32_t layers_committed = 0;
  int64_t slots_moved = 0;  // (layer, slot) entries of the agreed plan that differ
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  double balancedness_before = 0.0;
  double balancedness_after = 0.0;
  double host_ms[kNumStatePhases] = {0, 0, 0, 0, 0, 0};
};

class StateLogic {
 public:
  // config validated by the caller (ValidateStateConfig); initial_phy2log
  // [L][P] valid (InitialPlacement). backend outlives the logic.
  StateLogic(const StateConfig& config, const int32_t* initial_phy2log, StateBackend* backend);

  // Records that `layer` has a weight bundle (the backend registered it).
  void MarkRegistered(int32_t layer);
  bool AllRegistered() const;

  // One forward pass ended (see eplbStateStep). Throws: kInvalidArgument
  // (unknown flag bits), kInvalidUsage (not all layers registered, broken),
  // then the errors of Rearrange when this step rearranges.
  void Step(uint32_t flags);
  // A rearrangement now (see eplbStateRearrange). Throws the status of a
  // failed rearrangement after its bookkeeping (report, maps) is done.
  void Rearrange();

  // Placement in force [L][P] (as committed by the host; in stream order the
  // device gets it after the exchange).
  const std::vector<int32_t>& placement() const { return phy2log_; }
  // All-reduced load [L][E] of the last rearrangement (empty before).
  const std::vector<int64_t>& last_load() const { return last_load_; }
  const RearrangeReport& last_report() const { return report_; }
  bool has_report() const { return num_rearrangements_ > 0; }

  int64_t num_steps() const { return num_steps_; }
  int64_t num_dummy_steps() const { return num_dummy_steps_; }
  int64_t num_rearrangements() const { return num_rearrangements_; }
  int64_t num_failed_rearrangements() const { return num_failed_; }
  int64_t steps_to_next_rearrangement() const { return config_.step_interval - counter_; }
  bool broken() const { return broken_; }
  const std::string& broken_reason() const { return broken_reason_; }

  // Test hook: called on this rank's fresh plan [L][P] before the agreement
  // (e.g. to force a mismatch). Never set in production.
  void SetPlanHookForTesting(std::function<void(int32_t* phy2log)> hook) {
    plan_hook_ = std::move(hook);
  }

 private:
  // Throws kInvalidUsage once the state is broken.
  void CheckUsable(const char* what) const;
  // The kInvalidUsage error of a call made before every layer is registered.
  Error UnregisteredError(const char* what) const;
  void MarkBroken(const std::string& why);

  StateConfig config_;
  PlanShape plan_shape_;
  StateBackend* backend_;
  // One planner per host thread; layers are planned in parallel ranges.
  std::vector<std::unique_ptr<Planner>> planners_;
  std::vector<int32_t> phy2log_;
  std::vector<int64_t> load_;
  std::vector<int64_t> last_load_;
  std::vector<uint8_t> registered_;
  int32_t num_registered_ = 0;
  int32_t counter_ = 0;
  int64_t num_steps_ = 0;
  int64_t num_dummy_steps_ = 0;
  int64_t num_rearrangements_ = 0;
  int64_t num_failed_ = 0;
  bool broken_ = false;
  std::string broken_reason_;
  RearrangeReport report_;
  std::function<void(int32_t*)> plan_hook_;
};

}  // namespace eplb
