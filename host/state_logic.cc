#include "state_logic.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <new>

#include "parallel.h"
#include "transfer_plan.h"

namespace eplb {

void ValidateStateConfig(const StateConfig& config) {
  ValidateShape(config.shape);
  const int policy = static_cast<int>(config.policy);
  if (config.policy == Policy::kChurnAware)
    Throw(Status::kNotSupported,
          "config->policy EPLB_POLICY_CHURN_AWARE is not supported by the state machine");
  EPLB_CHECK_ARG(policy >= 0 && policy <= static_cast<int>(Policy::kGlobal),
                 "config->policy (%d) is not a valid eplbPolicy_t", policy);
  const int migration = static_cast<int>(config.migration);
  EPLB_CHECK_ARG(migration >= 0 && migration <= static_cast<int>(Migration::kFull),
                 "config->migration (%d) is not a valid eplbMigration_t", migration);
  (void)ResolvePolicy(PlanningShape(config.shape), config.policy);
  EPLB_CHECK_ARG(config.rank >= 0 && config.rank < config.shape.num_ranks,
                 "config->rank (%d) must be in [0, num_ranks = %d)", config.rank,
                 config.shape.num_ranks);
  EPLB_CHECK_ARG(config.window_size >= 1, "config->window_size (%d) must be >= 1",
                 config.window_size);
  EPLB_CHECK_ARG(config.step_interval >= 1, "config->step_interval (%d) must be >= 1",
                 config.step_interval);
}

PlanShape PlanningShape(const PlanShape& shape) {
  PlanShape s = shape;
  if (s.num_nodes < 1 || s.num_ranks % s.num_nodes != 0) s.num_nodes = 1;
  return s;
}

void DefaultPlacement(const PlanShape& shape, int32_t* phy2log) {
  const int32_t E = shape.num_logical_experts, P = shape.num_physical_experts;
  for (int32_t l = 0; l < shape.num_layers; ++l)
    for (int32_t p = 0; p < P; ++p)
      phy2log[static_cast<size_t>(l) * P + p] = p < E ? p : (p - E) % E;
}

void InitialPlacement(const StateConfig& config, const int32_t* given_phy2log,
                      const int64_t* given_load, int32_t* phy2log) {
  EPLB_CHECK_ARG(given_phy2log == nullptr || given_load == nullptr,
                 "config->h_initial_phy2log and config->h_initial_load are both set; give at "
                 "most one");
  const PlanShape& shape = config.shape;
  const size_t n = static_cast<size_t>(shape.num_layers) * shape.num_physical_experts;
  if (given_phy2log != nullptr) {
    ValidatePlacement(shape, given_phy2log, "config->h_initial_phy2log");
    std::memcpy(phy2log, given_phy2log, n * sizeof(int32_t));
  } else if (given_load != nullptr) {
    const PlanShape ps = PlanningShape(shape);
    ValidateLoads(ps, given_load);
    Planner planner;
    std::vector<int32_t> logcnt(static_cast<size_t>(shape.num_layers) * shape.num_logical_experts);
    planner.Plan(ps, ResolvePolicy(ps, config.policy), config.migration, given_load, nullptr,
                 phy2log, logcnt.data(), nullptr);
  } else {
    DefaultPlacement(shape, phy2log);
  }
}

StateLogic::StateLogic(const StateConfig& config, const int32_t* initial_phy2log,
                       StateBackend* backend)
    : config_(config), plan_shape_(PlanningShape(config.shape)), backend_(backend) {
  EPLB_ASSERT(backend != nullptr);
  const size_t L = static_cast<size_t>(config.shape.num_layers);
  phy2log_.assign(initial_phy2log, initial_phy2log + L * config.shape.num_physical_experts);
  load_.assign(L * config.shape.num_logical_experts, 0);
  registered_.assign(L, 0);
  planners_.resize(static_cast<size_t>(DefaultHostThreads()));
  for (auto& p : planners_) {
    p = std::make_unique<Planner>();
    p->Reserve(plan_shape_);
  }
  // The first rearrangement comes after step_interval - step_interval / 4
  // steps, as the reference: early enough to fix a poor initial placement,
  // late enough for the window to hold a meaningful load.
  counter_ = config.step_interval / 4;
}

void StateLogic::MarkRegistered(int32_t layer) {
  EPLB_ASSERT(layer >= 0 && layer < config_.shape.num_layers);
  if (!registered_[layer]) {
    registered_[layer] = 1;
    ++num_registered_;
  }
}

bool StateLogic::AllRegistered() const {
  return num_registered_ == config_.shape.num_layers;
}

void StateLogic::CheckUsable(const char* what) const {
  EPLB_CHECK_USAGE(!broken_,
                   "%s refused: the state is broken by an earlier failure (%s); destroy it and "
                   "abort the communicator",
                   what, broken_reason_.c_str());
}

Error StateLogic::UnregisteredError(const char* what) const {
  int32_t first = 0;
  while (first < config_.shape.num_layers && registered_[first]) ++first;
  return Error(Status::kInvalidUsage,
               Format("%s before every layer's weights are registered (layer %d is not; call "
                      "eplbStateRegisterLayer for all %d layers first)",
                      what, first, config_.shape.num_layers));
}

void StateLogic::MarkBroken(const std::string& why) {
  broken_ = true;
  broken_reason_ = why;
}

void StateLogic::Step(uint32_t flags) {
  EPLB_CHECK_ARG((flags & ~(kStepDummy | kStepStats)) == 0,
                 "flags (0x%x) has bits other than EPLB_STEP_DUMMY and EPLB_STEP_STATS",
                 static_cast<unsigned>(flags));
  CheckUsable("step");
  // A rank that has not registered every layer still counts the step and
  // takes part in its collectives (the stats all-reduce, a rearrangement,
  // which then fails on every rank), so one rank's misuse cannot leave the
  // others waiting; it reports the misuse once its share is done.
  const bool registered = AllRegistered();
  const bool dummy = (flags & kStepDummy) != 0;
  try {
    backend_->RecordPass(dummy, (flags & kStepStats) != 0, num_steps_);
  } catch (const Error& e) {
    // The pass may have entered a collective (stats) on some ranks only.
    MarkBroken(std::string("step: ") + e.what());
    throw;
  }
  ++num_steps_;
  if (dummy) ++num_dummy_steps_;
  if (++counter_ >= config_.step_interval) Rearrange();  // resets counter_; throws if unregistered
  if (!registered) throw UnregisteredError("step");
}

namespace {
double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void StateLogic::Rearrange() {
  CheckUsable("rearrange");
  counter_ = 0;
  ++num_rearrangements_;
  report_ = RearrangeReport();
  const PlanShape& s = plan_shape_;
  const int32_t L = s.num_layers;

  // First local failure of this rearrangement; later phases still take part
  // in the collectives (see the header comment).
  bool local_failed = false;
  Status local_status = Status::kSuccess;
  std::string local_message;
  auto note = [&](const Error& e) {
    if (!local_failed) {
      local_failed = true;
      local_status = e.status();
      local_message = e.what();
    }
  };
  // A non-eplb exception (an allocation's, most likely) as an Error.
  auto as_error = [](const std::exception& e) {
    return dynamic_cast<const std::bad_alloc*>(&e) != nullptr
               ? Error(Status::kOutOfMemory, "host allocation failed")
               : Error(Status::kInternal, e.what());
  };
  // Runs a local step before the check: any failure is noted (this rank
  // then joins the check poisoned), never thrown past it, which would leave
  // the other ranks waiting there.
  auto local = [&](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      note(e);
    } catch (const std::exception& e) {
      note(as_error(e));
    }
  };
  // Unregistered weights: this rank plans nothing but joins every collective
  // with a poisoned check, so all ranks fail together and nothing moves.
  if (!AllRegistered()) note(UnregisteredError("rearrange"));
  auto t0 = std::chrono::steady_clock::now();
  int phase = 0;
  auto mark = [&](StatePhase next) {
    report_.host_ms[phase] = MsSince(t0);
    t0 = std::chrono::steady_clock::now();
    phase = static_cast<int>(next);
    local([&] { backend_->MarkPhase(phase); });
  };
  auto finish = [&]() {
    report_.host_ms[phase] = MsSince(t0);
    local([&] { backend_->MarkPhase(kNumStatePhases); });
  };
  // Ends the rearrangement with `status`: the report and counters are final
  // before the throw.
  auto fail = [&](Status status, const std::string& message) {
    report_.status = status;
    report_.message = message;
    ++num_failed_;
    Throw(status, "%s", message.c_str());
  };
  // A failed collective: the ranks are out of step.
  auto fail_broken = [&](const Error& e, const char* where) {
    finish();
    MarkBroken(std::string(where) + ": " + e.what());
    fail(e.status(), std::string(where) + ": " + e.what());
  };

