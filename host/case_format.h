// The conformance case format (`*.eplb`, see shared/conformance/README.md):
// reading and writing. Pure host code. The reader is strict: an unknown
// keyword, a wrong count, a non-number or a value outside the limits raises
// eplb::Error(kInvalidArgument) whose message is "SOURCE:line N: reason"
// ("line N: reason" when no source is given), N being the 1-based line of
// the offending token (the last line for an early end of file).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace eplb {

struct PlanCase {
  std::string name;
  int32_t num_layers = 0;
  int32_t num_logical_experts = 0;   // "logical"
  int32_t num_physical_experts = 0;  // "physical"
  int32_t num_groups = 0;
  int32_t num_nodes = 0;
  int32_t num_ranks = 0;  // "gpus"

  std::vector<int64_t> weights;  // [L][E]; always present in a valid file
  std::vector<int32_t> phy2log;  // [L][P]; empty when absent
  std::vector<int32_t> logcnt;   // [L][E]; empty when absent
  std::vector<int32_t> log2phy;  // [L][E][P-E+1]; empty when absent
  bool has_objective = false;
  double max_load_sum = 0.0;
  double balancedness = 0.0;
  std::vector<int32_t> old_phy2log;        // [L][P]; empty when absent
  std::vector<int32_t> preserved_phy2log;  // [L][P]; empty when absent
  int64_t moved_slots = -1;                // -1 when absent
};

// Parses a whole file's text. `source` names it in messages.
PlanCase ParsePlanCase(const std::string& text, const std::string& source = "");
// Reads and parses a file; a missing file raises kInvalidArgument.
PlanCase ReadPlanCase(const std::string& path);
// Writes every present block, in the format's order; doubles with 17
// significant digits. A file written here parses back to the same case.
void WritePlanCase(std::ostream& out, const PlanCase& c);

}  // namespace eplb
