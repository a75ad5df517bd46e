// Replay engine, synthetic histories and report writers (see replay.h).
#include "replay.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ostream>

#include "error.h"

namespace eplb {

const char* ReplayPolicyName(ReplayPolicy p) {
  switch (p) {
    case ReplayPolicy::kReference:
      return "reference";
    case ReplayPolicy::kChurnAware:
      return "churn-aware";
    case ReplayPolicy::kHistory:
      return "history";
    case ReplayPolicy::kHindsight:
      return "hindsight";
    case ReplayPolicy::kStatic:
      return "static";
  }
  return "unknown";
}

ReplayPolicy ParseReplayPolicy(const std::string& n) {
  if (n == "reference") return ReplayPolicy::kReference;
  if (n == "churn-aware" || n == "churn") return ReplayPolicy::kChurnAware;
  if (n == "history") return ReplayPolicy::kHistory;
  if (n == "hindsight") return ReplayPolicy::kHindsight;
  if (n == "static") return ReplayPolicy::kStatic;
  Throw(Status::kInvalidArgument,
        "policy '%s' unknown (reference, churn-aware, history, hindsight, static)", n.c_str());
}

std::vector<int32_t> InitialPlacement(const PlanShape& s) {
  const int32_t P = s.num_physical_experts, E = s.num_logical_experts;
  std::vector<int32_t> p(static_cast<size_t>(s.num_layers) * P);
  for (int32_t l = 0; l < s.num_layers; ++l)
    for (int32_t k = 0; k < P; ++k) p[static_cast<size_t>(l) * P + k] = k < E ? k : (k - E) % E;
  return p;
}

namespace {

// The loads of steps [from, to), summed per (layer, expert). Each step's
// loads are below 2^53 (the readers check), but a sum over many steps can
// pass it, and int64: that is an error (the planner takes loads below 2^53),
// never a wrapped sum.
void AddSteps(const LoadTrace& t, int32_t from, int32_t to, std::vector<int64_t>* sum) {
  const size_t n = static_cast<size_t>(t.num_layers) * t.num_logical_experts;
  sum->assign(n, 0);
  for (int32_t s = from; s < to; ++s) {
    const int64_t* b = t.step(s);
    for (size_t i = 0; i < n; ++i) {
      int64_t& x = (*sum)[i];
      if (b[i] > kMaxLoad - 1 - x) {
        Throw(Status::kInvalidArgument,
              "the loads of layer %d, expert %d over steps [%d, %d) sum past 2^53 (the "
              "planner's limit); scale the trace down",
              static_cast<int>(i / t.num_logical_experts),
              static_cast<int>(i % t.num_logical_experts), from, to);
      }
      x += b[i];
    }
  }
}

}  // namespace

ReplayResult RunReplay(const LoadTrace& trace, const ReplayConfig& c) {
  PlanShape shape;
  shape.num_layers = trace.num_layers;
  shape.num_logical_experts = trace.num_logical_experts;
  shape.num_physical_experts = c.num_physical_experts;
  shape.num_groups = c.num_groups;
  shape.num_nodes = c.num_nodes;
  shape.num_ranks = c.num_ranks;
  ValidateShape(shape);
  ResolvePolicy(shape, Policy::kAuto);
  EPLB_CHECK_ARG(c.interval >= 1, "interval (%d) must be >= 1", c.interval);
  const int32_t S = trace.num_steps(), I = c.interval;
  EPLB_CHECK_ARG(S >= 2 * I, "the history has %d steps; it needs at least 2 * interval = %d", S,
                 2 * I);
  EPLB_CHECK_ARG(c.half_life_steps > 0.0 && std::isfinite(c.half_life_steps),
                 "half_life_steps (%g) must be > 0", c.half_life_steps);
  EPLB_CHECK_ARG(c.bytes_per_expert >= 0, "bytes_per_expert must be >= 0");
  ChurnOptions churn = c.churn;
  churn.load_estimate = nullptr;
  ValidateChurnOptions(shape, churn);

  const int32_t L = shape.num_layers, E = shape.num_logical_experts;
  const int32_t P = shape.num_physical_experts;
  const size_t LE = static_cast<size_t>(L) * E, LP = static_cast<size_t>(L) * P;

  ReplayResult res;
  res.policy = ReplayPolicyName(c.policy);
  res.shape = shape;
  res.interval = I;
  res.num_steps = S;
  res.bytes_per_expert = c.bytes_per_expert;

  Planner planner;
  ChurnPlanner churn_planner;
  std::vector<int32_t> current = InitialPlacement(shape), next(LP), logcnt(LE);
  if (c.keep_placements) res.placements.push_back(current);
  std::vector<int64_t> plan_load, window;
  std::vector<double> estimate(LE, 0.0);
  const double decay = std::pow(0.5, 1.0 / c.half_life_steps);
  int32_t fed = 0;  // steps folded into the estimate
  if (c.adaptive_forecast) ValidateForecastConfig(c.forecast);
  std::vector<double> forecast_state(
      c.adaptive_forecast ? static_cast<size_t>(ForecastStateSize(L, E, c.forecast)) : 0, 0.0);

  std::vector<int32_t> fixed;  // hindsight / static placement
  if (c.policy == ReplayPolicy::kHindsight) {
    AddSteps(trace, 0, S, &plan_load);
    fixed.resize(LP);
    planner.Plan(shape, Policy::kAuto, Migration::kNone, plan_load.data(), nullptr, fixed.data(),
                 logcnt.data(), nullptr);
  }

  const int32_t total_points = S / I - 1;
  double plan_seconds = 0.0, forecast_seconds = 0.0;
  for (int32_t t = I; t + I <= S; t += I) {
    bool skipped = false;
    double predicted = 0.0;
    auto t0 = std::chrono::steady_clock::now();
    switch (c.policy) {
      case ReplayPolicy::kReference:
      case ReplayPolicy::kStatic:
        if (c.policy == ReplayPolicy::kStatic && !fixed.empty()) {
          next = current;
          skipped = true;
          break;
        }
        AddSteps(trace, t - I, t, &plan_load);
        planner.Plan(shape, Policy::kAuto, Migration::kNone, plan_load.data(), nullptr, next.data(),
                     logcnt.data(), nullptr);
        if (c.policy == ReplayPolicy::kStatic) fixed = next;
        break;
      case ReplayPolicy::kHistory:
        AddSteps(trace, 0, t, &plan_load);
        planner.Plan(shape, Policy::kAuto, Migration::kNone, plan_load.data(), nullptr, next.data(),
                     logcnt.data(), nullptr);
        break;
      case ReplayPolicy::kHindsight:
        next = fixed;
        break;
      case ReplayPolicy::kChurnAware: {
        if (c.adaptive_forecast) {
          for (; fed < t; ++fed)
            UpdateForecastState(L, E, c.forecast, trace.step(fed), forecast_state.data());
          ForecastFromState(L, E, c.forecast, forecast_state.data(), estimate.data(), nullptr);
        } else {
          for (; fed < t; ++fed) UpdateLoadEstimate(LE, decay, trace.step(fed), estimate.data());
        }
        const auto t1 = std::chrono::steady_clock::now();
        forecast_seconds += std::chrono::duration<double>(t1 - t0).count();
        t0 = t1;
        AddSteps(trace, t - I, t, &plan_load);
        churn.load_estimate = estimate.data();
        // Warm-up: the first point leaves the arbitrary initial placement (its
        // churn is not counted), so it plans without a budget.
        ChurnOptions opts = churn;
        if (t == I) opts.max_moved_fraction = 1.0;
        const ChurnResult cr = churn_planner.Plan(shape, opts, plan_load.data(), current.data(),
                                                  next.data(), logcnt.data(), nullptr);
        skipped = cr.skipped;
        predicted = cr.predicted_after - cr.predicted_before;
        break;
      }
    }
    plan_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t moved = skipped ? 0 : CountNewHoldings(shape, next.data(), current.data());
    AddSteps(trace, t, t + I, &window);
    const PlanMetrics m = Evaluate(shape, window.data(), next.data(), nullptr, nullptr);
    current.swap(next);
    res.step.push_back(t);
    res.balancedness.push_back(m.balancedness);
    res.new_holdings.push_back(moved);
    res.churn_per.push_back(static_cast<double>(moved) / static_cast<double>(LP));
    res.skipped_per.push_back(skipped ? 1 : 0);
    res.predicted_gain.push_back(predicted);
    int64_t bytes = 0;
    if (__builtin_mul_overflow(moved, c.bytes_per_expert, &bytes) ||
        __builtin_add_overflow(res.bytes_moved, bytes, &res.bytes_moved)) {
      Throw(Status::kInvalidArgument,
            "bytes moved overflow int64 (bytes_per_expert %lld); give a smaller size",
            static_cast<long long>(c.bytes_per_expert));
    }
    if (skipped) ++res.skipped;
    if (c.keep_placements) res.placements.push_back(current);
    if (c.progress) c.progress(static_cast<int32_t>(res.step.size()), total_points);
  }
  res.rearrangements = static_cast<int32_t>(res.step.size());
  double bsum = 0.0, csum = 0.0;
  for (int32_t k = 0; k < res.rearrangements; ++k) {
    bsum += res.balancedness[k];
    if (k > 0) csum += res.churn_per[k];
  }
  res.forward_balancedness = bsum / res.rearrangements;
  res.churn = res.rearrangements > 1 ? csum / (res.rearrangements - 1) : 0.0;
  res.plan_seconds_mean = plan_seconds / res.rearrangements;
  res.forecast_seconds_mean = forecast_seconds / res.rearrangements;
  return res;
}

// ---------------------------------------------------------------------------
// Synthetic histories

const char* SyntheticModeName(SyntheticMode m) {
  switch (m) {
    case SyntheticMode::kStationary:
      return "stationary";
    case SyntheticMode::kDrift:
      return "drift";
    case SyntheticMode::kShift:
      return "shift";
  }
  return "unknown";
}

SyntheticMode ParseSyntheticMode(const std::string& n) {
  if (n == "stationary") return SyntheticMode::kStationary;
  if (n == "drift") return SyntheticMode::kDrift;
  if (n == "shift") return SyntheticMode::kShift;
  Throw(Status::kInvalidArgument, "synthetic mode '%s' unknown (stationary, drift, shift)",
        n.c_str());
}

namespace {
// splitmix64: a tiny generator whose output is the same on every platform
// (std:: distributions are implementation defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : x_(seed) {}
  uint64_t Next() {
    uint64_t z = (x_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() {
    return (static_cast<double>(Next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double Normal() {
    const double u = Uniform(), v = Uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }

 private:
  uint64_t x_;
};
}  // namespace

LoadTrace GenerateSynthetic(const SyntheticConfig& c) {
  EPLB_CHECK_ARG(c.num_steps >= 1 && c.num_steps <= (1 << 20), "steps (%d) must be in [1, 2^20]",
                 c.num_steps);
  EPLB_CHECK_ARG(c.num_layers >= 1 && c.num_layers <= kMaxLayers, "layers (%d) out of range",
                 c.num_layers);
  EPLB_CHECK_ARG(c.num_logical_experts >= 1 && c.num_logical_experts <= kMaxLogicalExperts,
                 "experts (%d) out of range", c.num_logical_experts);
  EPLB_CHECK_ARG(c.num_groups >= 1 && c.num_logical_experts % c.num_groups == 0,
                 "groups (%d) must divide experts (%d)", c.num_groups, c.num_logical_experts);
  EPLB_CHECK_ARG(c.topk >= 1 && c.topk <= c.num_logical_experts, "topk (%d) out of range", c.topk);
  EPLB_CHECK_ARG(c.tokens_per_step >= 1.0 && c.tokens_per_step < 1e9,
                 "tokens_per_step (%g) out of range", c.tokens_per_step);
  EPLB_CHECK_ARG(c.drift_steps > 0.0 && c.shift_every >= 1,
                 "drift_steps / shift_every must be > 0");
  // The history is held in memory: at most 2^28 loads (2 GiB), e.g. 18078
  // steps of 58 layers x 256 experts.
  const int64_t loads = int64_t{c.num_steps} * c.num_layers * c.num_logical_experts;
  EPLB_CHECK_ARG(
      loads <= (int64_t{1} << 28),
      "steps (%d) x layers (%d) x experts (%d) = %lld loads, above the 2^28 (2 GiB) a "
      "history may hold; give at most %lld steps",
      c.num_steps, c.num_layers, c.num_logical_experts, static_cast<long long>(loads),
      static_cast<long long>((int64_t{1} << 28) / (int64_t{c.num_layers} * c.num_logical_experts)));
  const int32_t L = c.num_layers, E = c.num_logical_experts, K = c.topk;
  const int32_t per_group = E / c.num_groups;
  Rng rng(c.seed * 0x2545F4914F6CDD1Dull + static_cast<uint64_t>(c.mode) + 1);

  LoadTrace t;
  t.model = std::string("synthetic-") + SyntheticModeName(c.mode);
  t.num_layers = L;
  t.num_logical_experts = E;
  t.topk = K;
  const size_t LE = static_cast<size_t>(L) * E;
  std::vector<double> mu(LE), dev(LE, 0.0);
  auto draw_popularity = [&]() {
    for (int32_t l = 0; l < L; ++l) {
      std::vector<double> g(c.num_groups);
      for (auto& x : g) x = c.group_sigma * rng.Normal();
      for (int32_t e = 0; e < E; ++e)
        mu[static_cast<size_t>(l) * E + e] = g[e / per_group] + c.popularity_sigma * rng.Normal();
    }
  };
  draw_popularity();
  // Drift: an Ornstein-Uhlenbeck deviation with the popularity's spread and
  // a correlation time of drift_steps, so the ranking reshuffles slowly.
  const double theta = 1.0 / c.drift_steps;
  const double drift_sigma = c.popularity_sigma * std::sqrt(2.0 * theta);
  if (c.mode == SyntheticMode::kDrift)
    for (auto& x : dev) x = c.popularity_sigma * rng.Normal();

  std::vector<double> x(E);
  std::vector<int64_t> cnt(E);
  std::vector<std::pair<double, int32_t>> frac(E);
  t.loads.reserve(static_cast<size_t>(c.num_steps) * LE);
  for (int32_t s = 0; s < c.num_steps; ++s) {
    if (c.mode == SyntheticMode::kShift && s > 0 && s % c.shift_every == 0) draw_popularity();
    if (c.mode == SyntheticMode::kDrift)
      for (auto& d : dev) d += -theta * d + drift_sigma * rng.Normal();
    const double tok = std::floor(c.tokens_per_step * std::exp(0.5 * rng.Normal() - 0.125));
    const int64_t T = std::max<int64_t>(1, static_cast<int64_t>(tok));
    t.tokens.push_back(T);
    const int64_t total = T * K;
    for (int32_t l = 0; l < L; ++l) {
      const size_t o = static_cast<size_t>(l) * E;
      double mx = -1e300;
      for (int32_t e = 0; e < E; ++e) {
        x[e] = mu[o + e] + dev[o + e] + c.step_sigma * rng.Normal();
        mx = std::max(mx, x[e]);
      }
      double z = 0.0;
      for (int32_t e = 0; e < E; ++e) z += (x[e] = std::exp(x[e] - mx));
      // Expected token-slots plus sampling noise, rescaled to the exact row
      // sum by largest remainders (ties: lowest expert).
      double sum = 0.0;
      for (int32_t e = 0; e < E; ++e) {
        const double m = static_cast<double>(total) * x[e] / z;
        x[e] = std::max(0.0, m + std::sqrt(m) * rng.Normal());
        sum += x[e];
      }
      int64_t assigned = 0;
      for (int32_t e = 0; e < E; ++e) {
        const double v = sum > 0.0 ? x[e] * static_cast<double>(total) / sum : 0.0;
        cnt[e] = static_cast<int64_t>(std::floor(v));
        assigned += cnt[e];
        frac[e] = {v - std::floor(v), e};
      }
      std::stable_sort(frac.begin(), frac.end(),
                       [](const std::pair<double, int32_t>& a,
                          const std::pair<double, int32_t>& b) { return a.first > b.first; });
      for (int64_t k = 0; assigned < total; ++k, ++assigned) ++cnt[frac[k % E].second];
      for (int32_t e = 0; e < E; ++e) t.loads.push_back(cnt[e]);
    }
  }
  return t;
}

// ---------------------------------------------------------------------------
// Output

void PrintReplayTable(std::ostream& out, const std::vector<ReplayResult>& rs) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%-12s %10s %8s %7s %7s %9s %12s %12s\n", "policy", "fwd-balance",
                "churn", "points", "skipped", "plan-ms", "forecast-ms", "bytes-moved");
  out << buf;
  for (const ReplayResult& r : rs) {
    std::snprintf(buf, sizeof(buf), "%-12s %10.4f %8.4f %7d %7d %9.3f %12.3f %12lld\n",
                  r.policy.c_str(), r.forward_balancedness, r.churn, r.rearrangements, r.skipped,
                  r.plan_seconds_mean * 1e3, r.forecast_seconds_mean * 1e3,
                  static_cast<long long>(r.bytes_moved));
    out << buf;
  }
}

namespace {
void JsonString(std::ostream& out, const std::string& s) {
  out << '"';
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out << '\\' << ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\u%04x", ch);
      out << b;
    } else {
      out << ch;
    }
  }
  out << '"';
}
std::string Num(double v) {
  char b[32];
  std::snprintf(b, sizeof(b), "%.17g", v);
  return b;
}
template <typename T>
void JsonArray(std::ostream& out, const std::vector<T>& v) {
  out << '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out << ',';
    out << Num(static_cast<double>(v[i]));
  }
  out << ']';
}
}  // namespace

