#include "api_common.h"

#include <cstring>

namespace eplb {
namespace capi {
namespace {
thread_local std::string t_last_error;
}  // namespace

void SetLastError(const char* function, const std::string& reason) {
  t_last_error = std::string(function) + ": " + reason;
}

void ClearLastError() {
  t_last_error.clear();
}

const char* LastErrorDetail() {
  return t_last_error.c_str();
}

nvtxDomainHandle_t NvtxDomain() {
  static nvtxDomainHandle_t domain = nvtxDomainCreateA("eplb");
  return domain;
}

NvtxRange::NvtxRange(const char* name) {
  nvtxEventAttributes_t attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.version = NVTX_VERSION;
  attr.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  attr.messageType = NVTX_MESSAGE_TYPE_ASCII;
  attr.message.ascii = name;
  nvtxDomainRangePushEx(NvtxDomain(), &attr);
}

NvtxRange::~NvtxRange() {
  nvtxDomainRangePop(NvtxDomain());
}

void CheckStream(cudaStream_t stream) {
  EPLB_CHECK_ARG(stream != nullptr && stream != cudaStreamLegacy,
                 "stream is the legacy default stream; pass a created stream or "
                 "cudaStreamPerThread");
}

void ThrowCuda(cudaError_t err, const char* expr, const char* file, int line) {
  (void)cudaGetLastError();  // clear a sticky-free error so later calls start clean
  Status s = (err == cudaErrorMemoryAllocation) ? Status::kOutOfMemory : Status::kCuda;
  const char* base = std::strrchr(file, '/');
  Throw(s, "%s failed: %s (%s) at %s:%d", expr, cudaGetErrorName(err), cudaGetErrorString(err),
        base ? base + 1 : file, line);
}

void ThrowNccl(ncclResult_t res, const char* expr, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  Throw(Status::kNccl, "%s failed: %s at %s:%d", expr, ncclGetErrorString(res),
        base ? base + 1 : file, line);
}

}  // namespace capi
}  // namespace eplb

extern "C" {

EPLB_API int eplbGetVersion(void) {
  return EPLB_VERSION_CODE;
}

EPLB_API const char* eplbGetStatusString(eplbStatus_t status) {
  switch (status) {
    case EPLB_SUCCESS:
      return "success";
    case EPLB_ERROR_INVALID_ARGUMENT:
      return "invalid argument";
    case EPLB_ERROR_INVALID_USAGE:
      return "invalid usage";
    case EPLB_ERROR_CUDA:
      return "CUDA error";
    case EPLB_ERROR_NCCL:
      return "NCCL error";
    case EPLB_ERROR_OUT_OF_MEMORY:
      return "out of memory";
    case EPLB_ERROR_TIMEOUT:
      return "timeout";
    case EPLB_ERROR_MISMATCH:
      return "ranks disagree";
    case EPLB_ERROR_NOT_SUPPORTED:
      return "not supported";
    case EPLB_ERROR_INTERNAL:
      return "internal error";
  }
  return "unknown status";
}

EPLB_API const char* eplbGetLastErrorDetail(void) {
  return eplb::capi::LastErrorDetail();
}

}  // extern "C"
