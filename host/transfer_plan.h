// Transfer planning (stage 5 of DESIGN.md): from the old and new phy2log of a
// layer, what every rank keeps, copies locally, receives and sends. Pure host
// C++ (no CUDA headers): built and tested without a GPU. Every function is a
// pure function of its arguments, so every rank computes the same plan.
//
// Rules (and why):
//   - an expert already on a rank is never received from elsewhere (a local
//     copy is free bandwidth);
//   - each (expert, receiving rank) is received once and then written into
//     every slot of that rank that needs it (duplicates cost no traffic);
//   - the sender of an (expert, receiving rank) is one of the ranks that hold
//     the expert in the old placement, on the receiver's node when one is
//     there (intra-node links are faster), else any; among those, the one
//     that has sent the fewest rows of this layer so far, ties broken by the
//     distance (q - r) mod N from the receiver r, so equal holders take turns;
//   - rows between a pair of ranks are ordered by the receiver's first new
//     slot that needs them: the sender's and receiver's lists are built in
//     one pass and agree by construction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "error.h"

namespace eplb {

// Staging rows of every tensor start on this boundary (EPLB_EXCHANGE_ROW_ALIGN).
constexpr size_t kExchangeRowAlign = 16;
// Most tensors per layer bundle (EPLB_EXCHANGE_MAX_TENSORS).
constexpr int32_t kExchangeMaxTensors = 16;

struct TransferShape {
  int32_t num_physical_experts = 0;  // P, 1..4096, P % N == 0
  int32_t num_ranks = 0;             // N, 1..1024
  std::vector<int32_t> rank_node;    // [N] node of each rank; empty = one node
};

// Throws kInvalidArgument naming the field when P, N or rank_node is bad.
void ValidateTransferShape(const TransferShape& shape);

// Checks one layer's placements: entries in [0, P) and every expert of the
// new placement held by at least one slot of the old one. `layer` only names
// the layer in the message. Throws kInvalidArgument.
void ValidateTransferLayer(const TransferShape& shape, const int32_t* old_phy2log,
                           const int32_t* new_phy2log, int32_t layer);

// One rank's part of one layer. Slot indices are local (0..P/N-1).
struct RankTransfer {
  struct Recv {
    int32_t expert = -1;
    std::vector<int32_t> dst_slots;  // ascending, >= 1
  };
  struct Local {
    int32_t expert = -1;
    int32_t src_slot = -1;           // lowest old local slot holding the expert
    std::vector<int32_t> dst_slots;  // ascending, >= 1, never src_slot
  };
  // [N] local slots whose old rows go to each peer, in the peer's order
  // (empty for this rank itself).
  std::vector<std::vector<int32_t>> send_rows;
  // [N] rows received from each peer, in the sender's order.
  std::vector<std::vector<Recv>> recv_rows;
  // Local copies, in order of the first destination slot. Every source row
  // is read (into staging) before any slot of the layer is written.
  std::vector<Local> local_rows;
  // Slots whose expert does not change; never written.
  std::vector<int32_t> kept_slots;

