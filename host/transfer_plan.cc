#include "transfer_plan.h"

#include <algorithm>
#include <limits>

namespace eplb {
namespace {

constexpr int32_t kMaxP = 4096;
constexpr int32_t kMaxN = 1024;

size_t CheckedMul(size_t a, size_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a)
    Throw(Status::kInvalidArgument, "%s overflows size_t", what);
  return a * b;
}

size_t CheckedAdd(size_t a, size_t b, const char* what) {
  if (b > std::numeric_limits<size_t>::max() - a)
    Throw(Status::kInvalidArgument, "%s overflows size_t", what);
  return a + b;
}

}  // namespace

void ValidateTransferShape(const TransferShape& s) {
  EPLB_CHECK_ARG(s.num_ranks >= 1 && s.num_ranks <= kMaxN, "num_ranks (%d) must be in [1, %d]",
                 s.num_ranks, kMaxN);
  EPLB_CHECK_ARG(s.num_physical_experts >= 1 && s.num_physical_experts <= kMaxP,
                 "num_physical_experts (%d) must be in [1, %d]", s.num_physical_experts, kMaxP);
  EPLB_CHECK_ARG(s.num_physical_experts % s.num_ranks == 0,
                 "num_physical_experts (%d) must be a multiple of num_ranks (%d)",
                 s.num_physical_experts, s.num_ranks);
  EPLB_CHECK_ARG(s.rank_node.empty() || s.rank_node.size() == static_cast<size_t>(s.num_ranks),
                 "rank_node has %zu entries, expected num_ranks (%d)", s.rank_node.size(),
                 s.num_ranks);
  for (size_t r = 0; r < s.rank_node.size(); ++r)
    EPLB_CHECK_ARG(s.rank_node[r] >= 0, "h_rank_node[%zu] (%d) must be >= 0", r, s.rank_node[r]);
}

void ValidateTransferLayer(const TransferShape& s, const int32_t* old_p, const int32_t* new_p,
                           int32_t layer) {
  const int32_t P = s.num_physical_experts;
  std::vector<char> held(static_cast<size_t>(P), 0);
  for (int32_t p = 0; p < P; ++p) {
    EPLB_CHECK_ARG(old_p[p] >= 0 && old_p[p] < P,
                   "h_old_phy2log[%d][%d] (%d) must be an expert id in [0, %d)", layer, p, old_p[p],
                   P);
    held[static_cast<size_t>(old_p[p])] = 1;
  }
  for (int32_t p = 0; p < P; ++p) {
    EPLB_CHECK_ARG(new_p[p] >= 0 && new_p[p] < P,
                   "h_new_phy2log[%d][%d] (%d) must be an expert id in [0, %d)", layer, p, new_p[p],
                   P);
    EPLB_CHECK_ARG(held[static_cast<size_t>(new_p[p])] != 0,
                   "h_new_phy2log[%d][%d]: expert %d is held by no slot of the old placement "
                   "of layer %d",
                   layer, p, new_p[p], layer);
  }
}

int64_t RankTransfer::NumSendRows() const {
  int64_t n = 0;
  for (const auto& v : send_rows) n += static_cast<int64_t>(v.size());
  return n;
}
int64_t RankTransfer::NumRecvRows() const {
  int64_t n = 0;
  for (const auto& v : recv_rows) n += static_cast<int64_t>(v.size());
  return n;
}
int64_t RankTransfer::NumRecvSlots() const {
  int64_t n = 0;
  for (const auto& v : recv_rows)
    for (const auto& r : v) n += static_cast<int64_t>(r.dst_slots.size());
  return n;
}
int64_t RankTransfer::NumLocalSlots() const {
  int64_t n = 0;
  for (const auto& l : local_rows) n += static_cast<int64_t>(l.dst_slots.size());
  return n;
}
int64_t RankTransfer::NumStagingRows() const {
  return NumSendRows() + NumRecvRows() + static_cast<int64_t>(local_rows.size());
}

