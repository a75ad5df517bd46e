// Transfer planning: plans executed on host memory (ranks as arrays of slots)
// for thousands of random old/new placements; every slot checked, both sides
// of every rank pair checked against each other.
#include "transfer_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace {

using eplb::LayerTransfer;
using eplb::RankTransfer;
using eplb::TransferShape;

// A valid placement of E experts on P slots: every expert at least once,
// the rest random, shuffled.
std::vector<int32_t> RandomPlacement(std::mt19937_64& rng, int32_t E, int32_t P) {
  std::vector<int32_t> p(static_cast<size_t>(P));
  for (int32_t i = 0; i < P; ++i)
    p[static_cast<size_t>(i)] = i < E ? i : static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

// A few slot swaps and replica changes of `old`: the shape of a
// migration-aware rearrangement.
std::vector<int32_t> Perturb(std::mt19937_64& rng, const std::vector<int32_t>& old, int32_t E) {
  std::vector<int32_t> p = old;
  const size_t P = p.size();
  int changes = static_cast<int>(rng() % (P / 2 + 1));
  for (int c = 0; c < changes; ++c) {
    size_t a = rng() % P, b = rng() % P;
    if (rng() % 2) {
      std::swap(p[a], p[b]);
    } else {
      // Replace a replica of a multiply-held expert by another expert.
      int32_t e = p[a];
      if (std::count(p.begin(), p.end(), e) > 1)
        p[a] = static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
    }
  }
  return p;
}

struct Outcome {
  int64_t sent = 0, received = 0, local = 0, kept = 0;
};

// Executes the plan on host "memory": each slot holds its expert id as its
// content (plus a write counter); checks every invariant the exchange relies on.
Outcome ExecuteAndCheck(const TransferShape& s, const std::vector<int32_t>& old_p,
                        const std::vector<int32_t>& new_p, const LayerTransfer& plan) {
  const int32_t P = s.num_physical_experts, N = s.num_ranks, S = P / N;
  auto node = [&](int32_t r) { return s.rank_node.empty() ? 0 : s.rank_node[r]; };
  Outcome o;
  EXPECT_EQ(plan.size(), static_cast<size_t>(N));
  std::vector<std::vector<int32_t>> mem(static_cast<size_t>(N));
  std::vector<std::vector<int>> writes(static_cast<size_t>(N), std::vector<int>(S, 0));
  for (int32_t r = 0; r < N; ++r) mem[r].assign(old_p.begin() + r * S, old_p.begin() + (r + 1) * S);
  auto held_on = [&](int32_t r, int32_t e) {
    for (int32_t i = 0; i < S; ++i)
      if (old_p[r * S + i] == e) return true;
    return false;
  };
  // 1. Pack: every send row and local source read before any write.
  std::vector<std::vector<std::vector<int32_t>>> wire(N, std::vector<std::vector<int32_t>>(N));
  std::vector<std::vector<int32_t>> local_stage(N);
  for (int32_t q = 0; q < N; ++q) {
    const RankTransfer& t = plan[q];
    EXPECT_EQ(t.send_rows.size(), static_cast<size_t>(N));
    EXPECT_EQ(t.recv_rows.size(), static_cast<size_t>(N));
    EXPECT_TRUE(t.send_rows[q].empty()) << "rank " << q << " sends to itself";
    EXPECT_TRUE(t.recv_rows[q].empty()) << "rank " << q << " receives from itself";
    for (int32_t r = 0; r < N; ++r)
      for (int32_t slot : t.send_rows[r]) {
        EXPECT_TRUE(slot >= 0 && slot < S);
        wire[q][r].push_back(mem[q][slot]);
      }
    for (const auto& l : t.local_rows) {
      EXPECT_TRUE(l.src_slot >= 0 && l.src_slot < S);
      EXPECT_EQ(mem[q][l.src_slot], l.expert);
      local_stage[q].push_back(mem[q][l.src_slot]);
    }
  }
  // 2. Both sides of every pair agree on the count and the order of rows.
  for (int32_t q = 0; q < N; ++q)
    for (int32_t r = 0; r < N; ++r) {
      const auto& recv = plan[r].recv_rows[q];
      EXPECT_EQ(wire[q][r].size(), recv.size()) << "pair " << q << "->" << r;
      for (size_t k = 0; k < std::min(recv.size(), wire[q][r].size()); ++k)
        EXPECT_EQ(wire[q][r][k], recv[k].expert) << "pair " << q << "->" << r << " row " << k;
    }
  // 3. Unpack and check the receive-side rules.
  for (int32_t r = 0; r < N; ++r) {
    const RankTransfer& t = plan[r];
    std::vector<int> received_times(static_cast<size_t>(P), 0);
    for (int32_t q = 0; q < N; ++q) {
      const auto& recv = t.recv_rows[q];
      for (size_t k = 0; k < recv.size() && k < wire[q][r].size(); ++k) {
        const int32_t e = recv[k].expert;
        EXPECT_FALSE(held_on(r, e))
            << "rank " << r << " receives expert " << e << " it already holds";
        EXPECT_TRUE(held_on(q, e)) << "rank " << q << " sends expert " << e << " it lacks";
        received_times[e]++;
        // Same-node preference: a holder on r's node must be chosen if one exists.
        bool same_exists = false;
        for (int32_t h = 0; h < N; ++h)
          same_exists |= h != r && held_on(h, e) && node(h) == node(r);
        if (same_exists) EXPECT_EQ(node(q), node(r)) << "expert " << e << " to rank " << r;
        EXPECT_FALSE(recv[k].dst_slots.empty());
        for (int32_t d : recv[k].dst_slots) {
          mem[r][d] = wire[q][r][k];
          writes[r][d]++;
          o.local += 0;
        }
        o.received += static_cast<int64_t>(recv[k].dst_slots.size());
      }
    }
    for (int32_t e = 0; e < P; ++e)
      EXPECT_LE(received_times[e], 1) << "rank " << r << " receives expert " << e << " twice";
    for (size_t k = 0; k < t.local_rows.size(); ++k) {
      EXPECT_FALSE(t.local_rows[k].dst_slots.empty());
      for (int32_t d : t.local_rows[k].dst_slots) {
        EXPECT_NE(d, t.local_rows[k].src_slot);
        mem[r][d] = local_stage[r][k];
        writes[r][d]++;
      }
      o.local += static_cast<int64_t>(t.local_rows[k].dst_slots.size());
    }
    for (int32_t k : t.kept_slots) {
      EXPECT_EQ(old_p[r * S + k], new_p[r * S + k]);
      EXPECT_EQ(writes[r][k], 0) << "kept slot written";
    }
    o.kept += static_cast<int64_t>(t.kept_slots.size());
    o.sent += t.NumSendRows();
  }
  // 4. Every slot holds its new expert; every changed slot written exactly once.
  for (int32_t r = 0; r < N; ++r)
    for (int32_t i = 0; i < S; ++i) {
      EXPECT_EQ(mem[r][i], new_p[r * S + i]) << "rank " << r << " slot " << i;
      if (old_p[r * S + i] != new_p[r * S + i]) EXPECT_EQ(writes[r][i], 1);
    }
  EXPECT_EQ(o.received + o.local + o.kept, P);
  return o;
}

bool SamePlan(const LayerTransfer& a, const LayerTransfer& b) {
  if (a.size() != b.size()) return false;
  for (size_t r = 0; r < a.size(); ++r) {
    if (a[r].send_rows != b[r].send_rows || a[r].kept_slots != b[r].kept_slots) return false;
    if (a[r].local_rows.size() != b[r].local_rows.size()) return false;
    for (size_t k = 0; k < a[r].local_rows.size(); ++k)
      if (a[r].local_rows[k].src_slot != b[r].local_rows[k].src_slot ||
          a[r].local_rows[k].dst_slots != b[r].local_rows[k].dst_slots)
        return false;
    for (size_t q = 0; q < a[r].recv_rows.size(); ++q) {
      if (a[r].recv_rows[q].size() != b[r].recv_rows[q].size()) return false;
      for (size_t k = 0; k < a[r].recv_rows[q].size(); ++k)
        if (a[r].recv_rows[q][k].expert != b[r].recv_rows[q][k].expert ||
            a[r].recv_rows[q][k].dst_slots != b[r].recv_rows[q][k].dst_slots)
          return false;
    }
  }
  return true;
}

TEST(TransferPlan, RandomPlacementsExecuteCorrectly) {
  std::mt19937_64 rng(12345);
  const int32_t kRanks[] = {1, 2, 3, 4, 8, 16};
  int64_t total_sent = 0, total_local = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    TransferShape s;
    s.num_ranks = kRanks[iter % 6];
    const int32_t S = 1 + static_cast<int32_t>(rng() % 12);
    s.num_physical_experts = s.num_ranks * S;
    const int32_t E =
        1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(s.num_physical_experts));
    if (iter % 3 == 1) {  // several nodes, arbitrary labels
      const int32_t M = 1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(s.num_ranks));
      for (int32_t r = 0; r < s.num_ranks; ++r) s.rank_node.push_back(7 * (r % M));
    }
    std::vector<int32_t> old_p = RandomPlacement(rng, E, s.num_physical_experts);
    std::vector<int32_t> new_p =
        iter % 2 ? Perturb(rng, old_p, E) : RandomPlacement(rng, E, s.num_physical_experts);
    ASSERT_NO_THROW(eplb::ValidateTransferLayer(s, old_p.data(), new_p.data(), 0));
    LayerTransfer plan = eplb::PlanLayerTransfer(s, old_p.data(), new_p.data());
    Outcome o = ExecuteAndCheck(s, old_p, new_p, plan);
    total_sent += o.sent;
    total_local += o.local;
    ASSERT_TRUE(SamePlan(plan, eplb::PlanLayerTransfer(s, old_p.data(), new_p.data())));
    if (HasFailure()) FAIL() << "iteration " << iter;
  }
  // The sample exercises both paths.
  EXPECT_GT(total_sent, 1000);
  EXPECT_GT(total_local, 1000);
}

