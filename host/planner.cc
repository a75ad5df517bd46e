#include "planner.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EPLB_PLANNER_X86_DISPATCH 1
// GCC 12's AVX-512 shift intrinsics start from an intentionally undefined
// vector, which -Wmaybe-uninitialized reports at the header's lines (GCC bug
// 105593); the warning is silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "assignment.h"

namespace eplb {

namespace {

template <typename T>
void Grow(std::vector<T>& v, size_t n, T fill = T()) {
  if (v.size() < n) v.resize(n, fill);
}

// Above this many (items x packs) the packing uses a heap of packs instead of
// a linear scan; both pick the same pack (smallest load, then lowest index).
constexpr int32_t kLinearPackLimit = 32;
// Above this many (experts x added replicas) per node the replication uses a
// heap instead of a linear scan; both pick the same expert.
constexpr int64_t kLinearReplicateLimit = 8192;
// At most this many added replicas per node: replication only scans the
// `red` candidate experts (see ReplicateLayer); above it, the scan / heap.
constexpr int32_t kCandidateLimit = 32;
// At most this many nodes have their packing steps interleaved (PackLayer).
constexpr int32_t kInterleaveLimit = 8;

// Sort key of a nonnegative double: for x >= +0.0 (loads are never negative
// and w / c of w >= 0 is +0.0, never -0.0) the IEEE bit pattern orders like
// the value, so ~bits (sign bit cleared) is an ascending key for descending
// load. Exact: equal keys <=> equal values.
inline uint64_t DescKey(double x) {
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return ~b & ~(uint64_t{1} << 63);
}

inline int32_t CountTrailingZeros(uint32_t x) {
  return __builtin_ctz(x);
}

// Lowest index k < m4 (m4 a multiple of 4, <= 32) with key[k] == the minimum
// of key[0, m4): the strict-'<' serial scan's choice. min() returns one of its
// operands (no NaN: keys are finite loads or +inf), so mn equals some key
// exactly, and the equality mask's lowest bit is the first such pack.
inline int32_t FirstMin(const double* key, int32_t m4) {
#if defined(__SSE2__)
  __m128d a = _mm_loadu_pd(key), b = _mm_loadu_pd(key + 2);
  for (int32_t k = 4; k < m4; k += 4) {
    a = _mm_min_pd(a, _mm_loadu_pd(key + k));
    b = _mm_min_pd(b, _mm_loadu_pd(key + k + 2));
  }
  a = _mm_min_pd(a, b);
  const __m128d mn = _mm_min_pd(a, _mm_shuffle_pd(a, a, 1));  // both lanes: the minimum
  uint32_t eq = 0;
  for (int32_t k = 0; k < m4; k += 2)
    eq |= static_cast<uint32_t>(_mm_movemask_pd(_mm_cmpeq_pd(_mm_loadu_pd(key + k), mn))) << k;
  return CountTrailingZeros(eq);
#else
  double a0 = key[0], a1 = key[1], a2 = key[2], a3 = key[3];
  for (int32_t k = 4; k < m4; k += 4) {
    a0 = std::min(a0, key[k]);
    a1 = std::min(a1, key[k + 1]);
    a2 = std::min(a2, key[k + 2]);
    a3 = std::min(a3, key[k + 3]);
  }
  const double mn = std::min(std::min(a0, a1), std::min(a2, a3));
  uint32_t eq = 0;
  for (int32_t k = 0; k < m4; ++k) eq |= static_cast<uint32_t>(key[k] == mn) << k;
  return CountTrailingZeros(eq);
#endif
}

// Small loops of ReplicateLayer in explicit SSE2 (baseline x86-64), so that
// their speed does not depend on the optimization level's vectorizer.
// SumInt64: the exact int64 sum of w[0, n) (no overflow: loads are
// validated; integer addition is associative, so the lane order does not
// change the sum).
inline int64_t SumInt64(const int64_t* w, int32_t n) {
  int32_t i = 0;
  int64_t sum = 0;
#if defined(__SSE2__)
  __m128i a = _mm_setzero_si128(), b = _mm_setzero_si128();
  for (; i + 4 <= n; i += 4) {
    a = _mm_add_epi64(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    b = _mm_add_epi64(b, _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 2)));
  }
  alignas(16) int64_t lane[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(lane), _mm_add_epi64(a, b));
  sum = lane[0] + lane[1];
#endif
  for (; i < n; ++i) sum += w[i];
  return sum;
}

// p[i] = v + step * i for i < n (step 0: a fill, 1: consecutive ids).
inline void FillStep(int32_t* p, int32_t n, int32_t v, int32_t step) {
  int32_t i = 0;
#if defined(__SSE2__)
  __m128i x = _mm_set_epi32(v + 3 * step, v + 2 * step, v + step, v);
  const __m128i inc = _mm_set1_epi32(4 * step);
  for (; i + 4 <= n; i += 4) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i), x);
    x = _mm_add_epi32(x, inc);
  }
#endif
  for (; i < n; ++i) p[i] = v + step * i;
}

#if defined(EPLB_PLANNER_X86_DISPATCH)
// AVX2 is chosen at run time (the build targets baseline x86-64). Both paths
// below compute exactly what the portable code computes: the sort is on
// distinct integer keys (any correct sort gives one result) and the packing
// performs the same float64 additions, choosing the same pack.
// EPLB_PLANNER_NO_AVX2=1 forces the portable path (the tests run both; the
// result is the same either way).
bool CpuHasAvx2() {
  static const bool has = [] {
    const char* off = std::getenv("EPLB_PLANNER_NO_AVX2");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}

// The fast path packs up to this many nodes at once (one per 64-bit lane),
// at most kFastPacks GPUs per node and kFastItems replicas per node.
constexpr int32_t kFastLanes = 4;
constexpr int32_t kFastPacks = 8;
constexpr int32_t kFastItems = 128;  // the item index fits the low 7 key bits

// acc - (k > b ? -1 : 0) per 32-bit lane, in place (GCC compiles the
// intrinsic form in RankChunk with a register copy per accumulator and step).
__attribute__((target("avx2"))) inline __m256i SubGt(__m256i acc, __m256i k, __m256i b) {
  __m256i t;
  asm("vpcmpgtd %[b], %[k], %[t]\n\tvpsubd %[t], %[acc], %[acc]"
      : [acc] "+x"(acc), [t] "=&x"(t)
      : [k] "x"(k), [b] "x"(b));
  return acc;
}

// rank[i] = #{j < n : key[j] < key[i]} for the i in vectors [v0, v0 + K)
// (8 keys each). Keys are distinct, so the ranks of all n keys form the
// permutation that sorts them. Branch-free: n * K compares of 8 lanes.
template <int K>
__attribute__((target("avx2"))) inline void RankChunk(const int32_t* key, int32_t n, int32_t v0,
                                                      int32_t* rank) {
  __m256i k[K], acc[K];
  for (int q = 0; q < K; ++q) {
    k[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(key + (v0 + q) * 8));
    acc[q] = _mm256_setzero_si256();
  }
  for (int32_t j = 0; j < n; ++j) {
    const __m256i b = _mm256_set1_epi32(key[j]);
    for (int q = 0; q < K; ++q) acc[q] = SubGt(acc[q], k[q], b);
  }
  for (int q = 0; q < K; ++q)
    _mm256_store_si256(reinterpret_cast<__m256i*>(rank + (v0 + q) * 8), acc[q]);
}

// The 32-bit rank-sort keys of it[0, n) (n <= kFastItems) into key[0, n),
// zero-padded to a multiple of 16: the top 25 bits of the descending load key
// (DescKey) above the 7-bit index, so the keys are distinct and order by
// (truncated load key, index). Stored with the sign bit flipped, so that
// signed 32-bit compares order them like the unsigned keys.
inline void BuildRankKeys(const double* it, int32_t n, int32_t* key) {
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t u =
        static_cast<uint32_t>((DescKey(it[i]) >> 38) << 7) | static_cast<uint32_t>(i);
    key[i] = static_cast<int32_t>(u ^ 0x80000000u);
  }
  for (int32_t i = n; i < ((n + 15) & ~15); ++i) key[i] = 0;  // lanes past n: ranks ignored
}

// ord[0, n) from the keys and their ranks (runs of equal truncated keys are
// re-sorted by the exact comparison, as in Scratch::SortDesc), and the sorted
// values sv[t] = it[ord[t]].
inline void FinishRankSort(const double* it, int32_t n, const int32_t* key, const int32_t* rank,
                           int32_t* ord, double* sv) {
  uint32_t sorted[kFastItems];
  for (int32_t i = 0; i < n; ++i) sorted[rank[i]] = static_cast<uint32_t>(key[i]) ^ 0x80000000u;
  for (int32_t t = 0; t < n; ++t) {
    ord[t] = static_cast<int32_t>(sorted[t] & 127u);
    sv[t] = it[ord[t]];
  }
  // Runs of equal truncated keys are already in index order, which is the
  // exact order unless a run mixes different loads; then two of its
  // neighbours differ. Exact ties (the copies of a replicated expert) are
  // common, mixed runs rare, so first test for them branch-free.
  uint32_t mixed = 0;
  for (int32_t t = 1; t < n; ++t)
    mixed += (((sorted[t] ^ sorted[t - 1]) >> 7) == 0) & (sv[t] != sv[t - 1]);
  if (mixed == 0) return;
  for (int32_t t0 = 0; t0 < n;) {
    int32_t t1 = t0 + 1;
    while (t1 < n && ((sorted[t1] ^ sorted[t0]) >> 7) == 0) ++t1;
    for (int32_t a = t0 + 1; a < t1; ++a) {
      const int32_t x = ord[a];
      int32_t b = a;
      while (b > t0 && (it[ord[b - 1]] < it[x] || (it[ord[b - 1]] == it[x] && ord[b - 1] > x))) {
        ord[b] = ord[b - 1];
        --b;
      }
      ord[b] = x;
    }
    t0 = t1;
  }
  for (int32_t t = 0; t < n; ++t) sv[t] = it[ord[t]];
}