namespace {

// Flat scratch of a layer's planning (one allocation; a vector per expert
// was most of a call). Expert ids are < P (validated).
//   hstart/hrank/hslot: for each expert, the ranks holding it in the old
//     placement, ascending, each once, with the lowest old local slot of the
//     expert there (hfill: the next free entry while filling);
//   first[p]: slot p holds the first copy of its expert on its rank;
//   per rank, by expert (reset after each rank, -1 when unset): its old local
//     slot, its local row, and the peer and row it is received from.
struct PlanScratch {
  int32_t *hstart, *hrank, *hslot, *hfill, *first;
  int32_t *local_src, *local_idx, *recv_peer, *recv_idx;
};

// Lays the tables out in `buf` (resized to 9P + 1) and fills the holders.
PlanScratch BuildHolders(const TransferShape& s, const int32_t* old_p, std::vector<int32_t>* buf) {
  const int32_t P = s.num_physical_experts, N = s.num_ranks, S = P / N;
  const size_t uP = static_cast<size_t>(P);
  buf->assign(9 * uP + 1, 0);
  PlanScratch t;
  t.hstart = buf->data();          // [P + 1]
  t.hrank = t.hstart + uP + 1;     // [P]
  t.hslot = t.hrank + uP;          // [P]
  t.hfill = t.hslot + uP;          // [P]
  t.first = t.hfill + uP;          // [P]
  t.local_src = t.first + uP;      // [P]
  t.local_idx = t.local_src + uP;  // [P]
  t.recv_peer = t.local_idx + uP;  // [P]
  t.recv_idx = t.recv_peer + uP;   // [P]
  std::fill(t.local_src, t.local_src + 4 * uP, -1);
  for (int32_t r = 0; r < N; ++r) {
    // Stamp the rank's experts in slot order (local_src: rank r's stamp).
    for (int32_t p = r * S; p < (r + 1) * S; ++p) {
      const int32_t e = old_p[p];
      t.first[p] = t.local_src[e] != r;
      t.local_src[e] = r;
      t.hstart[e + 1] += t.first[p];
    }
  }
  for (int32_t e = 0; e < P; ++e) t.hstart[e + 1] += t.hstart[e];
  std::copy(t.hstart, t.hstart + uP, t.hfill);
  for (int32_t p = 0; p < P; ++p) {
    if (!t.first[p]) continue;
    const int32_t e = old_p[p], r = p / S, k = t.hfill[e]++;
    t.hrank[k] = r;
    t.hslot[k] = p - r * S;
  }
  for (int32_t p = 0; p < P; ++p) t.local_src[old_p[p]] = -1;
  return t;
}

// The sender of expert e to rank r: among its holders (on r's node when any
// is), the one that has sent the fewest rows so far, then the nearest after r
// in ring order. Returns the holder entry (hrank/hslot index).
int32_t ChooseSender(const TransferShape& s, const PlanScratch& t, int32_t e, int32_t r,
                     const int64_t* sent) {
  const int32_t N = s.num_ranks;
  auto node = [&](int32_t q) { return s.rank_node.empty() ? 0 : s.rank_node[q]; };
  const int32_t h0 = t.hstart[e], h1 = t.hstart[e + 1];
  EPLB_ASSERT(h1 > h0);
  bool any_same_node = false;
  for (int32_t k = h0; k < h1; ++k) any_same_node = any_same_node || node(t.hrank[k]) == node(r);
  int32_t best = -1, best_k = -1;
  for (int32_t k = h0; k < h1; ++k) {
    const int32_t q = t.hrank[k];
    if (any_same_node && node(q) != node(r)) continue;
    if (best >= 0) {
      const int64_t a = sent[q], b = sent[best];
      const int32_t da = (q - r + N) % N, db = (best - r + N) % N;
      if (!(a < b || (a == b && da < db))) continue;
    }
    best = q;
    best_k = k;
  }
  EPLB_ASSERT(best >= 0 && best != r);
  return best_k;
}

}  // namespace

