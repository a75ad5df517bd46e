// `eplb replay`: replays a load history (the eplb-loads trace format or a
// built-in synthetic generator) through a planning policy and reports the
// forward balancedness (next window) and the churn (weights that must move),
// as defined in host/replay.h.
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "cli.h"
#include "cli_util.h"
#include "replay.h"

namespace {

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: eplb replay (--trace FILE | --synthetic stationary|drift|shift [--seed S] "
               "[--steps S])\n"
               "         [--gpus N] [--slots P] [--groups G] [--nodes M] [--interval I]\n"
               "         [--policy churn-aware|reference|history|hindsight|static]\n"
               "         [--half-lives H1,H2,.. | --half-life STEPS] [--error-half-life STEPS]\n"
               "         [--budget FRACTION] [--min-gain X] [--min-gain-per-churn X]\n"
               "         [--sticky-slack X] [--refresh-tolerance X] [--single-moves]\n"
               "         [--bytes-per-expert B] [--json OUT] [--report OUT.html]\n"
               "Defaults: trace: gpus 8 slots 80 groups 1 nodes 1; synthetic (DeepSeek-V3 shape):\n"
               "gpus 32 slots 288 groups 8 nodes 4; interval 10; policy churn-aware (adaptive\n"
               "forecast, half-lives 4,16,64,256 chosen per layer by the error of the last ~30\n"
               "steps; --half-life fixes one; budget 0.29, min-gain 0.001, min-gain-per-churn\n"
               "0.075, sticky-slack 0.1, refresh-tolerance 0.01: a layer's candidates are\n"
               "rebuilt when the cached fresh plan lost more than that on the forecast, -1:\n"
               "every call). The reference policy is also replayed for the\n"
               "comparison table and the report.\n");
}

bool Num(const eplb_cli::Options& o, const char* name, double lo, double hi, double* v) {
  if (!o.Has(name)) return true;
  const std::string s = o.Get(name);
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !(x >= lo && x <= hi)) {
    std::fprintf(stderr, "eplb replay: --%s '%s' must be a number in [%g, %g]\n", name, s.c_str(),
                 lo, hi);
    return false;
  }
  *v = x;
  return true;
}

bool Int(const eplb_cli::Options& o, const char* name, long long lo, long long hi, long long* v) {
  if (!o.Has(name)) return true;
  if (!eplb_cli::ParseIntArg(o.Get(name), lo, hi, v)) {
    std::fprintf(stderr, "eplb replay: --%s '%s' must be an integer in [%lld, %lld]\n", name,
                 o.Get(name).c_str(), lo, hi);
    return false;
  }
  return true;
}

