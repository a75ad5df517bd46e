// GPU test helpers: skip without enough devices (fail under
// EPLB_REQUIRE_GPU=1), check CUDA calls, own a non-default stream.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "test_env.h"

namespace eplb_test {

inline int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace eplb_test

// In a TEST body (or SetUp): skip unless at least `n` GPUs are visible.
#define EPLB_REQUIRE_GPUS(n)                                                           \
  do {                                                                                 \
    int have_ = ::eplb_test::GpuCount();                                               \
    if (have_ < (n)) {                                                                 \
      if (::eplb_test::EnvFlag("EPLB_REQUIRE_GPU")) {                                  \
        FAIL() << "needs " << (n) << " GPU(s), found " << have_                        \
               << " and EPLB_REQUIRE_GPU=1";                                           \
      }                                                                                \
      GTEST_SKIP() << "needs " << (n) << " GPU(s), found " << have_;                   \
    }                                                                                  \
  } while (0)

#define EPLB_CUDA_OK(expr)                                                        \
  do {                                                                            \
    cudaError_t e_ = (expr);                                                      \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorName(e_) << " "    \
                               << cudaGetErrorString(e_);                         \
  } while (0)

namespace eplb_test {
// A stream the test created itself (never the legacy default stream).
class ScopedStream {
 public:
  ScopedStream() { (void)cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking); }
  ~ScopedStream() {
    if (s_) (void)cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};
}  // namespace eplb_test