LayerTransfer PlanLayerTransfer(const TransferShape& s, const int32_t* old_p,
                                const int32_t* new_p) {
  const int32_t P = s.num_physical_experts;
  const int32_t N = s.num_ranks;
  const int32_t S = P / N;
  std::vector<int32_t> buf;
  const PlanScratch t0 = BuildHolders(s, old_p, &buf);
  int32_t* local_src = t0.local_src;
  int32_t* local_idx = t0.local_idx;
  int32_t* recv_peer = t0.recv_peer;
  int32_t* recv_idx = t0.recv_idx;

  LayerTransfer out(static_cast<size_t>(N));
  for (auto& t : out) {
    t.send_rows.resize(static_cast<size_t>(N));
    t.recv_rows.resize(static_cast<size_t>(N));
  }
  std::vector<int64_t> sent(static_cast<size_t>(N), 0);

  for (int32_t r = 0; r < N; ++r) {
    RankTransfer& t = out[static_cast<size_t>(r)];
    t.kept_slots.reserve(static_cast<size_t>(S));
    const int32_t* old_r = old_p + r * S;
    const int32_t* new_r = new_p + r * S;
    for (int32_t i = S - 1; i >= 0; --i) local_src[old_r[i]] = i;
    for (int32_t i = 0; i < S; ++i) {
      const int32_t e = new_r[i];
      if (old_r[i] == e) {
        t.kept_slots.push_back(i);
      } else if (local_src[e] >= 0) {
        if (local_idx[e] < 0) {
          local_idx[e] = static_cast<int32_t>(t.local_rows.size());
          RankTransfer::Local l;
          l.expert = e;
          l.src_slot = local_src[e];
          t.local_rows.push_back(std::move(l));
        }
        t.local_rows[static_cast<size_t>(local_idx[e])].dst_slots.push_back(i);
      } else if (recv_peer[e] >= 0) {
        t.recv_rows[static_cast<size_t>(recv_peer[e])][static_cast<size_t>(recv_idx[e])]
            .dst_slots.push_back(i);
      } else {
        const int32_t best_k = ChooseSender(s, t0, e, r, sent.data());
        const int32_t best = t0.hrank[best_k];
        sent[static_cast<size_t>(best)] += 1;
        out[static_cast<size_t>(best)].send_rows[static_cast<size_t>(r)].push_back(
            t0.hslot[best_k]);
        auto& rows = t.recv_rows[static_cast<size_t>(best)];
        recv_peer[e] = best;
        recv_idx[e] = static_cast<int32_t>(rows.size());
        RankTransfer::Recv rv;
        rv.expert = e;
        rv.dst_slots.push_back(i);
        rows.push_back(std::move(rv));
      }
    }
    for (int32_t i = 0; i < S; ++i) {
      const int32_t o = old_r[i], n = new_r[i];
      local_src[o] = local_idx[o] = recv_peer[o] = recv_idx[o] = -1;
      local_src[n] = local_idx[n] = recv_peer[n] = recv_idx[n] = -1;
    }
  }
  return out;
}

