// Whether eplb launches its decode-size route+count and count kernels early
// (programmatic dependent launch, kernels/enqueue.cuh): one process-wide
// setting, by default from the environment variable EPLB_PDL ("1" = on, read
// once, at the first launch or query), overridden by eplbSetEarlyLaunch.
// Host-only C++; inline, so that a kernel file compiled on its own (as
// dev/route_ab does) has it too.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace eplb {
namespace kernels {

// -1: not yet read from EPLB_PDL; 0 off; 1 on.
inline std::atomic<int>& EarlyLaunchSetting() {
  static std::atomic<int> setting{-1};
  return setting;
}

inline bool EarlyLaunchRequested() {
  std::atomic<int>& s = EarlyLaunchSetting();
  int v = s.load(std::memory_order_acquire);
  if (v < 0) {
    const char* env = std::getenv("EPLB_PDL");
    int from_env = env != nullptr && std::strcmp(env, "1") == 0 ? 1 : 0;
    // A concurrent eplbSetEarlyLaunch wins over the environment.
    s.compare_exchange_strong(v, from_env, std::memory_order_acq_rel);
    v = s.load(std::memory_order_acquire);
  }
  return v == 1;
}

inline void SetEarlyLaunch(bool on) {
  EarlyLaunchSetting().store(on ? 1 : 0, std::memory_order_release);
}

}  // namespace kernels
}  // namespace eplb