void WriteReplayJson(std::ostream& out, const ReplayResult& r) {
  out << "{\n  \"policy\": ";
  JsonString(out, r.policy);
  out << ",\n  \"source\": ";
  JsonString(out, r.source);
  out << ",\n  \"layers\": " << r.shape.num_layers
      << ", \"experts\": " << r.shape.num_logical_experts
      << ", \"slots\": " << r.shape.num_physical_experts << ", \"gpus\": " << r.shape.num_ranks
      << ", \"groups\": " << r.shape.num_groups << ", \"nodes\": " << r.shape.num_nodes
      << ", \"interval\": " << r.interval << ", \"steps\": " << r.num_steps;
  out << ",\n  \"forward_balancedness\": " << Num(r.forward_balancedness);
  out << ",\n  \"churn\": " << Num(r.churn);
  out << ",\n  \"rearrangements\": " << r.rearrangements;
  out << ",\n  \"skipped\": " << r.skipped;
  out << ",\n  \"plan_ms_mean\": " << Num(r.plan_seconds_mean * 1e3);
  out << ",\n  \"forecast_ms_mean\": " << Num(r.forecast_seconds_mean * 1e3);
  out << ",\n  \"bytes_per_expert\": " << r.bytes_per_expert;
  out << ",\n  \"bytes_moved\": " << r.bytes_moved;
  out << ",\n  \"per_rearrangement\": {\n    \"step\": ";
  JsonArray(out, r.step);
  out << ",\n    \"balancedness\": ";
  JsonArray(out, r.balancedness);
  out << ",\n    \"churn\": ";
  JsonArray(out, r.churn_per);
  out << ",\n    \"new_holdings\": ";
  JsonArray(out, r.new_holdings);
  out << ",\n    \"skipped\": ";
  JsonArray(out, r.skipped_per);
  out << "\n  }\n}\n";
}

