// eplb — command-line front end of the library. See `eplb --help`.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "cli.h"
#include "eplb/eplb.h"

namespace eplb_cli {

static std::vector<Command>& Registry() {
  static std::vector<Command> commands;
  return commands;
}

bool RegisterCommand(const Command& command) {
  Registry().push_back(command);
  return true;
}

const std::vector<Command>& Commands() {
  std::vector<Command>& c = Registry();
  std::sort(c.begin(), c.end(),
            [](const Command& a, const Command& b) { return std::strcmp(a.name, b.name) < 0; });
  return c;
}

}  // namespace eplb_cli

static void PrintUsage(FILE* out) {
  int v = eplbGetVersion();
  std::fprintf(out, "eplb %d.%d.%d — expert-parallel load balancer for MoE inference\n\n",
               v / 10000, (v / 100) % 100, v % 100);
  std::fprintf(out, "usage: eplb <command> [options]   (eplb <command> --help for details)\n\n");
  std::fprintf(out, "commands:\n");
  for (const auto& c : eplb_cli::Commands()) std::fprintf(out, "  %-8s %s\n", c.name, c.summary);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    PrintUsage(stdout);
    return 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    int v = eplbGetVersion();
    std::printf("eplb %d.%d.%d\n", v / 10000, (v / 100) % 100, v % 100);
    return 0;
  }
  for (const auto& c : eplb_cli::Commands()) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    // A command reports its own errors (exit 1, or 2 for usage); anything
    // that escapes it (memory, most likely) still ends with a message and
    // exit 1, never an abort.
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "eplb %s: out of memory\n", c.name);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "eplb %s: %s\n", c.name, e.what());
    }
    return 1;
  }
  std::fprintf(stderr, "eplb: unknown command '%s'\n\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