// ord[0, n) = 0..n-1 sorted by (it desc, index asc) (the README's stable
// descending order), n <= kFastItems: a rank sort on the keys of
// BuildRankKeys, then FinishRankSort (which also fills sv).
__attribute__((target("avx2"))) void SortDescAvx2(const double* it, int32_t n, int32_t* ord,
                                                  double* sv) {
  alignas(64) int32_t key[kFastItems];
  alignas(64) int32_t rank[kFastItems];
  BuildRankKeys(it, n, key);
  const int32_t nv = (n + 7) / 8;
  for (int32_t v0 = 0; v0 < nv;) {
    switch (std::min(nv - v0, 6)) {
      case 6:
        RankChunk<6>(key, n, v0, rank);
        v0 += 6;
        break;
      case 5:
        RankChunk<5>(key, n, v0, rank);
        v0 += 5;
        break;
      case 4:
        RankChunk<4>(key, n, v0, rank);
        v0 += 4;
        break;
      case 3:
        RankChunk<3>(key, n, v0, rank);
        v0 += 3;
        break;
      case 2:
        RankChunk<2>(key, n, v0, rank);
        v0 += 2;
        break;
      default:
        RankChunk<1>(key, n, v0, rank);
        v0 += 1;
        break;
    }
  }
  FinishRankSort(it, n, key, rank, ord, sv);
}

// acc + 1 in the lanes of m (32-bit lanes: D, 64-bit: Q), in place. GCC
// compiles the intrinsic form (_mm512_mask_add_epi32(acc, m, acc, one)) in
// the rank loops below with two register copies per accumulator and step,
// which doubled the loops' instruction count.
__attribute__((target("avx2,avx512f,avx512vl"))) inline __m512i MaskIncD(__m512i acc, __mmask16 m,
                                                                         __m512i one) {
  asm("vpaddd %[one], %[acc], %[acc]%{%[m]%}" : [acc] "+v"(acc) : [m] "Yk"(m), [one] "v"(one));
  return acc;
}
__attribute__((target("avx2,avx512f,avx512vl"))) inline __m512i MaskIncQ(__m512i acc, __mmask8 m,
                                                                         __m512i one) {
  asm("vpaddq %[one], %[acc], %[acc]%{%[m]%}" : [acc] "+v"(acc) : [m] "Yk"(m), [one] "v"(one));
  return acc;
}

// RankChunk with 16 keys per AVX-512 vector: the ranks of all K * 16 keys
// (K <= 8, so every key of a node is in one pass).
template <int K>
__attribute__((target("avx2,avx512f,avx512vl"))) inline void RankChunk512(const int32_t* key,
                                                                          int32_t n,
                                                                          int32_t* rank) {
  __m512i k[K], acc[K];
  const __m512i one = _mm512_set1_epi32(1);
  for (int q = 0; q < K; ++q) {
    k[q] = _mm512_load_si512(key + q * 16);
    acc[q] = _mm512_setzero_si512();
  }
  for (int32_t j = 0; j < n; ++j) {
    const __m512i b = _mm512_set1_epi32(key[j]);
    for (int q = 0; q < K; ++q) acc[q] = MaskIncD(acc[q], _mm512_cmpgt_epi32_mask(k[q], b), one);
  }
  for (int q = 0; q < K; ++q) _mm512_store_si512(rank + q * 16, acc[q]);
}

// Calls fn.Run<K>() with K = v for v in [1, 8] (the vector count, a template
// argument so that a rank kernel keeps its K accumulators in registers).
template <typename Fn>
__attribute__((target("avx2,avx512f,avx512vl"))) inline void ByVectorCount(int32_t v,
                                                                           const Fn& fn) {
  switch (v) {
    case 8:
      return fn.template Run<8>();
    case 7:
      return fn.template Run<7>();
    case 6:
      return fn.template Run<6>();
    case 5:
      return fn.template Run<5>();
    case 4:
      return fn.template Run<4>();
    case 3:
      return fn.template Run<3>();
    case 2:
      return fn.template Run<2>();
    default:
      return fn.template Run<1>();
  }
}

struct RankChunk512Fn {
  const int32_t* key;
  int32_t n;
  int32_t* rank;
  template <int K>
  __attribute__((target("avx2,avx512f,avx512vl"))) void Run() const {
    RankChunk512<K>(key, n, rank);
  }
};

// SortDescAvx2 with the AVX-512 rank step (the same keys, hence the same
// ranks and the same order); ord and sv are written by scatters, and
// FinishRankSort runs only where the truncated keys mixed loads.
__attribute__((target("avx2,avx512f,avx512vl"))) void SortDescAvx512(const double* it, int32_t n,
                                                                     int32_t* ord, double* sv) {
  alignas(64) int32_t key[kFastItems];
  alignas(64) int32_t rank[kFastItems];
  BuildRankKeys(it, n, key);
  ByVectorCount((n + 15) / 16, RankChunk512Fn{key, n, rank});
  // FinishRankSort by scatters: item i goes to position rank[i]. The order
  // is exact unless a run of equal truncated keys (in index order) mixes
  // different loads; then, and only then, some neighbours ascend (across
  // runs the loads descend strictly, and equal loads are in index order), and
  // FinishRankSort redoes the order from the keys.
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int32_t i = 0; i < n; i += 16) {
    const __mmask16 m =
        n - i >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_i32scatter_epi32(ord, m, _mm512_load_si512(rank + i),
                                 _mm512_add_epi32(lane, _mm512_set1_epi32(i)), 4);
  }
  for (int32_t i = 0; i < n; i += 8) {
    const __mmask8 m = n - i >= 8 ? __mmask8{0xff} : static_cast<__mmask8>((1u << (n - i)) - 1);
    _mm512_mask_i32scatter_pd(sv, m, _mm256_load_si256(reinterpret_cast<const __m256i*>(rank + i)),
                              _mm512_maskz_loadu_pd(m, it + i), 8);
  }
  __mmask8 up = 0;
  for (int32_t t = 0; t + 1 < n; t += 8) {
    const int32_t k = std::min(8, n - 1 - t);  // pairs (t + j, t + j + 1), j < k
    const __mmask8 m = static_cast<__mmask8>((1u << k) - 1);
    up |= _mm512_mask_cmp_pd_mask(m, _mm512_maskz_loadu_pd(m, sv + t),
                                  _mm512_maskz_loadu_pd(m, sv + t + 1), _CMP_LT_OQ);
  }
  if (up != 0) FinishRankSort(it, n, key, rank, ord, sv);
}

// Node n's items [rpn] in stable descending order: their values into lane n
// of sit ([rpn][lanes]; lanes n >= M get +0.0 items), their indices into
// sord[n * kFastItems, + rpn).
inline void GatherSorted(const double* items, int32_t M, int32_t rpn, int32_t lanes,
                         void (*sort)(const double*, int32_t, int32_t*, double*), double* sit,
                         int32_t* sord) {
  double sv[kFastItems];
  for (int32_t n = 0; n < lanes; ++n) {
    if (n < M) {
      sort(items + n * rpn, rpn, sord + n * kFastItems, sv);
      for (int32_t t = 0; t < rpn; ++t) sit[t * lanes + n] = sv[t];
    } else {
      for (int32_t t = 0; t < rpn; ++t) sit[t * lanes + n] = 0.0;
    }
  }
}

// Balanced packing of M <= 4 nodes at once, node n in 64-bit lane n: items
// [M][rpn] (node n's replica loads in list order), rep_expert [M][rpn]; m <=
// 8 GPUs per node, cap = rpn / m > 1 slots each. Writes phy2log [M][rpn] (slot
// k * cap + position of GPU k). Per node this is exactly Scratch::Pack: the
// items in stable descending order, each to the non-full pack of smallest
// float64 load, the lowest index on equality, loads summed in insertion
// order. Vector form: pack k's load of every node in one register; the
// chosen pack is the first k whose key equals the minimum (one-hot lane
// masks); the other packs add +0.0, which leaves a load >= +0.0 unchanged.
__attribute__((target("avx2"))) void PackNodesAvx2(const double* items, const int32_t* rep_expert,
                                                   int32_t M, int32_t rpn, int32_t m, int32_t cap,
                                                   int32_t* phy2log) {
  alignas(32) double sit[kFastItems * kFastLanes];
  alignas(32) int64_t slot[kFastItems * kFastLanes];
  int32_t sord[kFastItems * kFastLanes];
  GatherSorted(items, M, rpn, kFastLanes, SortDescAvx2, sit, sord);
  const __m256d inf = _mm256_set1_pd(std::numeric_limits<double>::infinity());
  // pl[k] is pack k's load while it has room and +inf once full: only the key
  // of a full pack matters (it is never chosen again), and the +0.0 that the
  // other packs add leaves +inf unchanged. One register per pack (instead of
  // a load and a key) keeps the loop's state closer to the 16 ymm registers.
  __m256d pl[kFastPacks];
  __m256i so[kFastPacks];
  alignas(32) int64_t end[kFastPacks][kFastLanes];
  for (int32_t k = 0; k < kFastPacks; ++k) {
    // so: next slot of pack k (k * cap + items in it); end: its first slot
    // past the pack. Packs k >= m start full (+inf).
    pl[k] = k < m ? _mm256_setzero_pd() : inf;
    so[k] = _mm256_set1_epi64x(static_cast<int64_t>(k) * cap);
    for (int32_t n = 0; n < kFastLanes; ++n) end[k][n] = static_cast<int64_t>(k + 1) * cap;
  }
  for (int32_t t = 0; t < rpn; ++t) {
    const __m256d item = _mm256_load_pd(sit + t * kFastLanes);
    const __m256d mn =
        _mm256_min_pd(_mm256_min_pd(_mm256_min_pd(pl[0], pl[1]), _mm256_min_pd(pl[2], pl[3])),
                      _mm256_min_pd(_mm256_min_pd(pl[4], pl[5]), _mm256_min_pd(pl[6], pl[7])));
    __m256d found = _mm256_setzero_pd();
    __m256i s = _mm256_setzero_si256();
    for (int32_t k = 0; k < kFastPacks; ++k) {
      const __m256d eq = _mm256_cmp_pd(pl[k], mn, _CMP_EQ_OQ);
      const __m256d oh = _mm256_andnot_pd(found, eq);
      found = _mm256_or_pd(found, eq);
      const __m256i ohi = _mm256_castpd_si256(oh);
      s = _mm256_or_si256(s, _mm256_and_si256(ohi, so[k]));
      so[k] = _mm256_sub_epi64(so[k], ohi);
      const __m256i full =
          _mm256_cmpeq_epi64(so[k], _mm256_load_si256(reinterpret_cast<const __m256i*>(end[k])));
      pl[k] = _mm256_blendv_pd(_mm256_add_pd(pl[k], _mm256_and_pd(oh, item)), inf,
                               _mm256_castsi256_pd(full));
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(slot + t * kFastLanes), s);
  }
  for (int32_t n = 0; n < M; ++n) {
    int32_t* out = phy2log + n * rpn;
    const int32_t* re = rep_expert + n * rpn;
    const int32_t* so = sord + n * kFastItems;
    for (int32_t t = 0; t < rpn; ++t) out[slot[t * kFastLanes + n]] = re[so[t]];
  }
}
// Whether the AVX-512VL packing kernel runs: the AVX2 path is on, the CPU has
// AVX-512F and AVX-512VL, and EPLB_PLANNER_NO_AVX512 is unset or 0 (=1 keeps
// the AVX2 kernel, so that both stay testable on one machine).
bool CpuHasAvx512() {
  static const bool has = [] {
    const char* off = std::getenv("EPLB_PLANNER_NO_AVX512");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    return CpuHasAvx2() && __builtin_cpu_supports("avx512f") != 0 &&
           __builtin_cpu_supports("avx512vl") != 0;
  }();
  return has;
}