  local([&] { backend_->MarkPhase(static_cast<int>(StatePhase::kReadout)); });
  if (!local_failed) local([&] { backend_->ReadoutLoad(); });

  mark(StatePhase::kAllReduce);
  try {
    backend_->AllReduceLoad(load_.data());
  } catch (const Error& e) {
    fail_broken(e, "load all-reduce");
  }

  mark(StatePhase::kPlan);
  uint64_t digest = 0;
  int64_t slots_moved = 0;
  PlanBuffers plan;
  if (!local_failed) {
    local([&] {
      plan = backend_->AcquirePlanBuffers();
      // Layers plan independently: contiguous ranges on a few threads give
      // the same maps as one serial call.
      const Policy policy = ResolvePolicy(s, config_.policy);
      const size_t E = static_cast<size_t>(s.num_logical_experts);
      const size_t P = static_cast<size_t>(s.num_physical_experts);
      const size_t W = P - E + 1;  // log2phy row width
      // The exchange's transfer plans, before the check: its hash joins the
      // plan's, so one agreement covers both (and a refusal, the same on
      // every rank whose inputs agree, fails the check before anything
      // moves). Each worker plans its layers' transfers right after their
      // placement (one pass over the threads, the rows still in cache).
      auto refused = [](const Error& e) {
        return Error(e.status(),
                     std::string("exchange refused the plan; nothing moved: ") + e.what());
      };
      try {
        backend_->BeginExchangePrepare(phy2log_.data(), plan.phy2log);
      } catch (const Error& e) {
        throw refused(e);
      }
      ParallelRanges(L, static_cast<int32_t>(planners_.size()), 8,
                     [&](int32_t lo, int32_t hi, int32_t w) {
                       PlanShape part = s;
                       part.num_layers = hi - lo;
                       const size_t ul = static_cast<size_t>(lo);
                       planners_[static_cast<size_t>(w)]->Plan(
                           part, policy, config_.migration, load_.data() + ul * E,
                           phy2log_.data() + ul * P, plan.phy2log + ul * P, plan.logcnt + ul * E,
                           plan.log2phy != nullptr ? plan.log2phy + ul * E * W : nullptr);
                       if (plan_hook_) return;  // planned below, after the hook
                       try {
                         backend_->PrepareExchangeLayers(lo, hi);
                       } catch (const Error& e) {
                         throw refused(e);
                       }
                     });
      if (plan_hook_) {
        plan_hook_(plan.phy2log);
        ValidatePlacement(s, plan.phy2log, "plan (after the test hook)");
        BuildLogCnt(s, plan.phy2log, plan.logcnt);
        BuildLog2Phy(s, plan.phy2log, plan.log2phy);
        try {
          backend_->PrepareExchangeLayers(0, L);
        } catch (const Error& e) {
          throw refused(e);
        }
      }
      slots_moved = CountMovedSlots(s, plan.phy2log, phy2log_.data());
      uint64_t exchange_hash = 0;
      if (slots_moved > 0) {
        try {
          exchange_hash = backend_->FinishExchangePrepare();
        } catch (const Error& e) {
          throw refused(e);
        }
      }
      // Everything the exchange and commit depend on: the load, the old and
      // the new placement, where this rearrangement sits in the sequence, and
      // the exchange's inputs (shapes, budget, tensor sizes).
      Hasher h;
      h.Value(num_rearrangements_);
      h.Bytes(load_.data(), load_.size() * sizeof(int64_t));
      h.Bytes(phy2log_.data(), phy2log_.size() * sizeof(int32_t));
      h.Bytes(plan.phy2log, phy2log_.size() * sizeof(int32_t));
      h.Value(exchange_hash);
      digest = h.digest();
    });
  }