void PlanRankTransfer(const TransferShape& s, const int32_t* old_p, const int32_t* new_p,
                      int32_t rank, RankTransferFlat* out) {
  // The same walk as PlanLayerTransfer (receivers in rank order, their slots
  // in order, the same sender choice), keeping every rank's counters but only
  // this rank's rows.
  const int32_t P = s.num_physical_experts;
  const int32_t N = s.num_ranks;
  const int32_t S = P / N;
  const size_t uN = static_cast<size_t>(N);
  RankTransferFlat& o = *out;
  const PlanScratch t0 = BuildHolders(s, old_p, &o.scratch);
  int32_t* local_src = t0.local_src;
  int32_t* local_idx = t0.local_idx;  // this rank: its local row; others: a mark
  int32_t* recv_peer = t0.recv_peer;
  int32_t* recv_idx = t0.recv_idx;  // this rank: its receive row

  o.sent.assign(uN, 0);
  o.staging_rows.assign(uN, 0);
  o.send_begin.assign(uN + 1, 0);
  o.send_slot.clear();
  o.local_src.clear();
  o.row_peer.clear();
  o.pair_row.clear();
  o.pair_slot.clear();
  o.local_pair_row.clear();
  o.local_pair_slot.clear();
  o.kept = 0;
  for (int32_t r = 0; r < N; ++r) {
    const bool mine = r == rank;
    o.send_begin[static_cast<size_t>(r)] = static_cast<int32_t>(o.send_slot.size());
    const int32_t* old_r = old_p + r * S;
    const int32_t* new_r = new_p + r * S;
    for (int32_t i = S - 1; i >= 0; --i) local_src[old_r[i]] = i;
    int64_t staged = 0;  // rank r's local sources and received rows
    for (int32_t i = 0; i < S; ++i) {
      const int32_t e = new_r[i];
      if (old_r[i] == e) {
        o.kept += mine;
      } else if (local_src[e] >= 0) {
        if (local_idx[e] < 0) {
          local_idx[e] = mine ? static_cast<int32_t>(o.local_src.size()) : 0;
          if (mine) o.local_src.push_back(local_src[e]);
          ++staged;
        }
        if (mine) {
          o.local_pair_row.push_back(local_idx[e]);
          o.local_pair_slot.push_back(i);
        }
      } else if (recv_peer[e] >= 0) {
        if (mine) {
          o.pair_row.push_back(recv_idx[e]);
          o.pair_slot.push_back(i);
        }
      } else {
        const int32_t best_k = ChooseSender(s, t0, e, r, o.sent.data());
        const int32_t best = t0.hrank[best_k];
        o.sent[static_cast<size_t>(best)] += 1;
        o.staging_rows[static_cast<size_t>(best)] += 1;
        if (best == rank) o.send_slot.push_back(t0.hslot[best_k]);
        recv_peer[e] = best;
        recv_idx[e] = mine ? static_cast<int32_t>(o.row_peer.size()) : 0;
        ++staged;
        if (mine) {
          o.row_peer.push_back(best);
          o.pair_row.push_back(recv_idx[e]);
          o.pair_slot.push_back(i);
        }
      }
    }
    o.staging_rows[static_cast<size_t>(r)] += staged;
    for (int32_t i = 0; i < S; ++i) {
      const int32_t od = old_r[i], nw = new_r[i];
      local_src[od] = local_idx[od] = recv_peer[od] = recv_idx[od] = -1;
      local_src[nw] = local_idx[nw] = recv_peer[nw] = recv_idx[nw] = -1;
    }
  }
  o.send_begin[uN] = static_cast<int32_t>(o.send_slot.size());

  // This rank's received rows grouped by peer (creation order kept), then
  // their destination lists (pairs are in slot order, so each list ascends).
  const size_t rows = o.row_peer.size();
  o.recv_begin.assign(uN + 1, 0);
  for (int32_t q : o.row_peer) ++o.recv_begin[static_cast<size_t>(q) + 1];
  for (size_t q = 0; q < uN; ++q) o.recv_begin[q + 1] += o.recv_begin[q];
  o.row_of.resize(rows);
  {
    int32_t* next = t0.hfill;  // reused: [N] <= [P] cursor per peer
    for (size_t q = 0; q < uN; ++q) next[q] = o.recv_begin[q];
    for (size_t k = 0; k < rows; ++k) o.row_of[k] = next[o.row_peer[k]]++;
  }
  o.recv_dst_begin.assign(rows + 1, 0);
  for (int32_t k : o.pair_row) ++o.recv_dst_begin[static_cast<size_t>(o.row_of[k]) + 1];
  for (size_t k = 0; k < rows; ++k) o.recv_dst_begin[k + 1] += o.recv_dst_begin[k];
  o.recv_dst.resize(o.pair_slot.size());
  {
    int32_t* next = t0.first;  // reused: [rows] <= [P] cursor per row
    for (size_t k = 0; k < rows; ++k) next[k] = o.recv_dst_begin[k];
    for (size_t j = 0; j < o.pair_slot.size(); ++j)
      o.recv_dst[static_cast<size_t>(next[o.row_of[o.pair_row[j]]]++)] = o.pair_slot[j];
  }
  const size_t locals = o.local_src.size();
  o.local_dst_begin.assign(locals + 1, 0);
  for (int32_t k : o.local_pair_row) ++o.local_dst_begin[static_cast<size_t>(k) + 1];
  for (size_t k = 0; k < locals; ++k) o.local_dst_begin[k + 1] += o.local_dst_begin[k];
  o.local_dst.resize(o.local_pair_slot.size());
  {
    int32_t* next = t0.first;
    for (size_t k = 0; k < locals; ++k) next[k] = o.local_dst_begin[k];
    for (size_t j = 0; j < o.local_pair_slot.size(); ++j)
      o.local_dst[static_cast<size_t>(next[o.local_pair_row[j]]++)] = o.local_pair_slot[j];
  }
}