// The AVX-512 kernel packs up to this many nodes at once, one per lane of a
// 512-bit vector (Plan feeds it two layers' nodes together).
constexpr int32_t kWideLanes = 8;

// PackNodesAvx2 with 512-bit vectors and mask registers: M <= kWideLanes
// nodes (arguments and result as there, node n's items at n * rpn). The pack
// is chosen by a tournament on (key, pack index): the higher-index side wins
// a pair only when its key is strictly smaller, so the winner is the lowest
// index of the minimum key, the serial scan's choice. Only the chosen pack's
// lane is updated (a masked add: the same single float64 addition as the
// scalar code); its key turns +inf once it is full. The greedy steps are a
// latency-bound chain, so the extra lanes (a second layer) come almost free.
__attribute__((target("avx2,avx512f,avx512vl"))) void PackNodesAvx512(const double* items,
                                                                      const int32_t* rep_expert,
                                                                      int32_t M, int32_t rpn,
                                                                      int32_t m, int32_t cap,
                                                                      int32_t* phy2log) {
  alignas(64) double sit[kFastItems * kWideLanes];
  int32_t sord[kFastItems * kWideLanes];
  GatherSorted(items, M, rpn, kWideLanes, SortDescAvx512, sit, sord);
  // State per node lane: pl[k] is pack k's load while it has room and +inf
  // once full (packs k >= m start full); cnt holds the 8 packs' item counts,
  // one byte each (counts <= cap <= kFastItems fit a byte). The chosen pack
  // gets the item added, or +inf instead when it becomes full (load + inf =
  // +inf): one masked add per pack, the same single float64 addition as the
  // scalar code for a pack that stays open.
  const __m512d inf = _mm512_set1_pd(std::numeric_limits<double>::infinity());
  __m512d pl[kFastPacks];
  for (int32_t k = 0; k < kFastPacks; ++k) pl[k] = k < m ? _mm512_setzero_pd() : inf;
  __m512i cnt = _mm512_setzero_si512();
  const __m512i one = _mm512_set1_epi64(1), byte = _mm512_set1_epi64(0xff);
  const __m512i last = _mm512_set1_epi64(cap - 1);
  // Pack indices times 8: the bit offset of the pack's count byte.
  const __m512i c0 = _mm512_set1_epi64(0), c1 = _mm512_set1_epi64(8), c2 = _mm512_set1_epi64(16),
                c3 = _mm512_set1_epi64(24), c4 = _mm512_set1_epi64(32), c5 = _mm512_set1_epi64(40),
                c6 = _mm512_set1_epi64(48), c7 = _mm512_set1_epi64(56);
  alignas(64) int64_t pick[kFastItems * kWideLanes];  // chosen pack * 8
  alignas(64) int64_t pos[kFastItems * kWideLanes];   // items already in it
  for (int32_t t = 0; t < rpn; ++t) {
    const __m512d item = _mm512_load_pd(sit + t * kWideLanes);
    const __mmask8 l01 = _mm512_cmp_pd_mask(pl[1], pl[0], _CMP_LT_OQ);
    const __mmask8 l23 = _mm512_cmp_pd_mask(pl[3], pl[2], _CMP_LT_OQ);
    const __mmask8 l45 = _mm512_cmp_pd_mask(pl[5], pl[4], _CMP_LT_OQ);
    const __mmask8 l67 = _mm512_cmp_pd_mask(pl[7], pl[6], _CMP_LT_OQ);
    const __m512d v01 = _mm512_mask_blend_pd(l01, pl[0], pl[1]);
    const __m512d v23 = _mm512_mask_blend_pd(l23, pl[2], pl[3]);
    const __m512d v45 = _mm512_mask_blend_pd(l45, pl[4], pl[5]);
    const __m512d v67 = _mm512_mask_blend_pd(l67, pl[6], pl[7]);
    const __m512i i01 = _mm512_mask_blend_epi64(l01, c0, c1);
    const __m512i i23 = _mm512_mask_blend_epi64(l23, c2, c3);
    const __m512i i45 = _mm512_mask_blend_epi64(l45, c4, c5);
    const __m512i i67 = _mm512_mask_blend_epi64(l67, c6, c7);
    const __mmask8 l03 = _mm512_cmp_pd_mask(v23, v01, _CMP_LT_OQ);
    const __mmask8 l47 = _mm512_cmp_pd_mask(v67, v45, _CMP_LT_OQ);
    const __m512d v03 = _mm512_mask_blend_pd(l03, v01, v23);
    const __m512d v47 = _mm512_mask_blend_pd(l47, v45, v67);
    const __m512i i03 = _mm512_mask_blend_epi64(l03, i01, i23);
    const __m512i i47 = _mm512_mask_blend_epi64(l47, i45, i67);
    const __mmask8 l07 = _mm512_cmp_pd_mask(v47, v03, _CMP_LT_OQ);
    const __m512i idx = _mm512_mask_blend_epi64(l07, i03, i47);
    const __m512i cur = _mm512_and_si512(_mm512_srlv_epi64(cnt, idx), byte);
    cnt = _mm512_add_epi64(cnt, _mm512_sllv_epi64(one, idx));
    const __m512d add = _mm512_mask_blend_pd(_mm512_cmpeq_epi64_mask(cur, last), item, inf);
    for (int32_t k = 0; k < kFastPacks; ++k) {
      const __mmask8 oh = _mm512_cmpeq_epi64_mask(idx, _mm512_set1_epi64(8 * k));
      pl[k] = _mm512_mask_add_pd(pl[k], oh, pl[k], add);
    }
    _mm512_store_si512(pick + t * kWideLanes, idx);
    _mm512_store_si512(pos + t * kWideLanes, cur);
  }
  for (int32_t n = 0; n < M; ++n) {
    int32_t* out = phy2log + n * rpn;
    const int32_t* re = rep_expert + n * rpn;
    const int32_t* so = sord + n * kFastItems;
    for (int32_t t = 0; t < rpn; ++t) {
      const int64_t q = t * kWideLanes + n;
      out[(pick[q] >> 3) * cap + pos[q]] = re[so[t]];
    }
  }
}

// Candidate selection (ReplicateLayer): rank[i] = #{j < n : key[j] >
// key[i]} for n <= kSelectItems distinct int64 keys (key[] zero-padded to a
// multiple of 8). Branch-free, 8 keys per compare.
constexpr int32_t kSelectItems = 64;

template <int K>
__attribute__((target("avx2,avx512f,avx512vl"))) inline void RankSelectChunk(const int64_t* key,
                                                                             int32_t n,
                                                                             int64_t* r) {
  __m512i k[K], acc[K];
  const __m512i one = _mm512_set1_epi64(1);
  for (int q = 0; q < K; ++q) {
    k[q] = _mm512_load_si512(key + 8 * q);
    acc[q] = _mm512_setzero_si512();
  }
  for (int32_t j = 0; j < n; ++j) {
    const __m512i b = _mm512_set1_epi64(key[j]);
    for (int q = 0; q < K; ++q) acc[q] = MaskIncQ(acc[q], _mm512_cmpgt_epi64_mask(b, k[q]), one);
  }
  for (int q = 0; q < K; ++q) _mm512_store_si512(r + 8 * q, acc[q]);
}

struct RankSelectChunkFn {
  const int64_t* key;
  int32_t n;
  int64_t* r;
  template <int K>
  __attribute__((target("avx2,avx512f,avx512vl"))) void Run() const {
    RankSelectChunk<K>(key, n, r);
  }
};

__attribute__((target("avx2,avx512f,avx512vl"))) void RankSelectAvx512(const int64_t* key,
                                                                       int32_t n, int32_t* rank) {
  alignas(64) int64_t r[kSelectItems];
  ByVectorCount((n + 7) / 8, RankSelectChunkFn{key, n, r});
  for (int32_t i = 0; i < n; ++i) rank[i] = static_cast<int32_t>(r[i]);
}

// The `red` replication candidates of a node (ReplicateLayer): the experts
// among wl[0, epn) (epn <= kSelectItems; node positions) with fewer than
// `red` experts ahead of them in (w desc, position asc) order, ascending by
// position, into cand[0, red). Only experts with w >= thr can qualify (the
// caller's exact prefilter, which leaves at least `red`). The key (w << 10) |
// (1023 - position) (< 2^63 as w < 2^53 and position < 1024; distinct) is
// larger exactly for the expert ahead, so "fewer than red ahead" is a rank
// below red on these keys; exactly `red` qualify. Compression keeps position
// order.
__attribute__((target("avx2,avx512f,avx512vl"))) void SelectCandidatesAvx512(
    const int64_t* wl, int32_t epn, int64_t thr, int32_t red, int32_t* cand) {
  alignas(64) int64_t key[kSelectItems + 8];
  int32_t rank[kSelectItems];
  const __m512i vthr = _mm512_set1_epi64(thr);
  const __m512i lane = _mm512_set_epi64(1016, 1017, 1018, 1019, 1020, 1021, 1022, 1023);
  int32_t ns = 0;
  for (int32_t base = 0; base < epn; base += 8) {
    const __mmask8 valid =
        epn - base >= 8 ? __mmask8{0xff} : static_cast<__mmask8>((1u << (epn - base)) - 1);
    const __m512i w = _mm512_maskz_loadu_epi64(valid, wl + base);
    const __mmask8 keep = _mm512_mask_cmpge_epi64_mask(valid, w, vthr);
    const __m512i k =
        _mm512_or_si512(_mm512_slli_epi64(w, 10), _mm512_sub_epi64(lane, _mm512_set1_epi64(base)));
    _mm512_storeu_si512(key + ns, _mm512_maskz_compress_epi64(keep, k));
    ns += __builtin_popcount(keep);
  }
  _mm512_storeu_si512(key + ns, _mm512_setzero_si512());  // padding
  RankSelectAvx512(key, ns, rank);
  int32_t nc = 0;
  for (int32_t si = 0; si < ns; ++si) {
    cand[nc] = 1023 - static_cast<int32_t>(key[si] & 1023);
    nc += rank[si] < red;
  }
}