// The flat per-rank form the exchange executes equals the vector form, rank
// by rank, on thousands of random pairs (one object reused throughout, so
// that stale contents from a larger earlier call would show).
bool FlatEqualsRank(const eplb::RankTransferFlat& f, const LayerTransfer& plan, int32_t rank) {
  const RankTransfer& t = plan[static_cast<size_t>(rank)];
  const size_t N = plan.size();
  if (f.send_begin.size() != N + 1 || f.recv_begin.size() != N + 1) return false;
  if (f.kept != static_cast<int32_t>(t.kept_slots.size())) return false;
  for (size_t r = 0; r < N; ++r)
    if (f.staging_rows[r] != plan[r].NumStagingRows()) return false;
  for (size_t q = 0; q < N; ++q) {
    std::vector<int32_t> send(f.send_slot.begin() + f.send_begin[q],
                              f.send_slot.begin() + f.send_begin[q + 1]);
    if (send != t.send_rows[q]) return false;
    if (f.recv_begin[q + 1] - f.recv_begin[q] != static_cast<int32_t>(t.recv_rows[q].size()))
      return false;
    for (size_t j = 0; j < t.recv_rows[q].size(); ++j) {
      const size_t k = static_cast<size_t>(f.recv_begin[q]) + j;
      std::vector<int32_t> dst(f.recv_dst.begin() + f.recv_dst_begin[k],
                               f.recv_dst.begin() + f.recv_dst_begin[k + 1]);
      if (dst != t.recv_rows[q][j].dst_slots) return false;
    }
  }
  if (f.NumLocalRows() != static_cast<int32_t>(t.local_rows.size())) return false;
  for (size_t k = 0; k < t.local_rows.size(); ++k) {
    if (f.local_src[k] != t.local_rows[k].src_slot) return false;
    std::vector<int32_t> dst(f.local_dst.begin() + f.local_dst_begin[k],
                             f.local_dst.begin() + f.local_dst_begin[k + 1]);
    if (dst != t.local_rows[k].dst_slots) return false;
  }
  return true;
}

