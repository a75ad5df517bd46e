#include "assignment.h"

#include <cstddef>
#include <limits>

namespace eplb {

int64_t AssignmentSolver::SolveMax(int32_t n, const int64_t* w, int32_t* row_to_col) {
  if (n <= 0) return 0;
  const size_t un = static_cast<size_t>(n);
  active_rows_.clear();
  active_cols_.clear();
  col_used_.assign(un, 0);
  std::vector<int32_t>& row_in = row_flag_;
  row_in.assign(un, 0);
  int32_t num_rows_in = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t* row = w + static_cast<size_t>(i) * un;
    int32_t any = 0;
    for (int32_t j = 0; j < n; ++j) {
      const int32_t nz = row[j] != 0;
      any |= nz;
      col_used_[j] |= nz;
    }
    row_in[i] = any;
    num_rows_in += any;
  }
  if (num_rows_in == n) {
    int32_t num_cols_in = 0;
    for (int32_t j = 0; j < n; ++j) num_cols_in += col_used_[j];
    if (num_cols_in == n) {
      // Dense: the compaction below would be the identity on indices.
      cost_.resize(un * un);
      for (size_t i = 0; i < un * un; ++i) cost_[i] = -w[i];
      SolveDenseMax(n);
      int64_t total = 0;
      for (size_t i = 0; i < un; ++i) {
        row_to_col[i] = match_row_[i];
        total += w[i * un + static_cast<size_t>(match_row_[i])];
      }
      return total;
    }
  }
  for (int32_t i = 0; i < n; ++i)
    if (row_in[i]) active_rows_.push_back(i);
  for (int32_t j = 0; j < n; ++j)
    if (col_used_[j]) active_cols_.push_back(j);
  // Pad the smaller side with inactive indices (ascending) to a square.
  const size_t k =
      active_rows_.size() > active_cols_.size() ? active_rows_.size() : active_cols_.size();
  for (int32_t i = 0; i < n && active_rows_.size() < k; ++i)
    if (!row_in[i]) {
      row_in[i] = 1;
      active_rows_.push_back(i);
    }
  for (int32_t j = 0; j < n && active_cols_.size() < k; ++j)
    if (!col_used_[j]) {
      col_used_[j] = 1;
      active_cols_.push_back(j);
    }
  int64_t total = 0;
  if (k > 0) {
    // Ascending order ties the tie-breaking to the original indices.
    std::vector<int32_t>* lists[2] = {&active_rows_, &active_cols_};
    for (auto* l : lists) {
      // insertion sort: the lists are two ascending runs
      for (size_t a = 1; a < l->size(); ++a) {
        int32_t x = (*l)[a];
        size_t b = a;
        while (b > 0 && (*l)[b - 1] > x) {
          (*l)[b] = (*l)[b - 1];
          --b;
        }
        (*l)[b] = x;
      }
    }
    cost_.resize(k * k);
    for (size_t i = 0; i < k; ++i) {
      const int64_t* row = w + static_cast<size_t>(active_rows_[i]) * un;
      for (size_t j = 0; j < k; ++j) cost_[i * k + j] = -row[active_cols_[j]];
    }
    SolveDenseMax(static_cast<int32_t>(k));
    for (size_t i = 0; i < k; ++i) {
      int32_t r = active_rows_[i];
      int32_t c = active_cols_[match_row_[i]];
      row_to_col[r] = c;
      total += w[static_cast<size_t>(r) * un + c];
    }
  }
  // The rest: inactive rows to inactive columns, ascending.
  int32_t j = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (row_in[i]) continue;
    while (col_used_[j]) ++j;
    row_to_col[i] = j++;
  }
  return total;
}

namespace {

constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;

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
int64_t Hungarian(size_t n_any, const int64_t* cost, int64_t* u, int64_t* v, int64_t* minv,
                  int32_t* p, int32_t* way, char* used, int32_t* ulist, int32_t* match_row) {
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
      size_t j1 = 0;
      // Branch-free body (selects, not jumps): the outcomes are data
      // dependent, and mispredictions dominated this loop. Used columns
      // keep minv and way (way is read by the augmentation) and are never
      // chosen.
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
      j1 = static_cast<size_t>(j1m);
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
int64_t HungarianFixed(const int64_t* cost, int32_t* match_row) {
  int64_t u[kN + 1], v[kN + 1], minv[kN + 1];
  int32_t p[kN + 1], way[kN + 1], ulist[kN + 1];
  char used[kN + 1];
  return Hungarian<kN>(kN, cost, u, v, minv, p, way, used, ulist, match_row);
}

}  // namespace

int64_t AssignmentSolver::SolveDenseMax(int32_t k) {
  const size_t n = static_cast<size_t>(k);
  // match_row_ doubles as the list of used columns of the general case.
  if (match_row_.size() < n + 1) match_row_.resize(n + 1);
  switch (k) {
    case 2:
      return HungarianFixed<2>(cost_.data(), match_row_.data());
    case 4:
      return HungarianFixed<4>(cost_.data(), match_row_.data());
    case 8:
      return HungarianFixed<8>(cost_.data(), match_row_.data());
    case 16:
      return HungarianFixed<16>(cost_.data(), match_row_.data());
    default:
      break;
  }
  if (u_.size() < n + 1) {
    u_.resize(n + 1);
    v_.resize(n + 1);
    p_.resize(n + 1);
    way_.resize(n + 1);
    minv_.resize(n + 1);
    used_.resize(n + 1);
  }
  return Hungarian<0>(n, cost_.data(), u_.data(), v_.data(), minv_.data(), p_.data(), way_.data(),
                      used_.data(), match_row_.data(), match_row_.data());
}

}  // namespace eplb
