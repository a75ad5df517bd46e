// The `eplb-loads` trace format (shared/traces/*/README.md): a history of
// per-step logical loads [S][L][E]. Reading and writing. Pure host code.
//
// The reader is strict and line based, because the format is: a header line
// `eplb-loads 1`, an optional `model NAME` line, a shape line
// `layers L experts E topk K steps S`, then for each step s a line
// `step s tokens T` followed by exactly L lines of exactly E integers. Lines
// whose first non-blank character is '#' and blank lines are ignored. Every
// load must be an integer in [0, 2^53); when K > 0 every layer row of a step
// must sum to T * K (the format's invariant: each token adds one to each of
// its K experts). Any violation raises eplb::Error(kInvalidArgument) with the
// message "SOURCE:line N: reason" (SOURCE is the `source` argument, or the
// path for ReadLoadTrace).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace eplb {

struct LoadTrace {
  std::string model;                // empty when the file has no `model` line
  int32_t num_layers = 0;           // L ("layers"), 1..128
  int32_t num_logical_experts = 0;  // E ("experts"), 1..1024
  int32_t topk = 0;                 // K; 0 means unknown (row sums not checked)
  std::vector<int64_t> tokens;      // [S]
  std::vector<int64_t> loads;       // [S][L][E]

  int32_t num_steps() const { return static_cast<int32_t>(tokens.size()); }
  // Host pointer to step s's [L][E] block.
  const int64_t* step(int32_t s) const {
    return loads.data() + static_cast<size_t>(s) * num_layers * num_logical_experts;
  }
};

// Parses a whole file's text; `source` names it in messages. Host; thread safe.
LoadTrace ParseLoadTrace(const std::string& text, const std::string& source);
// Reads and parses a file; an unreadable file raises kInvalidArgument naming it.
LoadTrace ReadLoadTrace(const std::string& path);
// Writes the trace in the format above; what it writes parses back equal.
void WriteLoadTrace(std::ostream& out, const LoadTrace& trace);

}  // namespace eplb