namespace {
// One SVG line chart of several series over the rearrangement points.
void SvgChart(std::ostream& out, const char* title, const std::vector<int32_t>& x,
              const std::vector<std::pair<std::string, const std::vector<double>*>>& series,
              const char* const* colors, bool bars) {
  const double W = 860, H = 300, ml = 60, mr = 20, mt = 30, mb = 40;
  double lo = 1e300, hi = -1e300;
  for (const auto& s : series)
    for (double v : *s.second) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  if (bars) lo = 0.0;
  if (!(hi > lo)) hi = lo + 1.0;
  const double pad = (hi - lo) * 0.05;
  if (!bars) lo -= pad;
  hi += pad;
  const double x0 = x.empty() ? 0 : x.front(),
               x1 = x.empty() ? 1 : std::max(x.back(), x.front() + 1);
  auto X = [&](double v) { return ml + (v - x0) / (x1 - x0) * (W - ml - mr); };
  auto Y = [&](double v) { return mt + (hi - v) / (hi - lo) * (H - mt - mb); };
  char b[256];
  std::snprintf(b, sizeof(b), "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g'>\n",
                W, H);
  out << b << "<text x='" << ml << "' y='18' font-size='14'>" << title << "</text>\n";
  out << "<rect x='" << ml << "' y='" << mt << "' width='" << W - ml - mr << "' height='"
      << H - mt - mb << "' fill='none' stroke='#999'/>\n";
  for (int k = 0; k <= 4; ++k) {
    const double v = lo + (hi - lo) * k / 4.0;
    std::snprintf(b, sizeof(b),
                  "<text x='%g' y='%g' font-size='11' text-anchor='end'>%.3f</text>"
                  "<line x1='%g' x2='%g' y1='%g' y2='%g' stroke='#eee'/>\n",
                  ml - 4, Y(v) + 4, v, ml, W - mr, Y(v), Y(v));
    out << b;
  }
  std::snprintf(b, sizeof(b), "<text x='%g' y='%g' font-size='11'>step %g</text>", ml, H - 10, x0);
  out << b;
  std::snprintf(b, sizeof(b),
                "<text x='%g' y='%g' font-size='11' text-anchor='end'>step %g</text>\n", W - mr,
                H - 10, x1);
  out << b;
  const double bw = x.size() > 0 ? (W - ml - mr) / (x.size() + 1) / series.size() : 4;
  for (size_t si = 0; si < series.size(); ++si) {
    const std::vector<double>& v = *series[si].second;
    if (bars) {
      for (size_t i = 0; i < v.size() && i < x.size(); ++i) {
        std::snprintf(b, sizeof(b), "<rect x='%g' y='%g' width='%g' height='%g' fill='%s'/>\n",
                      X(x[i]) - bw * series.size() / 2 + bw * si, Y(v[i]), bw * 0.9,
                      Y(lo) - Y(v[i]), colors[si]);
        out << b;
      }
    } else {
      out << "<polyline fill='none' stroke='" << colors[si] << "' stroke-width='1.5' points='";
      for (size_t i = 0; i < v.size() && i < x.size(); ++i) {
        std::snprintf(b, sizeof(b), "%.1f,%.1f ", X(x[i]), Y(v[i]));
        out << b;
      }
      out << "'/>\n";
    }
    std::snprintf(b, sizeof(b),
                  "<rect x='%g' y='%g' width='10' height='10' fill='%s'/><text x='%g' y='%g' "
                  "font-size='12'>",
                  W - mr - 180, mt + 8 + 16.0 * si, colors[si], W - mr - 165, mt + 17 + 16.0 * si);
    out << b << series[si].first << "</text>\n";
  }
  out << "</svg>\n";
}
}  // namespace

