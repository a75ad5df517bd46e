// When eplb launches its decode-size route+count and count kernels early
// (programmatic dependent launch, kernels/enqueue.cuh): one process-wide
// mode, by default from the environment variable EPLB_PDL ("0" off, "1"
// on, anything else or unset: auto; read once, at the first launch or
// query), overridden by eplbSetEarlyLaunch. Plus the registry of eplb's
// kernels that let the next launch start (GridDependentsLaunch), which the
// auto mode looks for in front of a launch. Host-only C++; inline, so that
// a kernel file compiled on its own (as dev/route_ab does) has it too.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace eplb {
namespace kernels {

// The values of eplbSetEarlyLaunch / eplbGetEarlyLaunch (eplb.h).
constexpr int kEarlyLaunchOff = 0;
constexpr int kEarlyLaunchOn = 1;
constexpr int kEarlyLaunchAuto = 2;

// -1: not yet read from EPLB_PDL; else one of the three above.
inline std::atomic<int>& EarlyLaunchSetting() {
  static std::atomic<int> setting{-1};
  return setting;
}

inline int EarlyLaunchMode() {
  std::atomic<int>& s = EarlyLaunchSetting();
  int v = s.load(std::memory_order_acquire);
  if (v < 0) {
    const char* env = std::getenv("EPLB_PDL");
    const int from_env = env == nullptr               ? kEarlyLaunchAuto
                         : std::strcmp(env, "0") == 0 ? kEarlyLaunchOff
                         : std::strcmp(env, "1") == 0 ? kEarlyLaunchOn
                                                      : kEarlyLaunchAuto;
    // A concurrent eplbSetEarlyLaunch wins over the environment.
    s.compare_exchange_strong(v, from_env, std::memory_order_acq_rel);
    v = s.load(std::memory_order_acquire);
  }
  return v;
}

inline void SetEarlyLaunch(int mode) {
  EarlyLaunchSetting().store(mode, std::memory_order_release);
}

// eplb's kernels that call GridDependentsLaunch(), noted at their launches
// (append-only; a lookup is a scan of at most kSlots pointers; eplb has
// about 16 such instantiations, and one past kSlots is simply not found,
// which only makes a launch after it normal).
constexpr int kTriggeringSlots = 64;
inline std::atomic<const void*>* TriggeringKernels() {
  static std::atomic<const void*> slots[kTriggeringSlots];
  return slots;
}

inline void NoteTriggeringKernel(const void* kernel) {
  std::atomic<const void*>* slots = TriggeringKernels();
  for (int i = 0; i < kTriggeringSlots; ++i) {
    const void* cur = slots[i].load(std::memory_order_acquire);
    if (cur == nullptr && slots[i].compare_exchange_strong(cur, kernel, std::memory_order_acq_rel))
      return;
    if (cur == kernel) return;  // noted already (by this thread or another)
  }
}

inline bool IsTriggeringKernel(const void* kernel) {
  if (kernel == nullptr) return false;
  std::atomic<const void*>* slots = TriggeringKernels();
  for (int i = 0; i < kTriggeringSlots; ++i) {
    const void* cur = slots[i].load(std::memory_order_acquire);
    if (cur == nullptr) return false;  // slots fill in order
    if (cur == kernel) return true;
  }
  return false;
}

}  // namespace kernels
}  // namespace eplb
