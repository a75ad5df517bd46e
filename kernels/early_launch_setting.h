// When eplb launches its decode-size route+count and count kernels early
// (programmatic dependent launch, kernels/enqueue.cuh): one process-wide
// mode, by default from the environment variable EPLB_PDL ("0" off, "1"
// on, anything else or unset: auto; read once, at the first launch or
// query), overridden by eplbSetEarlyLaunch. Plus the record of eplb's
// captured kernel nodes that let the next launch start
// (GridDependentsLaunch), which the auto mode looks for in front of a
// launch. Host-only C++; inline, so that
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

// The graph nodes of eplb's kernels that call GridDependentsLaunch(),
// noted as eplb captures them, for the look behind of the auto mode: a ring
// of the last kTriggeringNodes, shared by all threads (a lookup is a scan
// of them). A node that has left the ring only makes a launch behind it
// normal; a node handle that a destroyed graph's node had and a new node of
// another kernel reuses would make one launch early behind that kernel:
// slower by 0.1-0.2 us at most, as correct as any early launch.
constexpr int kTriggeringNodes = 256;
inline std::atomic<const void*>* TriggeringNodes() {
  static std::atomic<const void*> ring[kTriggeringNodes];
  return ring;
}
inline std::atomic<unsigned>& TriggeringNodesNext() {
  static std::atomic<unsigned> next{0};
  return next;
}

inline void NoteTriggeringNode(const void* node) {
  const unsigned i = TriggeringNodesNext().fetch_add(1, std::memory_order_relaxed);
  TriggeringNodes()[i % kTriggeringNodes].store(node, std::memory_order_release);
}

inline bool IsTriggeringNode(const void* node) {
  if (node == nullptr) return false;
  std::atomic<const void*>* ring = TriggeringNodes();
  for (int i = 0; i < kTriggeringNodes; ++i)
    if (ring[i].load(std::memory_order_acquire) == node) return true;
  return false;
}

}  // namespace kernels
}  // namespace eplb
