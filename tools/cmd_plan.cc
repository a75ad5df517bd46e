// `eplb plan`: plan a case file with the library and write the plan in the
// same format, optionally migration-aware against an old placement, and
// optionally time the planning call.
#include <algorithm>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "cli_util.h"

namespace {

const char kPlanHelp[] =
    "usage: eplb plan --in CASE.eplb --out OUT.eplb [--old FILE]\n"
    "                 [--migration none|preserve|full] [--repeat N]\n"
    "\n"
    "Reads a case (shape and weights; the other blocks are read and ignored),\n"
    "plans it with the library (policy auto) and writes a case file with the\n"
    "blocks phy2log, logcnt, log2phy and objective.\n"
    "\n"
    "  --in FILE        the case to plan (required)\n"
    "  --out FILE       where to write the plan (required unless --repeat);\n"
    "                   written only when everything succeeded\n"
    "  --old FILE       the placement in force: FILE's old_phy2log block if it\n"
    "                   has one, else its phy2log block (an earlier output can be\n"
    "                   fed back). The plan is then migration-aware and the\n"
    "                   output also records moved_slots.\n"
    "  --migration M    none, preserve or full (default full); needs --old\n"
    "  --repeat N       plan N times more and print 'median_us X' (planning\n"
    "                   call only, no file I/O)\n"
    "  --help           this text\n";

const char* PolicyName(eplbPolicy_t p) {
  switch (p) {
    case EPLB_POLICY_HIERARCHICAL:
      return "hierarchical";
    case EPLB_POLICY_GLOBAL:
      return "global";
    case EPLB_POLICY_CHURN_AWARE:
      return "churn-aware";
    default:
      return "auto";
  }
}

int RunPlan(int argc, char** argv) {
  const char* cmd = "plan";
  eplb_cli::Options opts;
  bool help = false;
  if (!opts.Parse(
          cmd, argc, argv,
          {{"in", true}, {"out", true}, {"old", true}, {"migration", true}, {"repeat", true}},
          &help)) {
    return 2;
  }
  if (help) {
    std::fputs(kPlanHelp, stdout);
    return 0;
  }
  if (!opts.Has("in")) {
    std::fprintf(stderr, "eplb plan: --in is required (see --help)\n");
    return 2;
  }
  if (!opts.Has("out") && !opts.Has("repeat")) {
    std::fprintf(stderr, "eplb plan: --out is required unless --repeat is given\n");
    return 2;
  }
  eplbMigration_t migration = EPLB_MIGRATION_FULL;
  if (opts.Has("migration")) {
    std::string m = opts.Get("migration");
    if (m == "none") {
      migration = EPLB_MIGRATION_NONE;
    } else if (m == "preserve") {
      migration = EPLB_MIGRATION_PRESERVE;
    } else if (m == "full") {
      migration = EPLB_MIGRATION_FULL;
    } else {
      std::fprintf(stderr, "eplb plan: --migration must be none, preserve or full, not '%s'\n",
                   m.c_str());
      return 2;
    }
    if (!opts.Has("old")) {
      std::fprintf(stderr, "eplb plan: --migration needs --old\n");
      return 2;
    }
  }
  long long repeat = 0;
  if (opts.Has("repeat") && !eplb_cli::ParseIntArg(opts.Get("repeat"), 1, 1000000, &repeat)) {
    std::fprintf(stderr, "eplb plan: --repeat must be an integer in [1, 1000000], not '%s'\n",
                 opts.Get("repeat").c_str());
    return 2;
  }

  eplb::PlanCase in;
  if (!eplb_cli::LoadCase(cmd, opts.Get("in"), &in)) return 1;

  std::vector<int32_t> old;
  if (opts.Has("old")) {
    eplb::PlanCase o;
    if (!eplb_cli::LoadCase(cmd, opts.Get("old"), &o)) return 1;
    if (o.num_layers != in.num_layers || o.num_logical_experts != in.num_logical_experts ||
        o.num_physical_experts != in.num_physical_experts) {
      std::fprintf(stderr,
                   "eplb plan: --old %s has shape layers %d logical %d physical %d, the case "
                   "has layers %d logical %d physical %d\n",
                   opts.Get("old").c_str(), o.num_layers, o.num_logical_experts,
                   o.num_physical_experts, in.num_layers, in.num_logical_experts,
                   in.num_physical_experts);
      return 1;
    }
    old = !o.old_phy2log.empty() ? o.old_phy2log : o.phy2log;
    if (old.empty()) {
      std::fprintf(stderr, "eplb plan: --old %s has neither an old_phy2log nor a phy2log block\n",
                   opts.Get("old").c_str());
      return 1;
    }
  }

  const size_t L = static_cast<size_t>(in.num_layers);
  const size_t E = static_cast<size_t>(in.num_logical_experts);
  const size_t P = static_cast<size_t>(in.num_physical_experts);
  eplbPlanConfig_t config = eplb_cli::ConfigFromCase(in);
  config.migration = migration;
  const int32_t* h_old = old.empty() ? nullptr : old.data();

  eplb::PlanCase out;
  out.name = in.name;
  out.num_layers = in.num_layers;
  out.num_logical_experts = in.num_logical_experts;
  out.num_physical_experts = in.num_physical_experts;
  out.num_groups = in.num_groups;
  out.num_nodes = in.num_nodes;
  out.num_ranks = in.num_ranks;
  out.weights = in.weights;
  out.phy2log.assign(L * P, -1);
  out.logcnt.assign(L * E, 0);
  out.log2phy.assign(L * E * (P - E + 1), -1);
  eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
  if (!eplb_cli::CheckStatus(cmd, "eplbPlanCompute",
                             eplbPlanCompute(&config, in.weights.data(), h_old, out.phy2log.data(),
                                             out.logcnt.data(), out.log2phy.data(), &info))) {
    return 1;
  }
  eplbPlanMetrics_t metrics = EPLB_PLAN_METRICS_INIT;
  if (!eplb_cli::CheckStatus(cmd, "eplbPlanEvaluate",
                             eplbPlanEvaluate(&config, in.weights.data(), out.phy2log.data(), h_old,
                                              nullptr, &metrics))) {
    return 1;
  }
  out.has_objective = true;
  out.max_load_sum = metrics.max_load_sum;
  out.balancedness = metrics.balancedness;
  if (h_old != nullptr) out.moved_slots = metrics.moved_slots;

  if (repeat > 0) {
    // Scratch outputs so the timed calls do exactly the work of the first.
    std::vector<int32_t> p2l(out.phy2log.size()), cnt(out.logcnt.size()), l2p(out.log2phy.size());
    std::vector<double> us;
    us.reserve(static_cast<size_t>(repeat));
    for (long long i = 0; i < repeat; ++i) {
      eplbPlanInfo_t rinfo = EPLB_PLAN_INFO_INIT;
      double t0 = eplb_cli::NowMicros();
      eplbStatus_t st = eplbPlanCompute(&config, in.weights.data(), h_old, p2l.data(), cnt.data(),
                                        l2p.data(), &rinfo);
      double t1 = eplb_cli::NowMicros();
      if (!eplb_cli::CheckStatus(cmd, "eplbPlanCompute", st)) return 1;
      if (p2l != out.phy2log) {
        std::fprintf(stderr, "eplb plan: repeated planning gave a different plan\n");
        return 1;
      }
      us.push_back(t1 - t0);
    }
    std::sort(us.begin(), us.end());
    size_t n = us.size();
    double median = n % 2 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
    std::printf("median_us %.3f\n", median);
  }

  if (opts.Has("out")) {
    std::ostringstream text;
    try {
      eplb::WritePlanCase(text, out);
    } catch (const eplb::Error& e) {
      std::fprintf(stderr, "eplb plan: %s\n", e.what());
      return 1;
    }
    if (!eplb_cli::WriteFileAtomic(cmd, opts.Get("out"), text.str())) return 1;
    std::printf("wrote %s: policy %s, max_load_sum %.17g, balancedness %.17g",
                opts.Get("out").c_str(), PolicyName(info.policy), metrics.max_load_sum,
                metrics.balancedness);
    if (h_old != nullptr)
      std::printf(", moved_slots %lld", static_cast<long long>(out.moved_slots));
    std::printf("\n");
  }
  return 0;
}

}  // namespace

EPLB_CLI_REGISTER("plan", "plan a case file (.eplb) and write the placement", RunPlan);