TEST(TransferPlan, FlatRankPlanEqualsVectorPlan) {
  std::mt19937_64 rng(777);
  const int32_t kRanks[] = {1, 2, 3, 4, 8, 16, 32};
  eplb::RankTransferFlat flat;
  int64_t checked_rows = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    TransferShape s;
    s.num_ranks = kRanks[iter % 7];
    const int32_t S = 1 + static_cast<int32_t>(rng() % 16);
    s.num_physical_experts = s.num_ranks * S;
    const int32_t E =
        1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(s.num_physical_experts));
    if (iter % 3 == 1) {
      const int32_t M = 1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(s.num_ranks));
      for (int32_t r = 0; r < s.num_ranks; ++r) s.rank_node.push_back(5 * (r % M));
    }
    std::vector<int32_t> old_p = RandomPlacement(rng, E, s.num_physical_experts);
    std::vector<int32_t> new_p = iter % 4 == 3   ? old_p
                                 : iter % 2 == 1 ? Perturb(rng, old_p, E)
                                                 : RandomPlacement(rng, E, s.num_physical_experts);
    const LayerTransfer plan = eplb::PlanLayerTransfer(s, old_p.data(), new_p.data());
    for (int32_t r = 0; r < s.num_ranks; ++r) {
      eplb::PlanRankTransfer(s, old_p.data(), new_p.data(), r, &flat);
      ASSERT_TRUE(FlatEqualsRank(flat, plan, r)) << "iteration " << iter << " rank " << r;
      checked_rows += plan[static_cast<size_t>(r)].NumStagingRows();
    }
  }
  EXPECT_GT(checked_rows, 100000);
}

