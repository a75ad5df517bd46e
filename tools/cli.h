// The eplb command-line tool: each subcommand lives in its own tools/cmd_*.cc
// and registers itself here, so subcommands are added without touching a
// shared dispatch table.
#pragma once

#include <string>
#include <vector>

namespace eplb_cli {

using CommandFn = int (*)(int argc, char** argv);  // argv[0] is the subcommand

struct Command {
  const char* name;
  const char* summary;  // one line for `eplb --help`
  CommandFn run;
};

// Registers a subcommand; returns true so it can initialise a static.
bool RegisterCommand(const Command& command);
const std::vector<Command>& Commands();

}  // namespace eplb_cli

#define EPLB_CLI_REGISTER(name, summary, fn) \
  static const bool eplb_cli_registered_##fn = ::eplb_cli::RegisterCommand({name, summary, fn})