  mark(StatePhase::kCheck);
  bool agreed = false;
  try {
    agreed = backend_->AgreeOnDigest(digest, local_failed);
  } catch (const Error& e) {
    fail_broken(e, "plan agreement");
  }
  last_load_ = load_;
  if (!agreed || local_failed) {
    mark(StatePhase::kExchange);
    mark(StatePhase::kCommit);
    finish();
    if (local_failed) fail(local_status, local_message);
    fail(Status::kMismatch,
         "the ranks' plans differ (or a rank failed before the check); nothing moved");
  }

  report_.balancedness_before =
      Evaluate(s, load_.data(), phy2log_.data(), nullptr, nullptr).balancedness;
  report_.balancedness_after =
      Evaluate(s, load_.data(), plan.phy2log, nullptr, nullptr).balancedness;
  report_.slots_moved = slots_moved;

  mark(StatePhase::kExchange);
  ExchangeOutcome ex;
  if (report_.slots_moved > 0) {
    try {
      ex = backend_->Exchange();
    } catch (const Error& e) {
      // The backend reports exchange errors in the outcome; a throw means it
      // failed around the exchange (e.g. forking its streams) and cannot say
      // what moved.
      fail_broken(e, "exchange");
    } catch (const std::exception& e) {
      fail_broken(as_error(e), "exchange");
    }
  } else {
    ex.started = true;
    ex.layers_done = L;
  }
  report_.bytes_sent = ex.bytes_sent;
  report_.bytes_received = ex.bytes_received;