TEST(TransferPlan, IdentityMovesNothing) {
  TransferShape s;
  s.num_ranks = 4;
  s.num_physical_experts = 16;
  std::vector<int32_t> p = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3};
  LayerTransfer plan = eplb::PlanLayerTransfer(s, p.data(), p.data());
  for (const auto& t : plan) {
    EXPECT_EQ(t.NumStagingRows(), 0);
    EXPECT_EQ(t.kept_slots.size(), 4u);
  }
}

TEST(TransferPlan, SendersSpreadOverHolders) {
  // Expert 0 is on ranks 0 and 1; ranks 2 and 3 need it: two senders.
  TransferShape s;
  s.num_ranks = 4;
  s.num_physical_experts = 8;
  std::vector<int32_t> old_p = {0, 1, 0, 2, 3, 4, 5, 6};
  std::vector<int32_t> new_p = {0, 1, 0, 2, 0, 4, 0, 6};
  LayerTransfer plan = eplb::PlanLayerTransfer(s, old_p.data(), new_p.data());
  EXPECT_EQ(plan[0].NumSendRows(), 1);
  EXPECT_EQ(plan[1].NumSendRows(), 1);
  ExecuteAndCheck(s, old_p, new_p, plan);
}

TEST(TransferPlan, PrefersSenderOnSameNode) {
  // Expert 0 on rank 0 (node 0) and rank 2 (node 1); rank 3 (node 1) needs
  // it: rank 2 sends even though rank 0 has sent less.
  TransferShape s;
  s.num_ranks = 4;
  s.num_physical_experts = 8;
  s.rank_node = {0, 0, 1, 1};
  std::vector<int32_t> old_p = {0, 1, 2, 3, 0, 4, 5, 6};
  std::vector<int32_t> new_p = {0, 1, 2, 3, 0, 4, 0, 6};
  LayerTransfer plan = eplb::PlanLayerTransfer(s, old_p.data(), new_p.data());
  ASSERT_EQ(plan[2].send_rows[3].size(), 1u);
  EXPECT_EQ(plan[2].send_rows[3][0], 0);
  EXPECT_EQ(plan[0].NumSendRows(), 0);
  ExecuteAndCheck(s, old_p, new_p, plan);
}