// The replication prefilter's bound (ReplicateLayer) for 1 <= red <= 8 and
// red < n: the smallest over b < red of max{wl[i] : i % red == b} (every
// block is nonempty as n > red). Masked-off lanes load 0, which leaves a
// block maximum of loads >= 0 unchanged.
__attribute__((target("avx2,avx512f,avx512vl"))) int64_t StridedBoundAvx512(const int64_t* wl,
                                                                            int32_t n,
                                                                            int32_t red) {
  __m512i mx = _mm512_setzero_si512();
  for (int32_t i = 0; i < n; i += red) {
    const int32_t k = std::min(red, n - i);
    mx = _mm512_max_epi64(mx,
                          _mm512_maskz_loadu_epi64(static_cast<__mmask8>((1u << k) - 1), wl + i));
  }
  // A store and a scalar loop: GCC 12's reduce intrinsics draw
  // -Wuninitialized from their undefined start vector (GCC bug 105593).
  alignas(64) int64_t lane[8];
  _mm512_store_si512(lane, mx);
  int64_t thr = lane[0];
  for (int32_t b = 1; b < red; ++b) thr = std::min(thr, lane[b]);
  return thr;
}

#endif  // EPLB_PLANNER_X86_DISPATCH

}  // namespace

// ---------------------------------------------------------------------------
// Validation

void ValidateShape(const PlanShape& s) {
  EPLB_CHECK_ARG(s.num_layers >= 1 && s.num_layers <= kMaxLayers,
                 "num_layers (%d) must be in [1, %d]", s.num_layers, kMaxLayers);
  EPLB_CHECK_ARG(s.num_logical_experts >= 1 && s.num_logical_experts <= kMaxLogicalExperts,
                 "num_logical_experts (%d) must be in [1, %d]", s.num_logical_experts,
                 kMaxLogicalExperts);
  EPLB_CHECK_ARG(s.num_physical_experts >= 1 && s.num_physical_experts <= kMaxPhysicalExperts,
                 "num_physical_experts (%d) must be in [1, %d]", s.num_physical_experts,
                 kMaxPhysicalExperts);
  EPLB_CHECK_ARG(s.num_physical_experts >= s.num_logical_experts,
                 "num_physical_experts (%d) must be >= num_logical_experts (%d)",
                 s.num_physical_experts, s.num_logical_experts);
  EPLB_CHECK_ARG(s.num_ranks >= 1 && s.num_ranks <= kMaxRanks, "num_ranks (%d) must be in [1, %d]",
                 s.num_ranks, kMaxRanks);
  EPLB_CHECK_ARG(s.num_physical_experts % s.num_ranks == 0,
                 "num_physical_experts (%d) must be a multiple of num_ranks (%d)",
                 s.num_physical_experts, s.num_ranks);
  EPLB_CHECK_ARG(s.num_groups >= 1 && s.num_groups <= s.num_logical_experts,
                 "num_groups (%d) must be in [1, num_logical_experts = %d]", s.num_groups,
                 s.num_logical_experts);
  EPLB_CHECK_ARG(s.num_nodes >= 1 && s.num_nodes <= s.num_ranks,
                 "num_nodes (%d) must be in [1, num_ranks = %d]", s.num_nodes, s.num_ranks);
}

namespace {
Policy AutoPolicy(const PlanShape& s, const char* what) {
  EPLB_CHECK_ARG(s.num_ranks % s.num_nodes == 0,
                 "num_ranks (%d) must be a multiple of num_nodes (%d) for the %s policy",
                 s.num_ranks, s.num_nodes, what);
  if (s.num_groups % s.num_nodes != 0) return Policy::kGlobal;
  EPLB_CHECK_ARG(s.num_logical_experts % s.num_groups == 0,
                 "num_logical_experts (%d) must be a multiple of num_groups (%d) for the %s "
                 "policy when num_groups is a multiple of num_nodes (%d)",
                 s.num_logical_experts, s.num_groups, what, s.num_nodes);
  return Policy::kHierarchical;
}
}  // namespace

Policy ResolvePolicy(const PlanShape& s, Policy policy) {
  switch (policy) {
    case Policy::kAuto:
      return AutoPolicy(s, "AUTO");
    case Policy::kGlobal:
      return Policy::kGlobal;
    case Policy::kChurnAware:
      AutoPolicy(s, "CHURN_AWARE");
      return Policy::kChurnAware;
    case Policy::kHierarchical:
      EPLB_CHECK_ARG(s.num_ranks % s.num_nodes == 0,
                     "num_ranks (%d) must be a multiple of num_nodes (%d) for the HIERARCHICAL "
                     "policy",
                     s.num_ranks, s.num_nodes);
      EPLB_CHECK_ARG(s.num_groups % s.num_nodes == 0,
                     "num_groups (%d) must be a multiple of num_nodes (%d) for the HIERARCHICAL "
                     "policy",
                     s.num_groups, s.num_nodes);
      EPLB_CHECK_ARG(s.num_logical_experts % s.num_groups == 0,
                     "num_logical_experts (%d) must be a multiple of num_groups (%d) for the "
                     "HIERARCHICAL policy",
                     s.num_logical_experts, s.num_groups);
      return Policy::kHierarchical;
  }
  Throw(Status::kInvalidArgument, "policy (%d) is not a valid eplbPolicy_t",
        static_cast<int>(policy));
}

Policy BasePolicy(const PlanShape& s, Policy policy) {
  Policy p = ResolvePolicy(s, policy);
  return p == Policy::kChurnAware ? AutoPolicy(s, "CHURN_AWARE") : p;
}

void ValidateLoads(const PlanShape& s, const int64_t* load) {
  EPLB_CHECK_ARG(load != nullptr, "h_load is NULL");
  const int32_t E = s.num_logical_experts;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int64_t* w = load + static_cast<size_t>(l) * E;
    // Fast check first (branch-free, vectorizes): a load outside [0, 2^53)
    // has a bit >= 53 set (a negative one the sign bit). Only a failing
    // layer takes the element-wise loop below, which names the first bad
    // entry exactly as before.
    uint64_t bits = 0, sum = 0;  // when the bits pass, sum < 1024 * 2^53: exact
    for (int32_t e = 0; e < E; ++e) {
      bits |= static_cast<uint64_t>(w[e]);
      sum += static_cast<uint64_t>(w[e]);
    }
    if ((bits >> 53) == 0 && sum < static_cast<uint64_t>(kMaxLoad)) continue;
    int64_t total = 0;  // < 1024 * 2^53 < 2^63: no overflow
    for (int32_t e = 0; e < E; ++e) {
      EPLB_CHECK_ARG(w[e] >= 0 && w[e] < kMaxLoad, "h_load[%d][%d] = %lld is outside [0, 2^53)", l,
                     e, static_cast<long long>(w[e]));
      total += w[e];
    }
    EPLB_CHECK_ARG(total < kMaxLoad, "h_load layer %d: total load %lld is not below 2^53", l,
                   static_cast<long long>(total));
  }
}

void ValidatePlacement(const PlanShape& s, const int32_t* phy2log, const char* name) {
  EPLB_CHECK_ARG(phy2log != nullptr, "%s is NULL", name);
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  uint8_t seen[kMaxLogicalExperts];
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int32_t* row = phy2log + static_cast<size_t>(l) * P;
    std::memset(seen, 0, static_cast<size_t>(E));
    for (int32_t p = 0; p < P; ++p) {
      EPLB_CHECK_ARG(row[p] >= 0 && row[p] < E, "%s[%d][%d] = %d is outside [0, %d)", name, l, p,
                     row[p], E);
      seen[row[p]] = 1;
    }
    for (int32_t e = 0; e < E; ++e)
      EPLB_CHECK_ARG(seen[e], "%s layer %d: logical expert %d has no slot", name, l, e);
  }
}

// ---------------------------------------------------------------------------
// Helpers on placements

namespace {
// The two passes of BuildLog2Phy for layers [l0, l1): the -1 fill, and the
// slots of each expert, ascending, at the start of its row.
void FillLog2Phy(const PlanShape& s, int32_t l0, int32_t l1, int32_t* log2phy) {
  const size_t E = static_cast<size_t>(s.num_logical_experts);
  const size_t width = static_cast<size_t>(s.num_physical_experts) - E + 1;
  std::fill(log2phy + static_cast<size_t>(l0) * E * width,
            log2phy + static_cast<size_t>(l1) * E * width, -1);
}
void ScatterLog2Phy(const PlanShape& s, int32_t l0, int32_t l1, const int32_t* phy2log,
                    int32_t* log2phy) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  const size_t width = static_cast<size_t>(P - E + 1);
  int32_t fill[kMaxLogicalExperts];
  for (int32_t l = l0; l < l1; ++l) {
    const int32_t* row = phy2log + static_cast<size_t>(l) * P;
    int32_t* out = log2phy + static_cast<size_t>(l) * E * width;
    std::memset(fill, 0, sizeof(int32_t) * static_cast<size_t>(E));
    for (int32_t p = 0; p < P; ++p) {
      const int32_t e = row[p];
      out[static_cast<size_t>(e) * width + static_cast<size_t>(fill[e]++)] = p;
    }
  }
}
}  // namespace

void BuildLog2Phy(const PlanShape& s, const int32_t* phy2log, int32_t* log2phy) {
  for (int32_t l = 0; l < s.num_layers; ++l) {
    FillLog2Phy(s, l, l + 1, log2phy);
    ScatterLog2Phy(s, l, l + 1, phy2log, log2phy);
  }
}

void BuildLogCnt(const PlanShape& s, const int32_t* phy2log, int32_t* logcnt) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    int32_t* cnt = logcnt + static_cast<size_t>(l) * E;
    std::fill(cnt, cnt + E, 0);
    const int32_t* row = phy2log + static_cast<size_t>(l) * P;
    for (int32_t p = 0; p < P; ++p) ++cnt[row[p]];
  }
}

int64_t CountMovedSlots(const PlanShape& s, const int32_t* phy2log, const int32_t* old_phy2log) {
  const size_t n = static_cast<size_t>(s.num_layers) * static_cast<size_t>(s.num_physical_experts);
  int64_t moved = 0;
  for (size_t i = 0; i < n; ++i) moved += phy2log[i] != old_phy2log[i];
  return moved;
}

