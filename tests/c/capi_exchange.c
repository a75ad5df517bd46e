/* The exchange API called from C: argument validation and staging queries
 * (no GPU needed), then, where a GPU is present, a one-rank exchange (local
 * moves through staging) checked byte for byte. Exit 0 pass, 1 fail. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"

static int g_failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      g_failures++;                                                            \
    }                                                                          \
  } while (0)

/* The status and that the detail names the function and `needle`. */
static void ExpectError(eplbStatus_t got, eplbStatus_t want, const char* function,
                        const char* needle) {
  const char* detail = eplbGetLastErrorDetail();
  CHECK(got == want);
  CHECK(detail != NULL && strstr(detail, function) == detail);
  if (needle != NULL) CHECK(strstr(detail, needle) != NULL);
  if (got != want || (needle != NULL && strstr(detail, needle) == NULL))
    fprintf(stderr, "  status %d (want %d), detail: %s\n", (int)got, (int)want, detail);
}

static size_t Pad16(size_t v) {
  return (v + 15) / 16 * 16;
}

static void TestQuery(void) {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  size_t tensors[2][EPLB_EXCHANGE_MAX_TENSORS];
  size_t min_bytes = 12345, dev_bytes = 6789;
  int32_t old_p[8] = {0, 1, 2, 3, 0, 1, 2, 3};
  int32_t new_p[8] = {2, 1, 0, 3, 0, 1, 2, 3};
  size_t padded;
  eplbStatus_t s;
  memset(tensors, 0, sizeof(tensors));
  tensors[0][0] = 100;
  tensors[0][1] = 40;
  tensors[0][2] = 3;
  tensors[1][0] = 7;
  cfg.num_layers = 2;
  cfg.num_physical_experts = 4;
  cfg.num_ranks = 2;
  cfg.rank = 0;

  s = eplbExchangeStagingQuery(NULL, &tensors[0][0], NULL, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "config");
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, NULL, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "h_min_staging_bytes");
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], old_p, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "both");
  cfg.struct_size = 3;
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "struct_size");
  cfg.struct_size = sizeof(cfg);
  cfg.num_physical_experts = 5;
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "multiple");
  cfg.num_physical_experts = 4;
  cfg.rank = 2;
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "rank");
  cfg.rank = 1;
  tensors[1][0] = 0;
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "h_tensor_bytes[1]");
  tensors[1][0] = 7;
  new_p[5] = 9; /* outside [0, P) */
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], old_p, new_p, &min_bytes, NULL);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeStagingQuery", "h_new_phy2log[1][1]");
  CHECK(min_bytes == 12345 && dev_bytes == 6789); /* outputs untouched on error */
  new_p[5] = 1;

  /* Worst case: P bundles of the largest layer. */
  padded = Pad16(100) + Pad16(40) + Pad16(3);
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], NULL, NULL, &min_bytes, &dev_bytes);
  CHECK(s == EPLB_SUCCESS);
  CHECK(min_bytes == 4 * padded);
  CHECK(dev_bytes > min_bytes);
  /* Exact: layer 0 swaps experts 0 and 2 across the ranks, so each rank
   * sends one bundle and receives one; layer 1 moves nothing. */
  s = eplbExchangeStagingQuery(&cfg, &tensors[0][0], old_p, new_p, &min_bytes, &dev_bytes);
  CHECK(s == EPLB_SUCCESS);
  CHECK(min_bytes == 2 * padded);
  CHECK(strlen(eplbGetLastErrorDetail()) == 0);
}

static void TestHandleErrors(void) {
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  eplbExchange_t ex = (eplbExchange_t)0x1;
  eplbTensorDesc_t t = {NULL, 16, 16};
  int32_t p[2] = {0, 1};
  eplbStatus_t s;
  cfg.num_layers = 1;
  cfg.num_physical_experts = 2;
  cfg.num_ranks = 1;
  cfg.staging_bytes = 0;
  s = eplbExchangeCreate(&cfg, NULL, &ex);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeCreate", "staging_bytes");
  cfg.staging_bytes = 1024;
  s = eplbExchangeCreate(&cfg, NULL, &ex);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeCreate", "comm");
  s = eplbExchangeCreate(NULL, NULL, &ex);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeCreate", "config");
  CHECK(ex == (eplbExchange_t)0x1);
  s = eplbExchangeRegisterLayer(NULL, 0, &t, 1, 2);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeRegisterLayer", "ex");
  s = eplbExchangeRun(NULL, p, p, 0, 1, NULL, (cudaStream_t)0);
  ExpectError(s, EPLB_ERROR_INVALID_ARGUMENT, "eplbExchangeRun", "ex");
  CHECK(eplbExchangeDestroy(NULL) == EPLB_SUCCESS);
}