  int64_t NumSendRows() const;
  int64_t NumRecvRows() const;
  int64_t NumRecvSlots() const;
  int64_t NumLocalSlots() const;
  // Rows this rank stages for the layer: sent + received + local sources.
  int64_t NumStagingRows() const;
};

// [N] one entry per rank.
using LayerTransfer = std::vector<RankTransfer>;

// Plans one layer (placements [P], validated by ValidateTransferLayer first).
LayerTransfer PlanLayerTransfer(const TransferShape& shape, const int32_t* old_phy2log,
                                const int32_t* new_phy2log);

// One rank's part of one layer in flat arrays (what the exchange executes),
// with every rank's staging row count: the same plan as PlanLayerTransfer
// gives for that rank, built without a heap allocation per row. An object
// reused across calls keeps its capacity, so that planning a layer again
// allocates nothing (the exchange plans 58 layers on several threads per
// rank, where the allocations of the vector form cost more than the work).
struct RankTransferFlat {
  // Rows sent: send_slot[send_begin[q] .. send_begin[q + 1]) are the local
  // slots whose old rows go to peer q, in the peer's order.
  std::vector<int32_t> send_begin;  // [N + 1]
  std::vector<int32_t> send_slot;
  // Rows received: rows recv_begin[q] .. recv_begin[q + 1] - 1 come from
  // peer q, in the sender's order; row k fills the local slots
  // recv_dst[recv_dst_begin[k] .. recv_dst_begin[k + 1]) (ascending).
  std::vector<int32_t> recv_begin;      // [N + 1]
  std::vector<int32_t> recv_dst_begin;  // [rows + 1]
  std::vector<int32_t> recv_dst;
  // Local copies, in order of their first destination slot: row k reads
  // local slot local_src[k] and fills local_dst[local_dst_begin[k] ..
  // local_dst_begin[k + 1]) (ascending, never local_src[k]).
  std::vector<int32_t> local_src;
  std::vector<int32_t> local_dst_begin;  // [local rows + 1]
  std::vector<int32_t> local_dst;
  int32_t kept = 0;  // slots whose expert does not change
  // [N] rows each rank stages for this layer (sent + received + local
  // sources): RankTransfer::NumStagingRows of every rank.
  std::vector<int64_t> staging_rows;

  int32_t NumRecvRows() const { return static_cast<int32_t>(recv_dst_begin.size()) - 1; }
  int32_t NumLocalRows() const { return static_cast<int32_t>(local_src.size()); }

  // Scratch of PlanRankTransfer (kept for its capacity).
  std::vector<int32_t> scratch;
  std::vector<int32_t> row_peer, row_of, pair_row, pair_slot, local_pair_row, local_pair_slot;
  std::vector<int64_t> sent;
};

// Plans one layer (placements [P], validated by ValidateTransferLayer first)
// for rank `rank` into `out` (reused). Equal to PlanLayerTransfer(...)[rank].
void PlanRankTransfer(const TransferShape& shape, const int32_t* old_phy2log,
                      const int32_t* new_phy2log, int32_t rank, RankTransferFlat* out);

// Bytes of one bundle in staging: each tensor's row rounded up to
// kExchangeRowAlign. tensor_bytes[num_tensors], zeros skipped.
size_t PaddedBundleBytes(const size_t* tensor_bytes, int32_t num_tensors);

// Staging bytes one rank needs for one layer, with checked arithmetic
// (throws kInvalidArgument on overflow).
size_t LayerStagingBytes(const RankTransfer& t, size_t padded_bundle_bytes);

// rows * padded_bundle_bytes with checked arithmetic (the staging bytes of
// RankTransferFlat::staging_rows).
size_t StagingRowsBytes(int64_t rows, size_t padded_bundle_bytes);

// Largest staging need of any rank for any layer of a plan pair:
// placements [num_layers][P], padded_bundle_bytes [num_layers]. Validates.
size_t MinStagingBytes(const TransferShape& shape, int32_t num_layers, const int32_t* old_phy2log,
                       const int32_t* new_phy2log, const size_t* padded_bundle_bytes);

// Plan-independent worst case: P bundles of the largest layer (a rank sends
// at most (P/N)(N-1) rows and stages at most P/N received or local rows).
size_t WorstCaseStagingBytes(const TransferShape& shape, int32_t num_layers,
                             const size_t* padded_bundle_bytes);

// Layer chunks that all ranks agree on: consecutive layers [begin, end) whose
// summed staging need (the max over ranks, per layer: need_per_layer) stays
// within target_bytes, at least one layer each. Returns the chunk ends.
std::vector<int32_t> ChunkLayers(const std::vector<size_t>& need_per_layer, size_t target_bytes);

// 64-bit FNV-1a over 8-byte little-endian words (then tail bytes), folded over
// the agreement-check inputs.
class Hasher {
 public:
  void Bytes(const void* data, size_t n);
  template <typename T>
  void Value(const T& v) {
    Bytes(&v, sizeof(v));
  }
  uint64_t digest() const { return h_; }

 private:
  uint64_t h_ = 1469598103934665603ull;
};

}  // namespace eplb
