// Exact maximum-weight assignment (Hungarian / Kuhn-Munkres with potentials,
// shortest augmenting paths) on square integer matrices. Pure host C++.
//
// Integer weights make it exact: potentials and reduced costs are int64, so
// the optimum is found without rounding. Tie-breaking is fixed (rows are
// inserted in ascending order; among equal reduced costs the lowest column
// index is taken), so the same matrix always gives the same assignment.
#pragma once

#include <cstdint>
#include <vector>

namespace eplb {

class AssignmentSolver {
 public:
  // Maximises sum_i w[i * n + row_to_col[i]] over permutations of 0..n-1.
  // w: [n][n] host, row-major; every |w| < 2^40. row_to_col: [n] host
  // output. Returns the optimum sum. Rows and columns whose weights are all
  // zero are left out of the search (they cannot change the optimum) and are
  // matched to each other afterwards in ascending order, which keeps sparse
  // problems (most pairs share nothing) near O(k^3) in the k active rows.
  // Scratch is kept between calls: after the first call of a size, no
  // allocation. Not thread safe (one solver per thread). n >= 0.
  // The algorithm is assignment::SolveMax (assignment_core.h), which the
  // GPU planner runs too.
  int64_t SolveMax(int32_t n, const int64_t* w, int32_t* row_to_col);

 private:
  std::vector<int32_t> active_rows_, active_cols_, col_used_, row_flag_;
  std::vector<int64_t> cost_;  // compacted (k x k) negated weights
  std::vector<int64_t> u_, v_, minv_;
  std::vector<int32_t> p_, way_, match_row_;
  std::vector<char> used_;
};

}  // namespace eplb
