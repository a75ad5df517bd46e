// `eplb eval`: score the placement recorded in a case file on its weights.
#include <cstdio>
#include <string>

#include "cli.h"
#include "cli_util.h"

namespace {

const char kEvalHelp[] =
    "usage: eplb eval --in CASE.eplb\n"
    "\n"
    "Scores the file's phy2log on its weights with the library and prints\n"
    "  objective max_load_sum X balancedness Y\n"
    "(17 significant digits; the same line as the format's objective block).\n"
    "\n"
    "  --in FILE   the case; it must have a phy2log block (required)\n"
    "  --help      this text\n";

int RunEval(int argc, char** argv) {
  const char* cmd = "eval";
  eplb_cli::Options opts;
  bool help = false;
  if (!opts.Parse(cmd, argc, argv, {{"in", true}}, &help)) return 2;
  if (help) {
    std::fputs(kEvalHelp, stdout);
    return 0;
  }
  if (!opts.Has("in")) {
    std::fprintf(stderr, "eplb eval: --in is required (see --help)\n");
    return 2;
  }
  eplb::PlanCase c;
  if (!eplb_cli::LoadCase(cmd, opts.Get("in"), &c)) return 1;
  if (c.phy2log.empty()) {
    std::fprintf(stderr, "eplb eval: %s has no phy2log block to evaluate\n",
                 opts.Get("in").c_str());
    return 1;
  }
  eplbPlanConfig_t config = eplb_cli::ConfigFromCase(c);
  eplbPlanMetrics_t metrics = EPLB_PLAN_METRICS_INIT;
  if (!eplb_cli::CheckStatus(cmd, "eplbPlanEvaluate",
                             eplbPlanEvaluate(&config, c.weights.data(), c.phy2log.data(), nullptr,
                                              nullptr, &metrics))) {
    return 1;
  }
  std::printf("objective max_load_sum %.17g balancedness %.17g\n", metrics.max_load_sum,
              metrics.balancedness);
  return 0;
}

}  // namespace

EPLB_CLI_REGISTER("eval", "score the placement of a case file (.eplb)", RunEval);
