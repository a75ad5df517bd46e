// The exact assignment solver's algorithm on caller-provided scratch, for
// the host (AssignmentSolver, assignment.h) and the device (the GPU
// planner's FULL migration, kernels/planner_gpu.cu): one definition, so
// both make the same choices, ties included. No allocation, no standard
// library beyond <cstdint>/<cstddef>.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define EPLB_HD __host__ __device__
#else
#define EPLB_HD
#endif

namespace eplb {
namespace assignment {

constexpr int64_t kInf = INT64_C(0x7fffffffffffffff) / 4;

// Shortest augmenting path Hungarian (1-indexed, column 0 is the virtual
// start), minimising cost (k x k). Strict '<' comparisons scan columns in
// ascending order, so equal reduced costs go to the lowest column.
//
// The textbook step subtracts delta from minv[j] of every free column and
// adjusts the potentials of every used column. Here the free columns keep
// minv[j] + shift (shift = the deltas of this row so far), which turns the
// subtraction into one add to `shift`; every comparison is the same
// integer comparison offset by shift on both sides, and the used columns
// (a short list) get the exact same potential updates, so the search, its
// tie-breaking and the result are unchanged.
//
// kN > 0: n == kN is known at compile time, so the column loops unroll
// (the sizes of GPUs per node and of nodes are small); kN == 0: any n.
// ulist may alias match_row (it is dead when match_row is written).
template <int32_t kN>
EPLB_HD inline int64_t Hungarian(size_t n_any, const int64_t* cost, int64_t* u, int64_t* v,
                                 int64_t* minv, int32_t* p, int32_t* way, char* used,
                                 int32_t* ulist, int32_t* match_row) {
  const size_t n = kN > 0 ? static_cast<size_t>(kN) : n_any;
  for (size_t j = 0; j <= n; ++j) {
    u[j] = 0;
    v[j] = 0;
    p[j] = 0;
    way[j] = 0;
  }
  for (size_t i = 1; i <= n; ++i) {
    p[0] = static_cast<int32_t>(i);
    size_t j0 = 0;
    for (size_t j = 0; j <= n; ++j) {
      minv[j] = kInf;
      used[j] = 0;
    }
    int64_t shift = 0;
    size_t num_used = 0;
    do {
      used[j0] = 1;
      ulist[num_used++] = static_cast<int32_t>(j0);
      const size_t i0 = static_cast<size_t>(p[j0]);
      const int64_t* crow = cost + (i0 - 1) * n - 1;  // crow[j]: column j
      const int64_t base = shift - u[i0];
      int64_t best = kInf + shift;  // delta + shift
      // Branch-free body (selects, not jumps): the outcomes are data
      // dependent, and mispredictions dominated this loop on the host. Used
      // columns keep minv and way (way is read by the augmentation) and are
      // never chosen.
      const int32_t j0i = static_cast<int32_t>(j0);
      int64_t j1m = 0;
      for (size_t j = 1; j <= n; ++j) {
        const int64_t is_free = used[j] == 0;
        const int64_t cur = crow[j] - v[j] + base;  // reduced cost + shift
        const int64_t mj = minv[j];
        const int64_t better = -(is_free & static_cast<int64_t>(cur < mj));  // all ones or 0
        const int64_t m = mj ^ ((mj ^ cur) & better);
        minv[j] = m;
        way[j] ^= (way[j] ^ j0i) & static_cast<int32_t>(better);
        const int64_t pick = -(is_free & static_cast<int64_t>(m < best));
        best ^= (best ^ m) & pick;
        j1m ^= (j1m ^ static_cast<int64_t>(j)) & pick;
      }
      const size_t j1 = static_cast<size_t>(j1m);
      const int64_t delta = best - shift;
      for (size_t t = 0; t < num_used; ++t) {
        const size_t j = static_cast<size_t>(ulist[t]);
        u[static_cast<size_t>(p[j])] += delta;
        v[j] -= delta;
      }
      shift += delta;
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const size_t j1 = static_cast<size_t>(way[j0]);
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  for (size_t j = 1; j <= n; ++j)
    match_row[static_cast<size_t>(p[j]) - 1] = static_cast<int32_t>(j - 1);
  return -v[0];
}

template <int32_t kN>
EPLB_HD inline int64_t HungarianFixed(const int64_t* cost, int32_t* match_row) {
  int64_t u[kN + 1], v[kN + 1], minv[kN + 1];
  int32_t p[kN + 1], way[kN + 1], ulist[kN + 1];
  char used[kN + 1];
  return Hungarian<kN>(kN, cost, u, v, minv, p, way, used, ulist, match_row);
}

// Scratch of SolveMax for problems of size up to n.
struct Scratch {
  int32_t* active_rows;   // [n]
  int32_t* active_cols;   // [n]
  int32_t* col_used;      // [n]
  int32_t* row_in;        // [n]
  int64_t* cost;          // [n * n]: compacted, negated weights
  int64_t *u, *v, *minv;  // [n + 1]
  int32_t *p, *way;       // [n + 1]
  int32_t* match_row;     // [n + 1]; doubles as the used-column list
  char* used;             // [n + 1]
};

// Minimum-cost assignment of s.cost (k x k) into s.match_row.
EPLB_HD inline int64_t SolveDenseMax(int32_t k, const Scratch& s) {
  switch (k) {
    case 2:
      return HungarianFixed<2>(s.cost, s.match_row);
    case 4:
      return HungarianFixed<4>(s.cost, s.match_row);
    case 8:
      return HungarianFixed<8>(s.cost, s.match_row);
    case 16:
      return HungarianFixed<16>(s.cost, s.match_row);
    default:
      break;
  }
  return Hungarian<0>(static_cast<size_t>(k), s.cost, s.u, s.v, s.minv, s.p, s.way, s.used,
                      s.match_row, s.match_row);
}

// AssignmentSolver::SolveMax (assignment.h has the contract): maximises
// sum_i w[i * n + row_to_col[i]]; rows and columns whose weights are all
// zero are left out of the search and matched to each other afterwards in
// ascending order.
EPLB_HD inline int64_t SolveMax(int32_t n, const int64_t* w, int32_t* row_to_col,
                                const Scratch& s) {
  if (n <= 0) return 0;
  const size_t un = static_cast<size_t>(n);
  int32_t* col_used = s.col_used;
  int32_t* row_in = s.row_in;
  for (int32_t j = 0; j < n; ++j) {
    col_used[j] = 0;
    row_in[j] = 0;
  }
  int32_t num_rows_in = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t* row = w + static_cast<size_t>(i) * un;
    int32_t any = 0;
    for (int32_t j = 0; j < n; ++j) {
      const int32_t nz = row[j] != 0;
      any |= nz;
      col_used[j] |= nz;
    }
    row_in[i] = any;
    num_rows_in += any;
  }
  if (num_rows_in == n) {
    int32_t num_cols_in = 0;
    for (int32_t j = 0; j < n; ++j) num_cols_in += col_used[j];
    if (num_cols_in == n) {
      // Dense: the compaction below would be the identity on indices.
      for (size_t i = 0; i < un * un; ++i) s.cost[i] = -w[i];
      SolveDenseMax(n, s);
      int64_t total = 0;
      for (size_t i = 0; i < un; ++i) {
        row_to_col[i] = s.match_row[i];
        total += w[i * un + static_cast<size_t>(s.match_row[i])];
      }
      return total;
    }
  }
  int32_t nr = 0, nc = 0;
  for (int32_t i = 0; i < n; ++i)
    if (row_in[i]) s.active_rows[nr++] = i;
  for (int32_t j = 0; j < n; ++j)
    if (col_used[j]) s.active_cols[nc++] = j;
  // Pad the smaller side with inactive indices (ascending) to a square.
  const int32_t k = nr > nc ? nr : nc;
  for (int32_t i = 0; i < n && nr < k; ++i)
    if (!row_in[i]) {
      row_in[i] = 1;
      s.active_rows[nr++] = i;
    }
  for (int32_t j = 0; j < n && nc < k; ++j)
    if (!col_used[j]) {
      col_used[j] = 1;
      s.active_cols[nc++] = j;
    }
  int64_t total = 0;
  if (k > 0) {
    // Ascending order ties the tie-breaking to the original indices.
    int32_t* lists[2] = {s.active_rows, s.active_cols};
    for (int32_t* l : lists) {
      // insertion sort: the lists are two ascending runs
      for (int32_t a = 1; a < k; ++a) {
        const int32_t x = l[a];
        int32_t b = a;
        while (b > 0 && l[b - 1] > x) {
          l[b] = l[b - 1];
          --b;
        }
        l[b] = x;
      }
    }
    const size_t uk = static_cast<size_t>(k);
    for (size_t i = 0; i < uk; ++i) {
      const int64_t* row = w + static_cast<size_t>(s.active_rows[i]) * un;
      for (size_t j = 0; j < uk; ++j) s.cost[i * uk + j] = -row[s.active_cols[j]];
    }
    SolveDenseMax(k, s);
    for (size_t i = 0; i < uk; ++i) {
      const int32_t r = s.active_rows[i];
      const int32_t c = s.active_cols[s.match_row[i]];
      row_to_col[r] = c;
      total += w[static_cast<size_t>(r) * un + static_cast<size_t>(c)];
    }
  }
  // The rest: inactive rows to inactive columns, ascending.
  int32_t j = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (row_in[i]) continue;
    while (col_used[j]) ++j;
    row_to_col[i] = j++;
  }
  return total;
}

}  // namespace assignment
}  // namespace eplb
