// Shared machinery of the C shim: every entry point runs its body through
// eplb::capi::Guard, which opens an NVTX range named after the call, clears
// the thread-local detail, and turns any exception into a status and a
// detail "eplbFunction: reason". No C++ exception crosses the ABI.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <nvtx3/nvToolsExt.h>

#include <new>
#include <string>

#include "eplb/eplb.h"
#include "error.h"

namespace eplb {
namespace capi {

static_assert(static_cast<int>(Status::kSuccess) == EPLB_SUCCESS, "status values");
static_assert(static_cast<int>(Status::kInvalidArgument) == EPLB_ERROR_INVALID_ARGUMENT, "");
static_assert(static_cast<int>(Status::kInvalidUsage) == EPLB_ERROR_INVALID_USAGE, "");
static_assert(static_cast<int>(Status::kCuda) == EPLB_ERROR_CUDA, "");
static_assert(static_cast<int>(Status::kNccl) == EPLB_ERROR_NCCL, "");
static_assert(static_cast<int>(Status::kOutOfMemory) == EPLB_ERROR_OUT_OF_MEMORY, "");
static_assert(static_cast<int>(Status::kTimeout) == EPLB_ERROR_TIMEOUT, "");
static_assert(static_cast<int>(Status::kMismatch) == EPLB_ERROR_MISMATCH, "");
static_assert(static_cast<int>(Status::kNotSupported) == EPLB_ERROR_NOT_SUPPORTED, "");
static_assert(static_cast<int>(Status::kInternal) == EPLB_ERROR_INTERNAL, "");

void SetLastError(const char* function, const std::string& reason);
void ClearLastError();
const char* LastErrorDetail();

// NVTX domain "eplb"; one range per API call, nested ranges per phase.
nvtxDomainHandle_t NvtxDomain();

class NvtxRange {
 public:
  explicit NvtxRange(const char* name);
  ~NvtxRange();
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

template <typename F>
eplbStatus_t Guard(const char* function, F&& body) {
  NvtxRange range(function);
  ClearLastError();
  try {
    body();
    return EPLB_SUCCESS;
  } catch (const Error& e) {
    SetLastError(function, e.what());
    return static_cast<eplbStatus_t>(e.status());
  } catch (const std::bad_alloc&) {
    SetLastError(function, "host allocation failed");
    return EPLB_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    SetLastError(function, std::string("internal error: ") + e.what());
    return EPLB_ERROR_INTERNAL;
  } catch (...) {
    SetLastError(function, "internal error: unknown exception");
    return EPLB_ERROR_INTERNAL;
  }
}

// Checks a CUDA call; throws kCuda (kOutOfMemory for allocation failures)
// naming the call, the file position and the CUDA error name.
void ThrowCuda(cudaError_t err, const char* expr, const char* file, int line);
void ThrowNccl(ncclResult_t res, const char* expr, const char* file, int line);

// Calls that enqueue GPU work never take the legacy default stream (it would
// serialise with every other stream of the process, collectives included):
// kInvalidArgument naming `stream`.
void CheckStream(cudaStream_t stream);

}  // namespace capi
}  // namespace eplb

#define EPLB_CUDA_CHECK(expr)                                                                    \
  do {                                                                                           \
    cudaError_t eplb_err_ = (expr);                                                              \
    if (eplb_err_ != cudaSuccess) ::eplb::capi::ThrowCuda(eplb_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define EPLB_NCCL_CHECK(expr)                                                                    \
  do {                                                                                           \
    ncclResult_t eplb_res_ = (expr);                                                             \
    if (eplb_res_ != ncclSuccess) ::eplb::capi::ThrowNccl(eplb_res_, #expr, __FILE__, __LINE__); \
  } while (0)

// Null-pointer check of an argument, naming it.
#define EPLB_CHECK_NOT_NULL(ptr) EPLB_CHECK_ARG((ptr) != nullptr, "%s is NULL", #ptr)
