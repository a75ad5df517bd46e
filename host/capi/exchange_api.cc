// C shim of the packed exchange: argument checks and status codes; the work
// is in host/cuda/exchange.cc and host/transfer_plan.cc.
#include <memory>
#include <vector>

#include "api_common.h"
#include "cuda/exchange.h"
#include "transfer_plan.h"

extern "C" {

EPLB_API eplbStatus_t eplbExchangeStagingQuery(
    const eplbExchangeConfig_t* config, const size_t* h_tensor_bytes, const int32_t* h_old_phy2log,
    const int32_t* h_new_phy2log, size_t* h_min_staging_bytes, size_t* h_device_bytes) {
  return eplb::capi::Guard("eplbExchangeStagingQuery", [&] {
    EPLB_CHECK_NOT_NULL(config);
    EPLB_CHECK_NOT_NULL(h_tensor_bytes);
    EPLB_CHECK_NOT_NULL(h_min_staging_bytes);
    EPLB_CHECK_ARG((h_old_phy2log == nullptr) == (h_new_phy2log == nullptr),
                   "h_old_phy2log and h_new_phy2log must be both NULL or both given");
    const eplb::TransferShape shape = eplb::cuda::ValidateExchangeConfig(*config, false);
    const int32_t L = config->num_layers;
    std::vector<size_t> padded(static_cast<size_t>(L));
    for (int32_t l = 0; l < L; ++l) {
      const size_t* row = h_tensor_bytes + static_cast<size_t>(l) * EPLB_EXCHANGE_MAX_TENSORS;
      bool any = false;
      for (int32_t t = 0; t < EPLB_EXCHANGE_MAX_TENSORS; ++t) any = any || row[t] > 0;
      EPLB_CHECK_ARG(any, "h_tensor_bytes[%d][*] has no nonzero tensor size", l);
      padded[static_cast<size_t>(l)] = eplb::PaddedBundleBytes(row, EPLB_EXCHANGE_MAX_TENSORS);
    }
    size_t min_bytes =
        h_old_phy2log ? eplb::MinStagingBytes(shape, L, h_old_phy2log, h_new_phy2log, padded.data())
                      : eplb::WorstCaseStagingBytes(shape, L, padded.data());
    // A budget of 0 cannot be allocated; a plan that moves nothing still
    // needs a valid (tiny) staging buffer.
    if (min_bytes == 0) min_bytes = eplb::kExchangeRowAlign;
    const size_t device_bytes = eplb::cuda::ExchangeDeviceBytes(L, config->num_physical_experts,
                                                                config->num_ranks, min_bytes);
    *h_min_staging_bytes = min_bytes;
    if (h_device_bytes) *h_device_bytes = device_bytes;
  });
}

EPLB_API eplbStatus_t eplbExchangeCreate(const eplbExchangeConfig_t* config, ncclComm_t comm,
                                         eplbExchange_t* out) {
  return eplb::capi::Guard("eplbExchangeCreate", [&] {
    EPLB_CHECK_NOT_NULL(config);
    EPLB_CHECK_NOT_NULL(out);
    // Argument checks that need no GPU come before any CUDA or NCCL call.
    eplb::cuda::ValidateExchangeConfig(*config, true);
    EPLB_CHECK_NOT_NULL(comm);
    auto ex = std::make_unique<eplbExchange_s>();
    ex->impl = std::make_unique<eplb::cuda::Exchange>(*config, comm);
    *out = ex.release();
  });
}

EPLB_API eplbStatus_t eplbExchangeRegisterLayer(eplbExchange_t ex, int32_t layer,
                                                const eplbTensorDesc_t* h_tensors,
                                                int32_t num_tensors, int32_t num_local_slots) {
  return eplb::capi::Guard("eplbExchangeRegisterLayer", [&] {
    EPLB_CHECK_NOT_NULL(ex);
    ex->impl->RegisterLayer(layer, h_tensors, num_tensors, num_local_slots);
  });
}

EPLB_API eplbStatus_t eplbExchangeRun(eplbExchange_t ex, const int32_t* h_old_phy2log,
                                      const int32_t* h_new_phy2log, int32_t first_layer,
                                      int32_t num_layers, eplbExchangeStats_t* h_stats,
                                      cudaStream_t stream) {
  return eplb::capi::Guard("eplbExchangeRun", [&] {
    EPLB_CHECK_NOT_NULL(ex);
    // Like a NULL handle, refused before the agreement check (the other
    // ranks then wait in it: a caller bug, reported here).
    eplb::capi::CheckStream(stream);
    ex->impl->Run(h_old_phy2log, h_new_phy2log, first_layer, num_layers, h_stats, stream);
  });
}

EPLB_API eplbStatus_t eplbExchangeDestroy(eplbExchange_t ex) {
  return eplb::capi::Guard("eplbExchangeDestroy", [&] { delete ex; });
}

}  // extern "C"
