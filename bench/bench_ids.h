// Top-k expert ids for the kernel benchmarks (and dev/route_ab): n ids over
// E experts, uniform (zipf = 0) or Zipf(zipf)-skewed with the hot experts
// permuted so they are not all the low ids. Ids of one seed share one
// permutation whatever n is (a shorter call returns a prefix of a longer).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

inline std::vector<int32_t> Ids(size_t n, int32_t E, double zipf, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  if (zipf == 0.0) {
    for (auto& v : ids) v = static_cast<int32_t>(rng() % E);
    return ids;
  }
  std::vector<double> cdf(E);
  double acc = 0;
  for (int32_t e = 0; e < E; ++e) cdf[e] = acc += 1.0 / std::pow(e + 1.0, zipf);
  // Permute the hot experts so they are not all the low ids.
  std::vector<int32_t> perm(E);
  for (int32_t e = 0; e < E; ++e) perm[e] = e;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_real_distribution<double> u(0.0, acc);
  for (auto& v : ids) v = perm[std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin()];
  return ids;
}