TEST(TransferPlan, DuplicatesReceivedOnceAndSwapsStaged) {
  // Rank 1 needs expert 0 twice (received once); rank 0 swaps its two slots
  // (each slot is both a source and a destination).
  TransferShape s;
  s.num_ranks = 2;
  s.num_physical_experts = 4;
  std::vector<int32_t> old_p = {0, 1, 2, 3};
  std::vector<int32_t> new_p = {1, 0, 0, 0};
  ASSERT_NO_THROW(eplb::ValidateTransferLayer(s, old_p.data(), new_p.data(), 0));
  LayerTransfer plan = eplb::PlanLayerTransfer(s, old_p.data(), new_p.data());
  ASSERT_EQ(plan[1].recv_rows[0].size(), 1u);
  EXPECT_EQ(plan[1].recv_rows[0][0].dst_slots, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(plan[0].local_rows.size(), 2u);
  ExecuteAndCheck(s, old_p, new_p, plan);
}

TEST(TransferPlan, ValidationNamesTheField) {
  TransferShape s;
  s.num_ranks = 2;
  s.num_physical_experts = 4;
  std::vector<int32_t> old_p = {0, 1, 2, 0};
  std::vector<int32_t> bad_new = {0, 1, 3, 0};  // expert 3 held nowhere
  try {
    eplb::ValidateTransferLayer(s, old_p.data(), bad_new.data(), 5);
    FAIL() << "no throw";
  } catch (const eplb::Error& e) {
    EXPECT_EQ(e.status(), eplb::Status::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("h_new_phy2log[5][2]"), std::string::npos) << e.what();
  }
  std::vector<int32_t> neg = {0, -1, 2, 0};
  EXPECT_THROW(eplb::ValidateTransferLayer(s, neg.data(), old_p.data(), 0), eplb::Error);
  std::vector<int32_t> big = {0, 1, 4, 0};
  EXPECT_THROW(eplb::ValidateTransferLayer(s, old_p.data(), big.data(), 0), eplb::Error);
  TransferShape bad = s;
  bad.num_physical_experts = 5;
  EXPECT_THROW(eplb::ValidateTransferShape(bad), eplb::Error);
  bad = s;
  bad.rank_node = {0};
  EXPECT_THROW(eplb::ValidateTransferShape(bad), eplb::Error);
  bad.rank_node = {0, -2};
  EXPECT_THROW(eplb::ValidateTransferShape(bad), eplb::Error);
}

TEST(TransferPlan, StagingBytesExactAndBounded) {
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 500; ++iter) {
    TransferShape s;
    s.num_ranks = 1 + static_cast<int32_t>(rng() % 8);
    const int32_t S = 1 + static_cast<int32_t>(rng() % 8);
    s.num_physical_experts = s.num_ranks * S;
    const int32_t P = s.num_physical_experts;
    const int32_t E = 1 + static_cast<int32_t>(rng() % static_cast<uint64_t>(P));
    const int32_t L = 1 + static_cast<int32_t>(rng() % 4);
    std::vector<int32_t> old_p, new_p;
    std::vector<size_t> padded;
    for (int32_t l = 0; l < L; ++l) {
      auto o = RandomPlacement(rng, E, P);
      auto n = RandomPlacement(rng, E, P);
      old_p.insert(old_p.end(), o.begin(), o.end());
      new_p.insert(new_p.end(), n.begin(), n.end());
      size_t tb[3] = {1 + rng() % 100, 1 + rng() % 40, rng() % 3};
      padded.push_back(eplb::PaddedBundleBytes(tb, 3));
      EXPECT_EQ(padded.back() % eplb::kExchangeRowAlign, 0u);
    }
    size_t expect = 0;
    for (int32_t l = 0; l < L; ++l) {
      LayerTransfer lt = eplb::PlanLayerTransfer(s, old_p.data() + l * P, new_p.data() + l * P);
      for (const auto& t : lt)
        expect = std::max(expect, static_cast<size_t>(t.NumStagingRows()) * padded[l]);
    }
    size_t got = eplb::MinStagingBytes(s, L, old_p.data(), new_p.data(), padded.data());
    EXPECT_EQ(got, expect);
    EXPECT_LE(got, eplb::WorstCaseStagingBytes(s, L, padded.data()));
  }
  size_t tb[3] = {1, 16, 17};
  EXPECT_EQ(eplb::PaddedBundleBytes(tb, 3), 16u + 16u + 32u);
}

