#include "assignment.h"

#include <cstddef>

#include "assignment_core.h"

namespace eplb {

int64_t AssignmentSolver::SolveMax(int32_t n, const int64_t* w, int32_t* row_to_col) {
  if (n <= 0) return 0;
  const size_t un = static_cast<size_t>(n);
  if (active_rows_.size() < un) {  // every array is sized together
    active_rows_.resize(un);
    active_cols_.resize(un);
    col_used_.resize(un);
    row_flag_.resize(un);
    cost_.resize(un * un);
    u_.resize(un + 1);
    v_.resize(un + 1);
    minv_.resize(un + 1);
    p_.resize(un + 1);
    way_.resize(un + 1);
    match_row_.resize(un + 1);
    used_.resize(un + 1);
  }
  const assignment::Scratch s{active_rows_.data(), active_cols_.data(), col_used_.data(),
                              row_flag_.data(),    cost_.data(),        u_.data(),
                              v_.data(),           minv_.data(),        p_.data(),
                              way_.data(),         match_row_.data(),   used_.data()};
  return assignment::SolveMax(n, w, row_to_col, s);
}

}  // namespace eplb