  mark(StatePhase::kCommit);
  int32_t commit = 0;
  if (ex.status == Status::kSuccess) {
    commit = report_.slots_moved > 0 ? L : 0;
  } else if (ex.started) {
    EPLB_ASSERT(ex.layers_done >= 0 && ex.layers_done <= L);
    commit = ex.layers_done;
  }
  if (commit > 0) {
    try {
      backend_->CommitMaps(0, commit, plan);
    } catch (const Error& e) {
      fail_broken(e, "map commit");
    } catch (const std::exception& e) {
      fail_broken(as_error(e), "map commit");
    }
    std::memcpy(phy2log_.data(), plan.phy2log,
                static_cast<size_t>(commit) * s.num_physical_experts * sizeof(int32_t));
  }
  report_.layers_committed = (report_.slots_moved > 0) ? commit : 0;
  finish();

  if (ex.status != Status::kSuccess) {
    if (ex.started) {
      MarkBroken("exchange failed after weights began to move: " + ex.message);
      fail(ex.status, Format("exchange failed after layers [0, %d) moved (their maps are "
                             "committed, the others keep the old ones): %s",
                             ex.layers_done, ex.message.c_str()));
    }
    // Past the check the other ranks have enqueued their transfers with
    // this one: a failure here before anything moved still leaves them
    // waiting on it, so the state is broken all the same.
    MarkBroken("exchange failed on this rank after the plans agreed: " + ex.message);
    fail(ex.status,
         "exchange failed on this rank after the plans agreed; nothing moved here, "
         "but the other ranks' transfers wait on it: " +
             ex.message);
  }
  if (local_failed) {  // a MarkPhase failure after the check (an event record)
    MarkBroken(local_message);
    fail(local_status, local_message);
  }
}

}  // namespace eplb