/* One rank, one device: every move is local and goes through staging. */
static int TestOneRank(void) {
  enum { kSlots = 6, kT0 = 1000, kT1 = 37, kPitch1 = 68 };
  int n = 0, dev = 0;
  ncclComm_t comm;
  eplbExchangeConfig_t cfg = EPLB_EXCHANGE_CONFIG_INIT;
  eplbExchange_t ex = NULL;
  eplbTensorDesc_t t[2];
  eplbExchangeStats_t stats = EPLB_EXCHANGE_STATS_INIT;
  size_t tb[EPLB_EXCHANGE_MAX_TENSORS];
  int32_t old_p[kSlots] = {0, 1, 2, 3, 4, 5};
  int32_t new_p[kSlots] = {5, 1, 0, 0, 3, 2}; /* swaps, a duplicate, a kept slot */
  unsigned char *d0 = NULL, *d1 = NULL;
  unsigned char h0[kSlots * kT0], h1[kSlots * kPitch1];
  size_t min_bytes = 0;
  cudaStream_t stream;
  int s, e, b;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    printf("one-rank exchange skipped: no GPU\n");
    return 0;
  }
  CHECK(ncclCommInitAll(&comm, 1, &dev) == ncclSuccess);
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  memset(tb, 0, sizeof(tb));
  tb[0] = kT0;
  tb[1] = kT1;
  cfg.num_layers = 1;
  cfg.num_physical_experts = kSlots;
  cfg.num_ranks = 1;
  CHECK(eplbExchangeStagingQuery(&cfg, tb, old_p, new_p, &min_bytes, NULL) == EPLB_SUCCESS);
  cfg.staging_bytes = min_bytes;
  CHECK(eplbExchangeCreate(&cfg, comm, &ex) == EPLB_SUCCESS);
  CHECK(cudaMalloc((void**)&d0, sizeof(h0)) == cudaSuccess);
  CHECK(cudaMalloc((void**)&d1, sizeof(h1)) == cudaSuccess);
  for (s = 0; s < kSlots; ++s) {
    for (b = 0; b < kT0; ++b) h0[s * kT0 + b] = (unsigned char)(old_p[s] * 31 + b);
    for (b = 0; b < kPitch1; ++b) h1[s * kPitch1 + b] = (unsigned char)(old_p[s] * 7 + 3 * b + 1);
  }
  CHECK(cudaMemcpy(d0, h0, sizeof(h0), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(d1, h1, sizeof(h1), cudaMemcpyHostToDevice) == cudaSuccess);
  t[0].d_slots = d0;
  t[0].bytes_per_slot = kT0;
  t[0].pitch_bytes = kT0;
  t[1].d_slots = d1;
  t[1].bytes_per_slot = kT1;
  t[1].pitch_bytes = kPitch1;
  ExpectError(eplbExchangeRegisterLayer(ex, 0, t, 2, kSlots - 1), EPLB_ERROR_INVALID_ARGUMENT,
              "eplbExchangeRegisterLayer", "num_local_slots");
  t[1].pitch_bytes = kT1 - 1;
  ExpectError(eplbExchangeRegisterLayer(ex, 0, t, 2, kSlots), EPLB_ERROR_INVALID_ARGUMENT,
              "eplbExchangeRegisterLayer", "pitch_bytes");
  t[1].pitch_bytes = kPitch1;
  CHECK(eplbExchangeRegisterLayer(ex, 0, t, 2, kSlots) == EPLB_SUCCESS);
  CHECK(eplbExchangeRun(ex, old_p, new_p, 0, 1, &stats, stream) == EPLB_SUCCESS);
  CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
  CHECK(stats.slots_copied_local == 5 && stats.slots_kept == 1 && stats.bytes_sent == 0);
  CHECK(cudaMemcpy(h0, d0, sizeof(h0), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(cudaMemcpy(h1, d1, sizeof(h1), cudaMemcpyDeviceToHost) == cudaSuccess);
  for (s = 0; s < kSlots; ++s) {
    e = new_p[s];
    for (b = 0; b < kT0; ++b) CHECK(h0[s * kT0 + b] == (unsigned char)(e * 31 + b));
    for (b = 0; b < kT1; ++b) CHECK(h1[s * kPitch1 + b] == (unsigned char)(e * 7 + 3 * b + 1));
    /* Bytes between rows (pitch padding) are not eplb's: left as they were. */
    for (b = kT1; b < kPitch1; ++b)
      CHECK(h1[s * kPitch1 + b] == (unsigned char)(old_p[s] * 7 + 3 * b + 1));
  }
  CHECK(eplbExchangeDestroy(ex) == EPLB_SUCCESS);
  cudaFree(d0);
  cudaFree(d1);
  cudaStreamDestroy(stream);
  ncclCommDestroy(comm);
  return 0;
}

int main(void) {
  TestQuery();
  TestHandleErrors();
  TestOneRank();
  if (g_failures > 0) {
    fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("capi_exchange: all checks passed\n");
  return 0;
}