PlanMetrics Evaluate(const PlanShape& s, const int64_t* load, const int32_t* phy2log,
                     const int32_t* old_phy2log, double* layer_balancedness) {
  const int32_t E = s.num_logical_experts, P = s.num_physical_experts, N = s.num_ranks;
  const int32_t S = P / N;
  int32_t cnt[kMaxLogicalExperts];
  PlanMetrics m;
  double bal_sum = 0.0;
  for (int32_t l = 0; l < s.num_layers; ++l) {
    const int32_t* row = phy2log + static_cast<size_t>(l) * P;
    const int64_t* w = load + static_cast<size_t>(l) * E;
    std::memset(cnt, 0, sizeof(int32_t) * static_cast<size_t>(E));
    for (int32_t p = 0; p < P; ++p) ++cnt[row[p]];
    double max_load = 0.0, total = 0.0;
    for (int32_t r = 0; r < N; ++r) {
      double rank_load = 0.0;
      for (int32_t k = 0; k < S; ++k) {
        const int32_t e = row[r * S + k];
        rank_load += static_cast<double>(w[e]) / cnt[e];
      }
      total += rank_load;
      if (rank_load > max_load) max_load = rank_load;
    }
    const double bal = max_load == 0.0 ? 1.0 : (total / N) / max_load;
    if (layer_balancedness != nullptr) layer_balancedness[l] = bal;
    bal_sum += bal;
    m.max_load_sum += max_load;
  }
  m.balancedness = bal_sum / s.num_layers;
  m.moved_slots = old_phy2log != nullptr ? CountMovedSlots(s, phy2log, old_phy2log) : -1;
  return m;
}

// ---------------------------------------------------------------------------
// Planner

struct Planner::Scratch {
  // Effective shape of the layer being planned (global: G = M = 1).
  int32_t E = 0, P = 0, G = 1, M = 1, N = 1;
  int32_t epg = 0;  // experts per group
  int32_t gpn = 0;  // groups per node
  int32_t epn = 0;  // experts per node
  int32_t rpn = 0;  // replicas (slots) per node
  int32_t bs = 0;   // GPUs per node
  int32_t spg = 0;  // slots per GPU
  const int64_t* load = nullptr;

  // Balanced packing.
  std::vector<int32_t> order, pack_of, pos_of, pack_cnt, heap;
  std::vector<double> items, pack_load;
  std::vector<uint64_t> sort_key;

  // Replication.
  std::vector<int32_t> node_group, node_expert, rep_expert, rep_pos, cnt, rheap;
  std::vector<double> cur_load;
  std::vector<int64_t> node_w;  // [M][epn] node loads in node order (when have_node_w)
  bool have_node_w = false;
  // Two layers' replica loads and experts for PackNodesAvx512 (Plan).
  std::vector<double> pair_items;
  std::vector<int32_t> pair_rep;

  // Migration.
  std::vector<int32_t> hold_head, hold_gpu, hold_node, hold_cnt, hold_next, newcnt, first, nxt, out,
      tmp, perm_all, sigma, target;
  std::vector<char> taken, perm_pending, block_nz;
  std::vector<int64_t> inter, block, vnode;
  AssignmentSolver solver;

  void Reserve(const PlanShape& s) {
    const size_t E = static_cast<size_t>(s.num_logical_experts);
    const size_t P = static_cast<size_t>(s.num_physical_experts);
    const size_t G = static_cast<size_t>(s.num_groups);
    const size_t N = static_cast<size_t>(s.num_ranks);
    const size_t n = std::max(P, G);
    Grow(order, n);
    Grow(pack_of, n);
    Grow(pos_of, n);
    Grow(items, n);
    Grow(sort_key, 2 * n);  // keys + merge buffer
    Grow(pack_cnt, N);
    Grow(heap, N);
    Grow(pack_load, N);
    Grow(node_group, G);
    Grow(node_expert, E);
    Grow(rep_expert, P);
    Grow(rep_pos, P);
    Grow(cnt, E);
    Grow(rheap, E);
    Grow(cur_load, E);
    Grow(node_w, E);
    Grow(pair_items, 2 * P);
    Grow(pair_rep, 2 * P);
  }

  void ReserveMigration(const PlanShape& s) {
    const size_t E = static_cast<size_t>(s.num_logical_experts);
    const size_t P = static_cast<size_t>(s.num_physical_experts);
    const size_t N = static_cast<size_t>(s.num_ranks);
    const size_t M = static_cast<size_t>(s.num_nodes);
    Grow(hold_head, E);
    Grow(hold_gpu, P);
    Grow(hold_node, P);
    Grow(hold_cnt, P);
    Grow(hold_next, P);
    Grow(newcnt, E, 0);  // invariant between uses: all 0
    Grow(first, E, -1);  // invariant between uses: all -1
    Grow(nxt, P + 1);
    Grow(out, P);
    Grow(tmp, P + 1);
    Grow(taken, P + 1);
    Grow(inter, N * N);
    Grow(block, N * N);
    Grow(vnode, M * M);
    Grow(perm_all, M * N);
    Grow(perm_pending, M * M);
    Grow(block_nz, M * M);
    Grow(sigma, M);
    Grow(target, N);
  }

  // The replica loads of the replicated layer, node n's at items[n * rpn,
  // (n + 1) * rpn), in the node's replica order (rep_expert).
  void BuildPackItems(double* items) const {
    // 3. Replicas onto the node's GPUs; replica load = w / final count.
    // An expert of count 1 has load w (w / 1 == w exactly); an added replica
    // and its expert's original (at node position rp) both get w / count, the
    // same single division for each (branch-free: only the experts that got
    // replicas divide). Node n's items live at [n * rpn, (n+1) * rpn).
    const int32_t* c = cnt.data();
    for (int32_t n = 0; n < M; ++n) {
      const int32_t* re = rep_expert.data() + n * rpn;
      const int32_t* rp = rep_pos.data() + n * rpn;
      double* it = items + n * rpn;
      if (have_node_w) {
        const int64_t* wl = node_w.data() + n * epn;  // = load[re[j]], contiguous
        for (int32_t j = 0; j < epn; ++j) it[j] = static_cast<double>(wl[j]);
      } else {
        for (int32_t j = 0; j < epn; ++j) it[j] = static_cast<double>(load[re[j]]);
      }
      for (int32_t j = epn; j < rpn; ++j) {
        const int32_t e = re[j];
        const double v = static_cast<double>(load[e]) / c[e];
        it[rp[j]] = v;
        it[j] = v;
      }
    }
  }

  // Whether PackNodesAvx512 can pack two layers of this (replicated) shape at
  // once.
  bool CanPackPair() const {
#if defined(EPLB_PLANNER_X86_DISPATCH)
    return spg > 1 && bs <= kFastPacks && 2 * M <= kWideLanes && rpn <= kFastItems &&
           CpuHasAvx512();
#else
    return false;
#endif
  }

  // order[0, n) = the item indices 0..n-1 sorted by (items[i] desc, i asc),
  // which is what the README's stable descending sort produces. Sorts plain
  // uint64 keys instead of indices with an indirect comparator: the key is the
  // descending load key with its low `sh` bits replaced by the index (sh bits
  // hold any index < n). Ordering these keys orders by (truncated load key,
  // index); items whose truncated keys are equal sit next to each other, and
  // only such runs (rare unless loads tie) are re-sorted by the full
  // (load desc, index asc) comparison, so the result is exactly that order.
  // Ascending sort of the distinct keys a[0, n) (tmp: n more keys of room).
  // Bottom-up merge sort whose merge step selects with conditional moves
  // instead of a data-dependent branch: the order of random loads defeats
  // branch prediction, which dominated std::sort here. Keys are distinct, so
  // any correct sort gives the same result.
  static void SortKeys(uint64_t* a, uint64_t* tmp, int32_t n) {
    // Runs of 4 by insertion sort, then merges.
    for (int32_t lo = 0; lo < n; lo += 4) {
      const int32_t hi = std::min(lo + 4, n);
      for (int32_t i = lo + 1; i < hi; ++i) {
        const uint64_t x = a[i];
        int32_t j = i;
        while (j > lo && a[j - 1] > x) {
          a[j] = a[j - 1];
          --j;
        }
        a[j] = x;
      }
    }
    uint64_t* src = a;
    uint64_t* dst = tmp;
    for (int32_t w = 4; w < n; w *= 2) {
      for (int32_t lo = 0; lo < n; lo += 2 * w) {
        const int32_t mid = std::min(lo + w, n), hi = std::min(lo + 2 * w, n);
        int32_t i = lo, j = mid, k = lo;
        while (i < mid && j < hi) {
          const uint64_t x = src[i], y = src[j];
          const bool take_y = y < x;
          dst[k++] = take_y ? y : x;
          i += !take_y;
          j += take_y;
        }
        while (i < mid) dst[k++] = src[i++];
        while (j < hi) dst[k++] = src[j++];
      }
      std::swap(src, dst);
    }
    if (src != a) std::memcpy(a, src, sizeof(uint64_t) * static_cast<size_t>(n));
  }

  void SortDesc(int32_t n) {
    SortDesc(items.data(), order.data(), sort_key.data(), n);
  }
  static void SortDesc(const double* it, int32_t* ord, uint64_t* key, int32_t n) {
    int32_t sh = 1;
    while ((int32_t{1} << sh) < n) ++sh;
    const uint64_t low = (uint64_t{1} << sh) - 1;
    for (int32_t i = 0; i < n; ++i) key[i] = (DescKey(it[i]) & ~low) | static_cast<uint64_t>(i);
    SortKeys(key, key + n, n);
    for (int32_t t = 0; t < n; ++t) ord[t] = static_cast<int32_t>(key[t] & low);
    // As in SortDescAvx2: only a run of equal truncated keys that mixes
    // different loads needs the exact re-sort.
    uint32_t mixed = 0;
    for (int32_t t = 1; t < n; ++t)
      mixed += (((key[t] ^ key[t - 1]) & ~low) == 0) & (it[ord[t]] != it[ord[t - 1]]);
    if (mixed == 0) return;
    for (int32_t t0 = 0; t0 < n;) {
      int32_t t1 = t0 + 1;
      while (t1 < n && (key[t1] & ~low) == (key[t0] & ~low)) ++t1;
      if (t1 - t0 > 1) {
        // Insertion sort of the run by the exact key; a run of exact ties is
        // already in index order and costs one pass.
        for (int32_t a = t0 + 1; a < t1; ++a) {
          const int32_t x = ord[a];
          int32_t b = a;
          while (b > t0 &&
                 (it[ord[b - 1]] < it[x] || (it[ord[b - 1]] == it[x] && ord[b - 1] > x))) {
            ord[b] = ord[b - 1];
            --b;
          }
          ord[b] = x;
        }
      }
      t0 = t1;
    }
  }

