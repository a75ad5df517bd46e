// Checks for the GPU benchmarks: a failed CUDA, NCCL or eplb call aborts the
// benchmark with the call, its place and the reason (a benchmark that went
// on after a failure would report a meaningless number).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>

#include "eplb/eplb.h"

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)
#define NK(x)                                                                                 \
  do {                                                                                        \
    ncclResult_t r_ = (x);                                                                    \
    if (r_ != ncclSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, ncclGetErrorString(r_)); \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)
#define EK(x)                                                                                   \
  do {                                                                                          \
    eplbStatus_t s_ = (x);                                                                      \
    if (s_ != EPLB_SUCCESS) {                                                                   \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, eplbGetLastErrorDetail()); \
      std::abort();                                                                             \
    }                                                                                           \
  } while (0)