int RunReplayCommand(int argc, char** argv) {
  eplb_cli::Options o;
  bool help = false;
  if (!o.Parse("replay", argc, argv,
               {{"trace", true},
                {"synthetic", true},
                {"seed", true},
                {"steps", true},
                {"gpus", true},
                {"slots", true},
                {"groups", true},
                {"nodes", true},
                {"interval", true},
                {"policy", true},
                {"half-life", true},
                {"budget", true},
                {"min-gain", true},
                {"min-gain-per-churn", true},
                {"single-moves", false},
                {"sticky-slack", true},
                {"refresh-tolerance", true},
                {"half-lives", true},
                {"error-half-life", true},
                {"bytes-per-expert", true},
                {"json", true},
                {"report", true}},
               &help)) {
    return 2;
  }
  if (help) {
    Usage(stdout);
    return 0;
  }
  if (o.Has("trace") == o.Has("synthetic")) {
    std::fprintf(stderr, "eplb replay: give exactly one of --trace and --synthetic\n");
    return 2;
  }
  try {
    eplb::LoadTrace trace;
    std::string source;
    eplb::ReplayConfig c;
    long long gpus = 8, slots = 80, groups = 1, nodes = 1, interval = 10, seed = 1, steps = 300;
    long long bytes = 0;
    if (o.Has("synthetic")) {
      gpus = 32, slots = 288, groups = 8, nodes = 4;
      if (!Int(o, "seed", 0, (1ll << 62), &seed) || !Int(o, "steps", 2, 1 << 20, &steps)) return 2;
      eplb::SyntheticConfig sc;
      sc.mode = eplb::ParseSyntheticMode(o.Get("synthetic"));
      sc.seed = static_cast<uint64_t>(seed);
      sc.num_steps = static_cast<int32_t>(steps);
      trace = eplb::GenerateSynthetic(sc);
      source = "synthetic " + o.Get("synthetic") + " seed " + std::to_string(seed);
    } else {
      if (o.Has("seed") || o.Has("steps")) {
        std::fprintf(stderr, "eplb replay: --seed and --steps apply to --synthetic only\n");
        return 2;
      }
      source = o.Get("trace");
      trace = eplb::ReadLoadTrace(source);
    }
    if (!Int(o, "gpus", 1, 1024, &gpus) || !Int(o, "slots", 1, 4096, &slots) ||
        !Int(o, "groups", 1, 1024, &groups) || !Int(o, "nodes", 1, 1024, &nodes) ||
        !Int(o, "interval", 1, 1 << 20, &interval) ||
        !Int(o, "bytes-per-expert", 0, (1ll << 50), &bytes))
      return 2;
    c.num_ranks = static_cast<int32_t>(gpus);
    c.num_physical_experts = static_cast<int32_t>(slots);
    c.num_groups = static_cast<int32_t>(groups);
    c.num_nodes = static_cast<int32_t>(nodes);
    c.interval = static_cast<int32_t>(interval);
    c.bytes_per_expert = bytes;
    c.policy = eplb::ParseReplayPolicy(o.Get("policy", "churn-aware"));
    if (!Num(o, "half-life", 1e-9, 1e12, &c.half_life_steps) ||
        !Num(o, "budget", 0.0, 1.0, &c.churn.max_moved_fraction) ||
        !Num(o, "min-gain", 0.0, 1.0, &c.churn.min_gain) ||
        !Num(o, "min-gain-per-churn", 0.0, 1e6, &c.churn.min_gain_per_churn) ||
        !Num(o, "sticky-slack", -1.0, 10.0, &c.churn.sticky_slack) ||
        !Num(o, "refresh-tolerance", -1.0, 1.0, &c.churn.refresh_tolerance))
      return 2;
    c.churn.single_moves = o.Has("single-moves");
    if (o.Has("half-life")) c.adaptive_forecast = false;
    if (o.Has("half-lives")) {
      std::stringstream hs(o.Get("half-lives"));
      std::string item;
      c.forecast.num_half_lives = 0;
      while (std::getline(hs, item, ',')) {
        char* end = nullptr;
        const double x = std::strtod(item.c_str(), &end);
        if (item.empty() || *end != '\0' || !(x > 0.0 && x < 1e12) ||
            c.forecast.num_half_lives >= eplb::kMaxForecastHalfLives) {
          std::fprintf(stderr, "eplb replay: --half-lives '%s' must be 1..%d numbers > 0\n",
                       o.Get("half-lives").c_str(), eplb::kMaxForecastHalfLives);
          return 2;
        }
        c.forecast.half_lives[c.forecast.num_half_lives++] = x;
      }
    }
    if (!Num(o, "error-half-life", 1e-9, 1e12, &c.forecast.error_half_life)) return 2;
    c.keep_placements = false;
    const bool tty = isatty(fileno(stderr));
    c.progress = [tty](int32_t done, int32_t total) {
      if (tty && total >= 20) std::fprintf(stderr, "\r  rearrangement %d / %d", done, total);
      if (tty && total >= 20 && done == total) std::fprintf(stderr, "\n");
    };
    eplb::ReplayResult result = eplb::RunReplay(trace, c);
    result.source = source;
    std::vector<eplb::ReplayResult> table{result};
    eplb::ReplayResult reference;
    if (c.policy != eplb::ReplayPolicy::kReference) {
      eplb::ReplayConfig rc = c;
      rc.policy = eplb::ReplayPolicy::kReference;
      reference = eplb::RunReplay(trace, rc);
      reference.source = source;
      table.push_back(reference);
    } else {
      reference = result;
    }
    std::printf("replay: %s, %d steps, L=%d E=%d P=%d N=%d G=%d M=%d, interval %d\n",
                source.c_str(), trace.num_steps(), trace.num_layers, trace.num_logical_experts,
                c.num_physical_experts, c.num_ranks, c.num_groups, c.num_nodes, c.interval);
    std::ostringstream ts;
    eplb::PrintReplayTable(ts, table);
    std::fputs(ts.str().c_str(), stdout);
    // Both outputs or neither.
    std::vector<std::pair<std::string, std::string>> files;
    if (o.Has("json")) {
      std::ostringstream js;
      eplb::WriteReplayJson(js, result);
      files.emplace_back(o.Get("json"), js.str());
    }
    if (o.Has("report")) {
      std::ostringstream hs;
      eplb::WriteReplayHtml(hs, result, reference);
      files.emplace_back(o.Get("report"), hs.str());
    }
    if (!files.empty() && !eplb_cli::WriteFilesAtomic("replay", files)) return 1;
  } catch (const eplb::Error& e) {
    std::fprintf(stderr, "eplb replay: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

EPLB_CLI_REGISTER("replay", "replay a load history: next-window balance vs churn of a policy",
                  RunReplayCommand);