  // Balanced packing of items[0, n) into m packs of n / m items: fills
  // pack_of[i] and pos_of[i]. Stable descending order (index sort on the key
  // (load desc, index asc), which is what a stable sort produces), then each
  // item to the non-full pack of smallest float64 load, lowest index on exact
  // equality; pack loads are summed in insertion order.
  void Pack(int32_t n, int32_t m) {
    const int32_t cap = n / m;
    if (cap == 1) {
      for (int32_t i = 0; i < n; ++i) {
        pack_of[i] = i;
        pos_of[i] = 0;
      }
      return;
    }
    const double* it = items.data();
    int32_t* ord = order.data();
    SortDesc(n);
    double* pl = pack_load.data();
    int32_t* pc = pack_cnt.data();
    for (int32_t k = 0; k < m; ++k) {
      pl[k] = 0.0;
      pc[k] = 0;
    }
    if (m <= kLinearPackLimit) {
      // key[k] is pl[k] while pack k has room, +inf once full: the strict '<'
      // scan then picks the smallest non-full load, lowest index on equality
      // (loads are finite, so +inf never ties with a real load).
      // Branch-free argmin (FirstMin): the same pack the serial strict-'<'
      // scan picks. Padding packs are +inf.
      constexpr double kInf = std::numeric_limits<double>::infinity();
      alignas(32) double key[kLinearPackLimit];
      const int32_t m4 = (m + 3) & ~3;
      for (int32_t k = 0; k < m4; ++k) key[k] = k < m ? 0.0 : kInf;
      for (int32_t t = 0; t < n; ++t) {
        const int32_t i = ord[t];
        const int32_t best = FirstMin(key, m4);
        pack_of[i] = best;
        pos_of[i] = pc[best]++;
        pl[best] += it[i];
        key[best] = pc[best] < cap ? pl[best] : std::numeric_limits<double>::infinity();
      }
      return;
    }
    // Min-heap on (load, index) of the packs that are not full.
    int32_t* h = heap.data();
    auto after = [pl](int32_t a, int32_t b) { return pl[a] > pl[b] || (pl[a] == pl[b] && a > b); };
    int32_t hn = m;
    for (int32_t k = 0; k < m; ++k) h[k] = k;  // already a heap: all 0, ascending index
    for (int32_t t = 0; t < n; ++t) {
      const int32_t i = ord[t];
      std::pop_heap(h, h + hn, after);
      const int32_t best = h[hn - 1];
      pack_of[i] = best;
      pos_of[i] = pc[best]++;
      pl[best] += it[i];
      if (pc[best] < cap) {
        std::push_heap(h, h + hn, after);
      } else {
        --hn;
      }
    }
  }
};

Planner::Planner() : s_(new Scratch) {}
Planner::~Planner() {
  delete s_;
}

void Planner::Reserve(const PlanShape& shape) {
  s_->Reserve(shape);
}

void Planner::ReplicateLayer(const PlanShape& shape, Policy policy, const int64_t* load,
                             int32_t* logcnt) {
  Scratch& s = *s_;
  s.Reserve(shape);
  const bool hier = policy == Policy::kHierarchical;
  s.E = shape.num_logical_experts;
  s.P = shape.num_physical_experts;
  s.N = shape.num_ranks;
  s.G = hier ? shape.num_groups : 1;
  s.M = hier ? shape.num_nodes : 1;
  s.epg = s.E / s.G;
  s.gpn = s.G / s.M;
  s.epn = s.E / s.M;
  s.rpn = s.P / s.M;
  s.bs = s.N / s.M;
  s.spg = s.P / s.N;
  s.load = load;
  // Locals: the int32 stores below could alias the Scratch members as far as
  // the compiler knows, which would reload them in every loop.
  const int32_t E = s.E, G = s.G, M = s.M, epg = s.epg, gpn = s.gpn, epn = s.epn, rpn = s.rpn;

  // 1. Groups onto nodes. Group loads are exact int64 sums (< 2^53, so exact
  // as doubles too, and their float64 pack sums are exact).
  double* items = s.items.data();
  for (int32_t g = 0; g < G; ++g) items[g] = static_cast<double>(SumInt64(load + g * epg, epg));
  int32_t* node_group = s.node_group.data();
  s.Pack(G, M);
  for (int32_t g = 0; g < G; ++g) node_group[s.pack_of[g] * gpn + s.pos_of[g]] = g;
  int32_t* node_expert = s.node_expert.data();
  for (int32_t j = 0; j < G; ++j) FillStep(node_expert + j * epg, epg, node_group[j] * epg, 1);

  // 2. Replication per node: each added replica goes to the expert of largest
  // w / count, the first in node-local order on exact equality.
  const int32_t red = rpn - epn;
  int32_t* cnt = s.cnt.data();
  double* cur = s.cur_load.data();
  FillStep(cnt, E, 1, 0);  // every expert is on one node
  const bool use_cand = red <= kCandidateLimit && red < epn;
  s.have_node_w = use_cand;
  // With candidates and few nodes, the picks of all nodes run in lockstep
  // (pick t of every node, then t + 1): each pick waits on the previous one
  // of its node (argmax, division), and interleaving overlaps the nodes.
  const bool lockstep = use_cand && M <= kInterleaveLimit;
  int32_t cand_all[kInterleaveLimit][kCandidateLimit + 1];
  double cl_all[kInterleaveLimit][kCandidateLimit];  // w / count of each candidate
  for (int32_t n = 0; n < M; ++n) {
    const int32_t* ne = node_expert + n * epn;
    int32_t* re = s.rep_expert.data() + n * rpn;
    int32_t* rp = s.rep_pos.data() + n * rpn;
    std::memcpy(re, ne, sizeof(int32_t) * static_cast<size_t>(epn));  // rp is read only past epn
    if (!use_cand)
      for (int32_t i = 0; i < epn; ++i) cur[i] = static_cast<double>(load[ne[i]]);  // w / 1
    if (use_cand) {
      // Only the first `red` experts in (w desc, node position asc) order can
      // receive a replica: any other expert x has `red` experts y ahead of it
      // in that order, and while fewer than `red` replicas have been added
      // one such y still has count 1, so cur[y] = w[y] >= w[x] >= cur[x], and
      // y comes first on equality: x is never the (first) largest. The scan
      // over the candidates, in node position order, therefore picks exactly
      // what the scan over all experts picks. The candidates are selected on
      // an exact integer key: (2^53 - 1 - w) in the high bits (w < 2^53), the
      // position (< 2^11, as epn <= 1024) in the low 11 bits.
      //
      // Prefilter (exact): split the node's experts into `red` nonempty
      // blocks and let T be the smallest of the blocks' maximum loads. The
      // `red` block maxima all have w >= T, so an expert with w < T has `red`
      // experts strictly ahead of it and is no candidate; only the experts
      // with w >= T (usually a few more than `red`) go through the
      // (branchy) insertion below. Both passes here are branch-free.
      // The node's loads, contiguous in node position order (its positions
      // are whole groups), so the passes below index them directly.
      int64_t* wl = s.node_w.data() + n * epn;
      for (int32_t j = 0; j < gpn; ++j)
        std::memcpy(wl + j * epg, load + node_group[n * gpn + j] * epg,
                    sizeof(int64_t) * static_cast<size_t>(epg));
      // Any split into `red` nonempty blocks gives a valid bound, and the
      // selection below is exact for any valid bound, so the split does not
      // change the candidates: the AVX-512 path takes the positions i with
      // i % red == b as block b (a lane-wise max of vectors), the others
      // consecutive runs (no division per block).
      int64_t thr = kMaxLoad;
#if defined(EPLB_PLANNER_X86_DISPATCH)
      if (red >= 1 && red <= 8 && CpuHasAvx512()) {
        thr = StridedBoundAvx512(wl, epn, red);
      } else
#endif
      {
        const int32_t bq = red > 0 ? epn / red : 0, br = red > 0 ? epn % red : 0;
        for (int32_t b = 0, i = 0; b < red; ++b) {
          const int32_t end = i + bq + (b < br);
          int64_t mx = -1;
          for (; i < end; ++i) mx = std::max(mx, wl[i]);
          thr = std::min(thr, mx);
        }
      }
      int32_t cand_one[kCandidateLimit + 1];  // + 1: the branch-free filter's spare
      double cl_one[kCandidateLimit];
      int32_t* cand = lockstep ? cand_all[n] : cand_one;
      double* cl = lockstep ? cl_all[n] : cl_one;
#if defined(EPLB_PLANNER_X86_DISPATCH)
      if (epn <= kSelectItems && CpuHasAvx512()) {
        SelectCandidatesAvx512(wl, epn, thr, red, cand);
      } else
#endif
      {
        int32_t* sel = s.rheap.data();  // positions with w >= thr, ascending
        int32_t ns = 0;
        for (int32_t i = 0; i < epn; ++i) {
          sel[ns] = i;
          ns += wl[i] >= thr;
        }
        uint64_t top[kCandidateLimit];
        int32_t nt = 0;
        for (int32_t si = 0; si < ns; ++si) {
          const int32_t i = sel[si];
          const uint64_t k =
              (static_cast<uint64_t>(kMaxLoad - 1 - wl[i]) << 11) | static_cast<uint64_t>(i);
          if (nt == red && k >= top[red - 1]) continue;
          int32_t b = nt < red ? nt++ : red - 1;
          while (b > 0 && top[b - 1] > k) {
            top[b] = top[b - 1];
            --b;
          }
          top[b] = k;
        }
        for (int32_t c = 0; c < red; ++c) cand[c] = static_cast<int32_t>(top[c] & 2047);
        std::sort(cand, cand + red);
      }
      for (int32_t c = 0; c < red; ++c) cl[c] = static_cast<double>(wl[cand[c]]);  // w / 1
      if (lockstep) continue;
      for (int32_t t = 0; t < red; ++t) {
        int32_t bc = 0;
        double bv = cl[0];  // the first maximum: strict '>' keeps the earliest
        for (int32_t c = 1; c < red; ++c) {
          const double v = cl[c];
          const bool g = v > bv;
          bv = g ? v : bv;
          bc = g ? c : bc;
        }
        const int32_t best = cand[bc];
        const int32_t e = ne[best];
        const int32_t ce = ++cnt[e];
        cl[bc] = static_cast<double>(load[e]) / ce;
        re[epn + t] = e;
        rp[epn + t] = best;
      }
    } else if (static_cast<int64_t>(epn) * red <= kLinearReplicateLimit) {
      for (int32_t t = 0; t < red; ++t) {
        int32_t best = 0;
        for (int32_t i = 1; i < epn; ++i)
          if (cur[i] > cur[best]) best = i;
        const int32_t e = ne[best];
        ++cnt[e];
        cur[best] = static_cast<double>(load[e]) / cnt[e];
        re[epn + t] = e;
        rp[epn + t] = best;
      }
    } else {
      // Max-heap on (load desc, position asc): the same choice as the scan.
      int32_t* h = s.rheap.data();
      auto less = [cur](int32_t a, int32_t b) {
        return cur[a] < cur[b] || (cur[a] == cur[b] && a > b);
      };
      for (int32_t i = 0; i < epn; ++i) h[i] = i;
      std::make_heap(h, h + epn, less);
      for (int32_t t = 0; t < red; ++t) {
        std::pop_heap(h, h + epn, less);
        const int32_t best = h[epn - 1];
        const int32_t e = ne[best];
        ++cnt[e];
        cur[best] = static_cast<double>(load[e]) / cnt[e];
        re[epn + t] = e;
        rp[epn + t] = best;
        std::push_heap(h, h + epn, less);
      }
    }
  }
  if (lockstep) {
    // The same picks as the per-node candidate loop above.
    for (int32_t t = 0; t < red; ++t) {
      for (int32_t n = 0; n < M; ++n) {
        const int32_t* cand = cand_all[n];
        double* cl = cl_all[n];
        int32_t bc = 0;
        double bv = cl[0];  // the first maximum: strict '>' keeps the earliest
        for (int32_t c = 1; c < red; ++c) {
          const double v = cl[c];
          const bool g = v > bv;
          bv = g ? v : bv;
          bc = g ? c : bc;
        }
        const int32_t best = cand[bc];
        const int32_t e = node_expert[n * epn + best];
        const int32_t ce = ++cnt[e];
        cl[bc] = static_cast<double>(load[e]) / ce;
        s.rep_expert[static_cast<size_t>(n * rpn + epn + t)] = e;
        s.rep_pos[static_cast<size_t>(n * rpn + epn + t)] = best;
      }
    }
  }
  std::memcpy(logcnt, cnt, sizeof(int32_t) * static_cast<size_t>(E));
}