TEST(TransferPlan, ChunksCoverLayersWithinTarget) {
  std::vector<size_t> need = {10, 20, 5, 40, 0, 0, 15, 15, 50, 1};
  std::vector<int32_t> ends = eplb::ChunkLayers(need, 30);
  // Every chunk is within the target unless it holds a single layer with
  // traffic (layers without traffic may join it).
  int32_t begin = 0;
  for (int32_t end : ends) {
    ASSERT_GT(end, begin);
    size_t sum = 0;
    int busy = 0;
    for (int32_t l = begin; l < end; ++l) {
      sum += need[l];
      busy += need[l] > 0;
    }
    if (busy > 1) EXPECT_LE(sum, 30u);
    begin = end;
  }
  EXPECT_EQ(begin, static_cast<int32_t>(need.size()));
  EXPECT_EQ(ends, (std::vector<int32_t>{2, 3, 6, 8, 9, 10}));
  EXPECT_TRUE(eplb::ChunkLayers({}, 10).empty());
}

TEST(TransferPlan, HasherSeesEveryByte) {
  eplb::Hasher a, b;
  int32_t x[3] = {1, 2, 3}, y[3] = {1, 2, 4};
  a.Bytes(x, sizeof(x));
  b.Bytes(y, sizeof(y));
  EXPECT_NE(a.digest(), b.digest());
  eplb::Hasher c;
  c.Bytes(x, sizeof(x));
  EXPECT_EQ(a.digest(), c.digest());
  // Every byte of a buffer with a word part and a tail counts, and the
  // digest is a function of the bytes alone.
  std::vector<unsigned char> buf(67);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>(i * 7 + 1);
  eplb::Hasher base;
  base.Bytes(buf.data(), buf.size());
  for (size_t i = 0; i < buf.size(); ++i) {
    std::vector<unsigned char> m = buf;
    m[i] ^= 0x10;
    eplb::Hasher h;
    h.Bytes(m.data(), m.size());
    EXPECT_NE(h.digest(), base.digest()) << "byte " << i;
  }
  eplb::Hasher again;
  again.Bytes(std::vector<unsigned char>(buf).data(), buf.size());
  EXPECT_EQ(again.digest(), base.digest());
}

}  // namespace

// Column slices of a row (kernels/pack.cuh, shared by host and device): they
// tile [0, bytes) in order, without overlap, each starting 16-byte aligned.
#include "kernels/pack.cuh"

namespace {
TEST(TransferPlan, PackSlicesTileRows) {
  for (uint64_t bytes : {1ull, 15ull, 16ull, 17ull, 37ull, 4096ull, 40008ull, 1835008ull}) {
    for (int32_t K = 1; K <= 40; ++K) {
      uint64_t expect_lo = 0;
      for (int32_t k = 0; k < K; ++k) {
        uint64_t lo = 0, hi = 0;
        eplb::kernels::PackSliceRange(bytes, k, K, &lo, &hi);
        EXPECT_EQ(lo, expect_lo) << bytes << " " << K << " " << k;
        EXPECT_LE(lo, hi);
        if (lo < hi) EXPECT_EQ(lo % 16, 0u);  // an empty tail slice may sit at the end
        expect_lo = hi;
      }
      EXPECT_EQ(expect_lo, bytes) << bytes << " " << K;
    }
  }
}
}  // namespace
