// Reader of the `eplb-topk 1` routing trace format
// (shared/traces/deepseek-v2-lite/README.md): per layer, T lines of K expert
// ids. Pure host code. Strict: a wrong keyword, count or non-number raises
// eplb::Error(kInvalidArgument) "SOURCE:line N: reason".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace eplb {

struct TopkTrace {
  int32_t num_layers = 0;
  int32_t num_experts = 0;  // E ("experts")
  int32_t top_k = 0;
  int64_t num_tokens = 0;    // T ("tokens")
  std::vector<int32_t> ids;  // [L][T][K], as recorded

  const int32_t* layer(int32_t l) const {
    return ids.data() + static_cast<size_t>(l) * static_cast<size_t>(num_tokens * top_k);
  }
};

TopkTrace ParseTopkTrace(const std::string& text, const std::string& source = "");
TopkTrace ReadTopkTrace(const std::string& path);

// The README's checksum of a layer: sum of (id + 1) over its T*K entries.
int64_t TopkLayerChecksum(const TopkTrace& trace, int32_t layer);

}  // namespace eplb