void Planner::PackLayer(int32_t* phy2log) {
  Scratch& s = *s_;
  double* items = s.items.data();
  s.BuildPackItems(items);
  const int32_t cap = s.spg;
#if defined(EPLB_PLANNER_X86_DISPATCH)
  if (cap > 1 && s.bs <= kFastPacks && s.rpn <= kFastItems && CpuHasAvx2()) {
    if (CpuHasAvx512() && s.M <= kWideLanes) {
      PackNodesAvx512(items, s.rep_expert.data(), s.M, s.rpn, s.bs, cap, phy2log);
      return;
    }
    if (s.M <= kFastLanes) {
      PackNodesAvx2(items, s.rep_expert.data(), s.M, s.rpn, s.bs, cap, phy2log);
      return;
    }
  }
#endif
  if (cap == 1 || s.bs > kLinearPackLimit || s.M > kInterleaveLimit) {
    for (int32_t n = 0; n < s.M; ++n) {
      if (n > 0) std::memcpy(items, items + n * s.rpn, sizeof(double) * static_cast<size_t>(s.rpn));
      s.Pack(s.rpn, s.bs);
      const int32_t* re = s.rep_expert.data() + n * s.rpn;
      int32_t* out = phy2log + n * s.rpn;
      for (int32_t j = 0; j < s.rpn; ++j) out[s.pack_of[j] * s.spg + s.pos_of[j]] = re[j];
    }
    return;
  }
  // The nodes are independent, so their greedy steps are interleaved (step t
  // of every node, then step t + 1): each node's step depends on its previous
  // one through the pack loads, and interleaving lets the CPU overlap the
  // nodes' dependency chains. Each node performs exactly the sequence of
  // Pack(): sorted order, then smallest non-full pack (lowest index on
  // equality), pack loads summed in insertion order.
  const int32_t m = s.bs, rpn = s.rpn, M = s.M;
  int32_t* ord = s.order.data();
  for (int32_t n = 0; n < M; ++n)
    Scratch::SortDesc(items + n * rpn, ord + n * rpn, s.sort_key.data(), rpn);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const int32_t m4 = (m + 3) & ~3;
  alignas(32) double key[kInterleaveLimit][kLinearPackLimit];
  double pl[kInterleaveLimit][kLinearPackLimit];
  int32_t pc[kInterleaveLimit][kLinearPackLimit];
  for (int32_t n = 0; n < M; ++n)
    for (int32_t k = 0; k < m4; ++k) {
      key[n][k] = k < m ? 0.0 : kInf;
      pl[n][k] = 0.0;
      pc[n][k] = 0;
    }
  for (int32_t t = 0; t < rpn; ++t) {
    for (int32_t n = 0; n < M; ++n) {
      const double* kn = key[n];
      const int32_t i = ord[n * rpn + t];
      const int32_t best = FirstMin(kn, m4);
      const int32_t pos = pc[n][best]++;
      pl[n][best] += items[n * rpn + i];
      key[n][best] = pc[n][best] < cap ? pl[n][best] : kInf;
      phy2log[n * rpn + best * cap + pos] = s.rep_expert[static_cast<size_t>(n * rpn + i)];
    }
  }
}

