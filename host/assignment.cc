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
  for (int32_t i = 0; i < n; ++i) {
    const int64_t* row = w + static_cast<size_t>(i) * un;
    for (int32_t j = 0; j < n; ++j) {
      if (row[j] != 0) {
        row_in[i] = 1;
        col_used_[j] = 1;
      }
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

int64_t AssignmentSolver::SolveDenseMax(int32_t k) {
  // Shortest augmenting path Hungarian (1-indexed, column 0 is the virtual
  // start), minimising cost_. Strict '<' comparisons scan columns in
  // ascending order, so equal reduced costs go to the lowest column.
  const size_t n = static_cast<size_t>(k);
  const int64_t kInf = std::numeric_limits<int64_t>::max() / 4;
  u_.assign(n + 1, 0);
  v_.assign(n + 1, 0);
  p_.assign(n + 1, 0);
  way_.assign(n + 1, 0);
  minv_.resize(n + 1);
  used_.resize(n + 1);
  for (size_t i = 1; i <= n; ++i) {
    p_[0] = static_cast<int32_t>(i);
    size_t j0 = 0;
    for (size_t j = 0; j <= n; ++j) {
      minv_[j] = kInf;
      used_[j] = 0;
    }
    do {
      used_[j0] = 1;
      const size_t i0 = static_cast<size_t>(p_[j0]);
      const int64_t* crow = &cost_[(i0 - 1) * n];
      int64_t delta = kInf;
      size_t j1 = 0;
      for (size_t j = 1; j <= n; ++j) {
        if (used_[j]) continue;
        const int64_t cur = crow[j - 1] - u_[i0] - v_[j];
        if (cur < minv_[j]) {
          minv_[j] = cur;
          way_[j] = static_cast<int32_t>(j0);
        }
        if (minv_[j] < delta) {
          delta = minv_[j];
          j1 = j;
        }
      }
      for (size_t j = 0; j <= n; ++j) {
        if (used_[j]) {
          u_[static_cast<size_t>(p_[j])] += delta;
          v_[j] -= delta;
        } else {
          minv_[j] -= delta;
        }
      }
      j0 = j1;
    } while (p_[j0] != 0);
    do {
      const size_t j1 = static_cast<size_t>(way_[j0]);
      p_[j0] = p_[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  match_row_.assign(n, 0);
  for (size_t j = 1; j <= n; ++j)
    match_row_[static_cast<size_t>(p_[j]) - 1] = static_cast<int32_t>(j - 1);
  return -v_[0];
}

}  // namespace eplb