void WriteReplayHtml(std::ostream& out, const ReplayResult& r, const ReplayResult& ref) {
  static const char* const kColors[] = {"#1f77b4", "#d62728"};
  char b[512];
  out << "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>eplb replay</title>"
         "<style>body{font-family:sans-serif;margin:20px}td,th{padding:2px 10px;"
         "text-align:right}</style></head><body>\n";
  out << "<h2>eplb replay: " << r.policy << " vs " << ref.policy << "</h2>\n<p>";
  std::snprintf(b, sizeof(b), "history: %s, %d steps; L=%d E=%d P=%d N=%d G=%d M=%d, interval %d",
                r.source.c_str(), r.num_steps, r.shape.num_layers, r.shape.num_logical_experts,
                r.shape.num_physical_experts, r.shape.num_ranks, r.shape.num_groups,
                r.shape.num_nodes, r.interval);
  out << b
      << "</p>\n<table><tr><th>policy</th><th>forward balancedness</th><th>churn</th>"
         "<th>rearrangements</th><th>skipped</th></tr>\n";
  for (const ReplayResult* x : {&r, &ref}) {
    std::snprintf(
        b, sizeof(b), "<tr><td>%s</td><td>%.4f</td><td>%.4f</td><td>%d</td><td>%d</td></tr>\n",
        x->policy.c_str(), x->forward_balancedness, x->churn, x->rearrangements, x->skipped);
    out << b;
  }
  out << "</table>\n";
  SvgChart(out, "forward balancedness per rearrangement (next window)", r.step,
           {{r.policy, &r.balancedness}, {ref.policy, &ref.balancedness}}, kColors, false);
  out << "<br/>\n";
  SvgChart(out, "churn per rearrangement (new (layer, rank, expert) / (L*P))", r.step,
           {{r.policy, &r.churn_per}, {ref.policy, &ref.churn_per}}, kColors, true);
  out << "</body></html>\n";
}

}  // namespace eplb
