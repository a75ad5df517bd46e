// Small helpers shared by the eplb subcommands: option parsing, reading a
// case with a readable error, writing a file all-or-nothing, and timing.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "case_format.h"
#include "eplb/eplb.h"
#include "error.h"

namespace eplb_cli {

// Parses `--name value`, `--name=value` and bare `--flag` options. Anything
// else (a stray word, an unknown option, a missing value) is an error, so a
// typo never silently falls back to a default.
class Options {
 public:
  struct Spec {
    const char* name;  // without the leading "--"
    bool takes_value;
  };

  // Returns false after printing the reason on stderr. `help` is set when
  // --help or -h was given (the other options are then not checked).
  bool Parse(const char* command, int argc, char** argv, const std::vector<Spec>& specs,
             bool* help) {
    *help = false;
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
        *help = true;
        return true;
      }
    }
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
        std::fprintf(stderr, "eplb %s: unexpected argument '%s' (see --help)\n", command,
                     arg.c_str());
        return false;
      }
      std::string name = arg.substr(2), value;
      bool has_inline_value = false;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline_value = true;
      }
      const Spec* spec = nullptr;
      for (const Spec& s : specs)
        if (name == s.name) spec = &s;
      if (spec == nullptr) {
        std::fprintf(stderr, "eplb %s: unknown option '--%s' (see --help)\n", command,
                     name.c_str());
        return false;
      }
      if (spec->takes_value && !has_inline_value) {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "eplb %s: option '--%s' needs a value\n", command, name.c_str());
          return false;
        }
        value = argv[++i];
      } else if (!spec->takes_value && has_inline_value) {
        std::fprintf(stderr, "eplb %s: option '--%s' takes no value\n", command, name.c_str());
        return false;
      }
      if (values_.count(name)) {
        std::fprintf(stderr, "eplb %s: option '--%s' given twice\n", command, name.c_str());
        return false;
      }
      values_[name] = value;
    }
    return true;
  }

  bool Has(const std::string& name) const { return values_.count(name) != 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

 private:
  std::map<std::string, std::string> values_;
};

// A whole decimal integer in [lo, hi]; false on anything else.
inline bool ParseIntArg(const std::string& s, long long lo, long long hi, long long* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// Reads a case; on a malformed or missing file prints the parser's message
// (which carries the file name and line number) and returns false.
inline bool LoadCase(const char* command, const std::string& path, eplb::PlanCase* out) {
  try {
    *out = eplb::ReadPlanCase(path);
    return true;
  } catch (const eplb::Error& e) {
    std::fprintf(stderr, "eplb %s: %s\n", command, e.what());
    return false;
  }
}

inline eplbPlanConfig_t ConfigFromCase(const eplb::PlanCase& c) {
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  config.num_layers = c.num_layers;
  config.num_logical_experts = c.num_logical_experts;
  config.num_physical_experts = c.num_physical_experts;
  config.num_groups = c.num_groups;
  config.num_nodes = c.num_nodes;
  config.num_ranks = c.num_ranks;
  config.policy = EPLB_POLICY_AUTO;
  return config;
}

// Prints "eplb CMD: eplbFunction failed: STATUS (detail)" and returns false
// unless `status` is success.
inline bool CheckStatus(const char* command, const char* function, eplbStatus_t status) {
  if (status == EPLB_SUCCESS) return true;
  std::fprintf(stderr, "eplb %s: %s failed: %s (%s)\n", command, function,
               eplbGetStatusString(status), eplbGetLastErrorDetail());
  return false;
}

// Writes each (path, content) all-or-nothing: every content first to a
// temporary file beside its path, and only once all of them are complete
// are they renamed over their paths, so a failure (an unwritable report
// path, a full disk) leaves none of the outputs behind, partial or whole.
// A rename can still fail after an earlier one succeeded (a path that
// became unwritable in between); then the message says so.
inline bool WriteFilesAtomic(const char* command,
                             const std::vector<std::pair<std::string, std::string>>& files) {
  const std::string suffix = ".tmp." + std::to_string(static_cast<long>(::getpid()));
  auto remove_tmp = [&](size_t from, size_t to) {  // the temporaries of files [from, to)
    for (size_t i = from; i < to; ++i) std::remove((files[i].first + suffix).c_str());
  };
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string tmp = files[i].first + suffix;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) out << files[i].second;
    if (out) out.flush();
    if (!out) {
      std::fprintf(stderr, "eplb %s: cannot write '%s'\n", command, tmp.c_str());
      out.close();
      remove_tmp(0, i + 1);
      return false;
    }
  }
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string tmp = files[i].first + suffix;
    if (std::rename(tmp.c_str(), files[i].first.c_str()) != 0) {
      std::fprintf(stderr, "eplb %s: cannot rename '%s' to '%s': %s%s\n", command, tmp.c_str(),
                   files[i].first.c_str(), std::strerror(errno),
                   i > 0 ? " (the outputs before it were written)" : "");
      remove_tmp(i, files.size());
      return false;
    }
  }
  return true;
}

// One file, all-or-nothing (WriteFilesAtomic).
inline bool WriteFileAtomic(const char* command, const std::string& path,
                            const std::string& content) {
  return WriteFilesAtomic(command, {{path, content}});
}

inline double NowMicros() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::micro>(Clock::now().time_since_epoch()).count();
}

}  // namespace eplb_cli
