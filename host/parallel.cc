#include "parallel.h"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace eplb {

int32_t DefaultHostThreads() {
  if (const char* env = std::getenv("EPLB_HOST_THREADS")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v >= 1) return static_cast<int32_t>(std::min<long>(v, 64));
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int32_t>(std::clamp<unsigned>(hw, 1u, 4u));
}

void ParallelRanges(int32_t n, int32_t max_threads, int32_t min_per_thread,
                    const std::function<void(int32_t, int32_t, int32_t)>& fn) {
  if (n <= 0) return;
  const int32_t per = std::max<int32_t>(1, min_per_thread);
  const int32_t workers = std::clamp<int32_t>(std::min(max_threads, (n + per - 1) / per), 1, n);
  if (workers == 1) {
    fn(0, n, 0);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(workers));
  auto run = [&](int32_t w) {
    const int32_t begin = static_cast<int32_t>(static_cast<int64_t>(n) * w / workers);
    const int32_t end = static_cast<int32_t>(static_cast<int64_t>(n) * (w + 1) / workers);
    try {
      fn(begin, end, w);
    } catch (...) {
      errors[static_cast<size_t>(w)] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(workers - 1));
  int32_t started = 1;
  try {
    for (int32_t w = 1; w < workers; ++w, ++started) threads.emplace_back(run, w);
  } catch (...) {
    // Thread creation failed: do the missing ranges here.
  }
  run(0);
  for (int32_t w = started; w < workers; ++w) run(w);
  for (auto& t : threads) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace eplb