size_t PaddedBundleBytes(const size_t* tensor_bytes, int32_t num_tensors) {
  size_t total = 0;
  for (int32_t t = 0; t < num_tensors; ++t) {
    size_t b = tensor_bytes[t];
    if (b == 0) continue;
    size_t padded = CheckedAdd(b, kExchangeRowAlign - 1, "tensor bytes") / kExchangeRowAlign *
                    kExchangeRowAlign;
    total = CheckedAdd(total, padded, "bundle bytes");
  }
  return total;
}

size_t LayerStagingBytes(const RankTransfer& t, size_t padded_bundle_bytes) {
  return StagingRowsBytes(t.NumStagingRows(), padded_bundle_bytes);
}

size_t StagingRowsBytes(int64_t rows, size_t padded_bundle_bytes) {
  return CheckedMul(static_cast<size_t>(rows), padded_bundle_bytes, "staging bytes of a layer");
}

size_t MinStagingBytes(const TransferShape& s, int32_t num_layers, const int32_t* old_p,
                       const int32_t* new_p, const size_t* padded) {
  ValidateTransferShape(s);
  const size_t P = static_cast<size_t>(s.num_physical_experts);
  size_t best = 0;
  RankTransferFlat flat;  // every rank's staging rows, whichever rank it is for
  for (int32_t l = 0; l < num_layers; ++l) {
    ValidateTransferLayer(s, old_p + l * P, new_p + l * P, l);
    PlanRankTransfer(s, old_p + l * P, new_p + l * P, 0, &flat);
    for (int64_t rows : flat.staging_rows) best = std::max(best, StagingRowsBytes(rows, padded[l]));
  }
  return best;
}

size_t WorstCaseStagingBytes(const TransferShape& s, int32_t num_layers, const size_t* padded) {
  ValidateTransferShape(s);
  size_t largest = 0;
  for (int32_t l = 0; l < num_layers; ++l) largest = std::max(largest, padded[l]);
  return CheckedMul(static_cast<size_t>(s.num_physical_experts), largest, "worst-case staging");
}

std::vector<int32_t> ChunkLayers(const std::vector<size_t>& need, size_t target) {
  std::vector<int32_t> ends;
  size_t acc = 0;
  for (size_t l = 0; l < need.size(); ++l) {
    // A chunk closes when the next layer would push it past the target; a
    // layer larger than the target forms a chunk of its own.
    if (acc > 0 && need[l] > target - std::min(acc, target)) {
      ends.push_back(static_cast<int32_t>(l));
      acc = 0;
    }
    acc += need[l];
  }
  if (!need.empty()) ends.push_back(static_cast<int32_t>(need.size()));
  return ends;
}

void Hasher::Bytes(const void* data, size_t n) {
  // FNV-1a over 8-byte little-endian words (then the tail bytes): the same
  // digest on every rank of one machine type, eight times fewer multiplies
  // than bytewise (the agreement checks hash ~250 KB per rearrangement).
  const unsigned char* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = 0;
    for (int b = 0; b < 8; ++b) w |= static_cast<uint64_t>(p[i + b]) << (8 * b);
    h_ ^= w;
    h_ *= 1099511628211ull;
  }
  for (; i < n; ++i) {
    h_ ^= p[i];
    h_ *= 1099511628211ull;
  }
}

}  // namespace eplb
