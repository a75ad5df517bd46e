// When eplb launches its route+count and count kernels early (programmatic
// dependent launch, kernels/enqueue.cuh): one process-wide mode, by default
// from the environment variable EPLB_PDL ("0" off, "1" on, anything else or
// unset: auto; read once, at the first launch or query), overridden by
// eplbSetEarlyLaunch. Plus the record of eplb's captured kernel nodes that
// let the next launch start (GridDependentsLaunch), which the auto mode
// looks for in front of a launch. Host-only C++; inline, so that a kernel
// file compiled on its own (as dev/route_ab does) has it too.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

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
// of the last kTriggeringNodes, shared by all threads, each node with the
// id of its capture sequence (cudaStreamGetCaptureInfo), since a node
// handle of a destroyed graph comes back as a node of a later one (on an
// H200, a test's next capture reused them at once). Taken only while
// capturing. A node that has left the ring only makes a launch behind it
// normal.
constexpr int kTriggeringNodes = 256;
struct TriggeringNodeRing {
  std::mutex mu;
  unsigned long long capture[kTriggeringNodes] = {};
  const void* node[kTriggeringNodes] = {};
  unsigned next = 0;
};
inline TriggeringNodeRing& TriggeringNodes() {
  static TriggeringNodeRing ring;
  return ring;
}

inline void NoteTriggeringNode(unsigned long long capture_id, const void* node) {
  TriggeringNodeRing& r = TriggeringNodes();
  std::lock_guard<std::mutex> lock(r.mu);
  r.capture[r.next] = capture_id;
  r.node[r.next] = node;
  r.next = (r.next + 1) % kTriggeringNodes;
}

inline bool IsTriggeringNode(unsigned long long capture_id, const void* node) {
  if (node == nullptr) return false;
  TriggeringNodeRing& r = TriggeringNodes();
  std::lock_guard<std::mutex> lock(r.mu);
  for (int i = 0; i < kTriggeringNodes; ++i)
    if (r.node[i] == node && r.capture[i] == capture_id) return true;
  return false;
}

}  // namespace kernels
}  // namespace eplb