void Planner::MigrateLayer(Migration migration, const int32_t* old, int32_t* phy2log) {
  if (migration == Migration::kNone || old == nullptr) return;
  Scratch& s = *s_;
  const int32_t E = s.E, P = s.P, N = s.N, M = s.M, bs = s.bs, S = s.spg;
  PlanShape rs;
  rs.num_logical_experts = E;
  rs.num_physical_experts = P;
  rs.num_ranks = N;
  rs.num_nodes = M;
  s.ReserveMigration(rs);

  int64_t kept_full = -1;
  if (migration == Migration::kFull) {
    // inter[k][j]: slots kept if new GPU pack k lands on old GPU j (multiset
    // intersection, exactly what the keep-in-slot rule keeps).
    // block_nz[a][b]: block (new node a, old node b) has a nonzero entry.
    int64_t* I = s.inter.data();
    char* bnz = s.block_nz.data();
    std::fill(bnz, bnz + M * M, 0);
    // Holders of each expert in the old placement: a list of (old GPU, slots
    // there) entries per expert. GPUs are visited in order, so an expert's
    // newest entry is the only one that can be on the current GPU.
    int32_t* head = s.hold_head.data();
    int32_t* hgpu = s.hold_gpu.data();
    int32_t* hnode = s.hold_node.data();
    int32_t* hcnt = s.hold_cnt.data();
    int32_t* hnext = s.hold_next.data();
    std::fill(head, head + E, -1);
    int32_t num_entries = 0;
    for (int32_t j = 0; j < N; ++j) {
      const int32_t* od = old + j * S;
      const int32_t node = j / bs;
      for (int32_t r = 0; r < S; ++r) {
        const int32_t e = od[r];
        const int32_t h = head[e];
        if (h >= 0 && hgpu[h] == j) {
          ++hcnt[h];
        } else {
          hgpu[num_entries] = j;
          hnode[num_entries] = node;
          hcnt[num_entries] = 1;
          hnext[num_entries] = h;
          head[e] = num_entries++;
        }
      }
    }

    std::fill(I, I + static_cast<size_t>(N) * N, 0);
    int32_t* nc = s.newcnt.data();
    for (int32_t k = 0; k < N; ++k) {
      const int32_t* pk = phy2log + k * S;
      for (int32_t r = 0; r < S; ++r) ++nc[pk[r]];
      int64_t* Ik = I + static_cast<size_t>(k) * N;
      char* bnz_row = bnz + (k / bs) * M;
      for (int32_t r = 0; r < S; ++r) {
        const int32_t e = pk[r];
        const int32_t c = nc[e];
        if (c == 0) continue;  // expert already handled for this pack
        nc[e] = 0;
        for (int32_t h = head[e]; h >= 0; h = hnext[h]) {
          Ik[hgpu[h]] += std::min(c, hcnt[h]);
          bnz_row[hnode[h]] = 1;
        }
      }
    }

    // (a) Within-node GPU assignment for every (new node pack, old node).
    // Every block needs its optimum (for step b) but only M blocks need an
    // assignment, so the solver runs only where a cheap bound does not
    // settle the value, and for the chosen blocks afterwards. Bounds: the
    // optimum is at most the sum of row maxima; when the rows' first argmax
    // columns are distinct that assignment attains it (and is the only
    // optimum when every row's maximum is unique). On the diagonal the
    // identity is kept when it attains the optimum, so there the identity
    // attaining the bound fixes the assignment too.
    int64_t* B = s.block.data();
    int32_t colmark[kMaxRanks];
    for (int32_t a = 0; a < M; ++a) {
      for (int32_t b = 0; b < M; ++b) {
        const int32_t blk = a * M + b;
        int32_t* perm = s.perm_all.data() + static_cast<size_t>(blk) * bs;
        s.perm_pending[blk] = 0;
        if (!bnz[blk]) {
          // All zero: the solver matches rows to columns in order.
          s.vnode[blk] = 0;
          for (int32_t k = 0; k < bs; ++k) perm[k] = k;
          continue;
        }
        int64_t rsum = 0, idv = 0;
        bool distinct = true, strict = true;
        for (int32_t j = 0; j < bs; ++j) colmark[j] = 0;
        for (int32_t k = 0; k < bs; ++k) {
          const int64_t* row = I + static_cast<size_t>(a * bs + k) * N + b * bs;
          int64_t mx = row[0];
          int32_t arg = 0, nmax = 1;
          for (int32_t j = 1; j < bs; ++j) {
            if (row[j] > mx) {
              mx = row[j];
              arg = j;
              nmax = 0;
            }
            nmax += row[j] == mx;
          }
          rsum += mx;
          idv += row[k];
          strict = strict && nmax == 1;
          distinct = distinct && colmark[arg] == 0;
          colmark[arg] = 1;
          perm[k] = arg;
        }
        s.perm_pending[blk] = 0;
        int64_t v;
        if (rsum == 0 || (a == b && idv == rsum)) {
          // All zero (the solver matches rows to columns in order) or the
          // identity is optimal on the diagonal.
          v = rsum;
          for (int32_t k = 0; k < bs; ++k) perm[k] = k;
        } else if (distinct && strict) {
          // Every row's unique maximum, in distinct columns: any other
          // assignment loses on some row, so this is the unique optimum and
          // hence what the solver returns.
          v = rsum;
        } else if (distinct) {
          v = rsum;
          s.perm_pending[blk] = 1;
        } else {
          for (int32_t k = 0; k < bs; ++k)
            for (int32_t j = 0; j < bs; ++j)
              B[k * bs + j] = I[static_cast<size_t>(a * bs + k) * N + b * bs + j];
          v = s.solver.SolveMax(bs, B, perm);
          EPLB_ASSERT(idv <= v);
          // Keep GPUs in place unless moving them keeps strictly more slots.
          if (a == b && idv == v)
            for (int32_t k = 0; k < bs; ++k) perm[k] = k;
        }
        s.vnode[blk] = v;
      }
    }
    // (b) Node packs onto old nodes, weighted by their best GPU assignment.
    int32_t* sigma = s.sigma.data();
    if (M == 1) {
      sigma[0] = 0;
    } else {
      int64_t idv = 0, rsum = 0;
      for (int32_t a = 0; a < M; ++a) {
        idv += s.vnode[a * M + a];
        int64_t mx = s.vnode[a * M];
        for (int32_t b = 1; b < M; ++b) mx = std::max(mx, s.vnode[a * M + b]);
        rsum += mx;
      }
      if (idv == rsum) {
        // The identity attains the bound, so it is optimal and kept.
        for (int32_t a = 0; a < M; ++a) sigma[a] = a;
      } else {
        int64_t v = s.solver.SolveMax(M, s.vnode.data(), sigma);
        EPLB_ASSERT(idv <= v);
        if (idv == v)
          for (int32_t a = 0; a < M; ++a) sigma[a] = a;
      }
    }
    // Assignments of the chosen blocks whose value came from the bound.
    for (int32_t a = 0; a < M; ++a) {
      const int32_t b = sigma[a];
      const int32_t blk = a * M + b;
      if (!s.perm_pending[blk]) continue;
      int32_t* perm = s.perm_all.data() + static_cast<size_t>(blk) * bs;
      int64_t idv = 0;
      for (int32_t k = 0; k < bs; ++k)
        for (int32_t j = 0; j < bs; ++j) {
          B[k * bs + j] = I[static_cast<size_t>(a * bs + k) * N + b * bs + j];
          if (j == k) idv += B[k * bs + j];
        }
      const int64_t v = s.solver.SolveMax(bs, B, perm);
      EPLB_ASSERT(v == s.vnode[blk]);
      if (a == b && idv == v)
        for (int32_t k = 0; k < bs; ++k) perm[k] = k;
    }
    int64_t kept_id = 0;
    kept_full = 0;
    for (int32_t a = 0; a < M; ++a) {
      const int32_t* perm = s.perm_all.data() + static_cast<size_t>(a * M + sigma[a]) * bs;
      for (int32_t k = 0; k < bs; ++k) {
        const int32_t kg = a * bs + k;
        const int32_t tg = sigma[a] * bs + perm[k];
        s.target[kg] = tg;
        kept_full += I[static_cast<size_t>(kg) * N + tg];
        kept_id += I[static_cast<size_t>(kg) * N + kg];
      }
    }
    // The identity relabeling is one of the candidates and both steps are
    // exact, so FULL keeps at least as many slots as PRESERVE.
    EPLB_ASSERT(kept_full >= kept_id);
    int32_t* t = s.tmp.data();
    for (int32_t kg = 0; kg < N; ++kg)
      std::memcpy(t + s.target[kg] * S, phy2log + kg * S, sizeof(int32_t) * static_cast<size_t>(S));
    std::memcpy(phy2log, t, sizeof(int32_t) * static_cast<size_t>(P));
  }

  // (c) Keep-in-slot rule per GPU (conformance README, preserved_phy2log).
  int32_t* first = s.first.data();
  int32_t* nxt = s.nxt.data();
  int32_t* out = s.out.data();
  char* taken = s.taken.data();
  int32_t* free_list = s.tmp.data();
  int64_t kept = 0;
  for (int32_t g = 0; g < N; ++g) {
    int32_t* nw = phy2log + g * S;
    const int32_t* od = old + g * S;
    for (int32_t i = S - 1; i >= 0; --i) {
      nxt[i] = first[nw[i]];
      first[nw[i]] = i;
      taken[i] = 0;
    }
    // Branch-free (whether an old expert is kept is data dependent; the
    // mispredictions dominated this loop): a miss reads the sentinel
    // nxt[S] = -1 and marks the spare taken[S], which leaves first[e] at -1.
    nxt[S] = -1;
    for (int32_t r = 0; r < S; ++r) {
      const int32_t e = od[r];
      const int32_t i = first[e];
      const int32_t hit = i >= 0;
      const int32_t ii = hit ? i : S;
      out[r] = hit ? e : -1;
      taken[ii] = 1;
      first[e] = nxt[ii];
      kept += hit;
    }
    for (int32_t i = 0; i < S; ++i) first[nw[i]] = -1;
    // Untaken new entries in order fill the remaining slots in order.
    int32_t num_free = 0;
    for (int32_t i = 0; i < S; ++i) {
      free_list[num_free] = i;
      num_free += taken[i] == 0;
    }
    free_list[num_free] = 0;  // read (unused) by kept slots past the last miss
    int32_t c = 0;
    for (int32_t r = 0; r < S; ++r) {
      const int32_t miss = out[r] < 0;
      const int32_t v = nw[free_list[c]];
      out[r] = miss ? v : out[r];
      c += miss;
    }
    std::memcpy(nw, out, sizeof(int32_t) * static_cast<size_t>(S));
  }
  if (kept_full >= 0) EPLB_ASSERT(kept == kept_full);
}

int64_t Planner::PlanLayer(const PlanShape& shape, Policy policy, Migration migration,
                           const int64_t* load, const int32_t* old_phy2log, int32_t* phy2log,
                           int32_t* logcnt) {
  ReplicateLayer(shape, policy, load, logcnt);
  PackLayer(phy2log);
  if (old_phy2log == nullptr) return 0;
  MigrateLayer(migration, old_phy2log, phy2log);
  int64_t moved = 0;
  for (int32_t p = 0; p < shape.num_physical_experts; ++p) moved += phy2log[p] != old_phy2log[p];
  return moved;
}

PlanResult Planner::Plan(const PlanShape& shape, Policy policy, Migration migration,
                         const int64_t* load, const int32_t* old_phy2log, int32_t* phy2log,
                         int32_t* logcnt, int32_t* log2phy) {
  ValidateShape(shape);
  const Policy p = ResolvePolicy(shape, policy);
  EPLB_CHECK_ARG(p != Policy::kChurnAware,
                 "policy CHURN_AWARE is planned by the churn-aware policy, not Planner::Plan");
  EPLB_CHECK_ARG(migration == Migration::kNone || migration == Migration::kPreserve ||
                     migration == Migration::kFull,
                 "migration (%d) is not a valid eplbMigration_t", static_cast<int>(migration));
  ValidateLoads(shape, load);
  if (old_phy2log != nullptr) ValidatePlacement(shape, old_phy2log, "old_phy2log");
  EPLB_CHECK_ARG(phy2log != nullptr, "phy2log is NULL");
  EPLB_CHECK_ARG(logcnt != nullptr, "logcnt is NULL");
  const size_t E = static_cast<size_t>(shape.num_logical_experts);
  const size_t P = static_cast<size_t>(shape.num_physical_experts);
  int64_t moved = 0;
  Scratch& s = *s_;
  for (int32_t l = 0; l < shape.num_layers;) {
    const size_t ul = static_cast<size_t>(l);
    int32_t nl = 1;
    ReplicateLayer(shape, p, load + ul * E, logcnt + ul * E);
#if defined(EPLB_PLANNER_X86_DISPATCH)
    if (l + 1 < shape.num_layers && s.CanPackPair()) {
      // Layers l and l + 1 packed together: their 2M nodes are independent,
      // and PackNodesAvx512 performs each node's steps exactly as alone.
      // Layer l + 1's nodes follow layer l's in items, experts and phy2log
      // (P = M * rpn), so they are simply nodes M..2M-1.
      s.BuildPackItems(s.pair_items.data());
      std::memcpy(s.pair_rep.data(), s.rep_expert.data(), sizeof(int32_t) * P);
      ReplicateLayer(shape, p, load + (ul + 1) * E, logcnt + (ul + 1) * E);
      s.BuildPackItems(s.pair_items.data() + P);
      std::memcpy(s.pair_rep.data() + P, s.rep_expert.data(), sizeof(int32_t) * P);
      PackNodesAvx512(s.pair_items.data(), s.pair_rep.data(), 2 * s.M, s.rpn, s.bs, s.spg,
                      phy2log + ul * P);
      nl = 2;
    } else {
      PackLayer(phy2log + ul * P);
    }
#else
    PackLayer(phy2log + ul * P);
#endif
    for (size_t k = ul; k < ul + static_cast<size_t>(nl); ++k) {
      if (old_phy2log != nullptr) {
        const int32_t* old = old_phy2log + k * P;
        int32_t* out = phy2log + k * P;
        MigrateLayer(migration, old, out);
        for (size_t q = 0; q < P; ++q) moved += out[q] != old[q];
      }
    }
    // log2phy is written layer by layer, right after the layer is planned.
    // The stores (2 MB for the DeepSeek-V3 shape, bound by cache bandwidth)
    // cost Plan about their standalone time (BM_Dsv3_Log2Phy). Measured no
    // faster: separating a layer's -1 fill from its slot stores by planning
    // work; writing the previous pair's rows in pieces between the packing
    // kernel's greedy steps; each row written once, or the fill done with
    // 64-byte stores instead of memset.
    for (int32_t k = l; k < l + nl && log2phy != nullptr; ++k) {
      FillLog2Phy(shape, k, k + 1, log2phy);
      ScatterLog2Phy(shape, k, k + 1, phy2log, log2phy);
    }
    l += nl;
  }
  PlanResult r;
  r.policy = p;
  r.moved_slots = old_phy2log != nullptr ? moved : -1;
  return r;
}

}  // namespace eplb
