#include "kernel_ref.h"

#include <algorithm>

namespace eplb {

void RouteSegmentsRef(int64_t capacity_items, int32_t* num_segments, int64_t* segment_items) {
  const int64_t tiles = (capacity_items + kRouteTileItemsRef - 1) / kRouteTileItemsRef;
  const int64_t s = std::max<int64_t>(1, std::min<int64_t>(tiles, kRouteMaxSegmentsRef));
  int64_t len = (capacity_items + s - 1) / s;
  len = std::max<int64_t>(32, (len + 31) / 32 * 32);
  *num_segments = static_cast<int32_t>(s);
  *segment_items = len;
}

uint32_t ItemHashRef(uint32_t i) {
  return i * 0x9e3779b9u;
}

void RouteCountRef(const std::vector<int64_t>& ids, int64_t num_tokens, int64_t valid_tokens,
                   int32_t top_k, const int32_t* log2phy, const int32_t* logcnt,
                   int32_t num_logical_experts, int32_t num_physical_experts, bool record,
                   int32_t* out, int32_t* load_pass, uint64_t* invalid_count) {
  const int64_t cap = num_tokens * top_k;
  const int64_t n_valid = valid_tokens * top_k;
  const int32_t max_rep = num_physical_experts - num_logical_experts + 1;
  const bool hashed = cap >= kRouteHashMinItemsRef;
  int32_t segs = 1;
  int64_t seg_items = cap;
  if (!hashed) RouteSegmentsRef(cap, &segs, &seg_items);
  std::vector<uint32_t> rank(static_cast<size_t>(num_logical_experts));
  for (int32_t s = 0; s < segs; ++s) {
    std::fill(rank.begin(), rank.end(), 0u);
    const int64_t begin = int64_t{s} * seg_items;
    const int64_t end = std::min(cap, begin + seg_items);
    for (int64_t i = begin; i < end; ++i) {
      out[i] = -1;
      if (i >= n_valid) continue;
      const int64_t id = ids[static_cast<size_t>(i)];
      const bool ok_id = id >= 0 && id < num_logical_experts;
      const int32_t c = ok_id ? logcnt[id] : 0;
      if (!ok_id || c < 1 || c > max_rep) {
        ++*invalid_count;
        continue;
      }
      // Small path: the item of rank r in its segment takes replica
      // (r + s) mod c. Large path: replica floor(ItemHash(i) * c / 2^32).
      uint32_t j = 0;
      if (hashed) {
        j = static_cast<uint32_t>((static_cast<uint64_t>(ItemHashRef(static_cast<uint32_t>(i))) *
                                   static_cast<uint32_t>(c)) >>
                                  32);
      } else {
        const uint32_t r = rank[static_cast<size_t>(id)]++;
        j = (r + static_cast<uint32_t>(s)) % static_cast<uint32_t>(c);
      }
      const int32_t slot = log2phy[id * max_rep + j];
      if (slot < 0 || slot >= num_physical_experts) {
        ++*invalid_count;
        continue;
      }
      out[i] = slot;
      if (record) ++load_pass[slot];
    }
  }
}

void CountRef(const std::vector<int64_t>& ids, int64_t valid_tokens, int32_t top_k,
              int32_t num_physical_experts, bool record, int32_t* load_pass,
              uint64_t* invalid_count) {
  const int64_t n = valid_tokens * top_k;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = ids[static_cast<size_t>(i)];
    if (v >= 0 && v < num_physical_experts) {
      if (record) ++load_pass[v];
    } else {
      ++*invalid_count;
    }
  }
}

void WindowUpdateRef(const int32_t* phy2log, int32_t* load_pass, int32_t num_layers,
                     int32_t num_logical_experts, int32_t num_physical_experts, int32_t window_size,
                     int32_t* window, int64_t* window_sum, int32_t* ring_state) {
  const int32_t pos = ring_state[0];
  std::vector<int64_t> row(static_cast<size_t>(num_logical_experts));
  for (int32_t l = 0; l < num_layers; ++l) {
    std::fill(row.begin(), row.end(), 0);
    for (int32_t p = 0; p < num_physical_experts; ++p) {
      const int64_t lp = int64_t{l} * num_physical_experts + p;
      const int32_t e = phy2log[lp];
      if (e >= 0 && e < num_logical_experts) row[static_cast<size_t>(e)] += load_pass[lp];
      load_pass[lp] = 0;
    }
    for (int32_t e = 0; e < num_logical_experts; ++e) {
      const int64_t le = int64_t{l} * num_logical_experts + e;
      int32_t& slot = window[int64_t{pos} * num_layers * num_logical_experts + le];
      const int32_t v = static_cast<int32_t>(row[static_cast<size_t>(e)]);
      window_sum[le] += int64_t{v} - slot;
      slot = v;
    }
  }
  ring_state[0] = (pos + 1 == window_size) ? 0 : pos + 1;
  ring_state[1] = 0;
}

void WindowReduceRef(const int32_t* window, int32_t window_size, int64_t row_items, int64_t* load) {
  for (int64_t i = 0; i < row_items; ++i) {
    int64_t s = 0;
    for (int32_t w = 0; w < window_size; ++w) s += window[int64_t{w} * row_items + i];
    load[i] = s;
  }
}

}  // namespace eplb
