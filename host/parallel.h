// Splitting independent per-layer host work (planning, transfer planning)
// over a few threads. Pure host C++. Results never depend on the thread
// count: each index is computed by exactly one thread, with the same inputs
// and arithmetic as a serial loop, into its own output.
#pragma once

#include <cstdint>
#include <functional>

namespace eplb {

// Threads the per-layer host work uses by default: EPLB_HOST_THREADS when set
// (1 = serial), else half the hardware threads, between 1 and 8. With the
// pool, 8 threads beat 4 on a 16-core H200 host (the churn-aware plan of
// the DeepSeek-V3 shape: 0.74 vs 1.13 ms per call); half the cores leaves
// room for the engine and for the other ranks of a node.
int32_t DefaultHostThreads();

// Calls fn(begin, end, worker) on contiguous ranges that cover [0, n) once,
// on up to max_threads threads (the calling thread runs worker 0; the others
// come from a pool kept for the process's lifetime), with at least
// min_per_thread indices per range where n allows. A worker index is used by
// one thread at a time, and may get several ranges (up to twice as many
// ranges as workers). Blocks until all are done; if any call throws,
// rethrows the exception of the lowest range after all have ended.
void ParallelRanges(int32_t n, int32_t max_threads, int32_t min_per_thread,
                    const std::function<void(int32_t, int32_t, int32_t)>& fn);

}  // namespace eplb
