/* The whole loop through the C ABI only, in C99: one thread per visible GPU,
 * each with its own NCCL rank; route + count every layer, step every pass
 * (some dummy), and after every rearrangement check every weight byte against
 * the placement the state reports, and the device map against it. Also the
 * argument and state checks. Exits 77 (skip) without a GPU. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"

#define NUM_LAYERS 4
#define ROW_BYTES 200
#define PITCH 256
#define TOKENS 128
#define TOP_K 2
#define STEPS 120
#define INTERVAL 16
#define WINDOW 8

typedef struct {
  int rank;
  int num_ranks;
  ncclUniqueId id;
  int failures;
} RankArgs;

static unsigned char Pattern(int layer, int expert, int byte) {
  unsigned x = (unsigned)(layer + 1) * 2654435761u ^ (unsigned)(expert + 5) * 40503u ^
               (unsigned)byte * 2246822519u;
  x ^= x >> 13;
  x *= 0x5bd1e995u;
  return (unsigned char)(x ^ (x >> 15));
}

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "rank %d: ", a->rank);             \
      fprintf(stderr, __VA_ARGS__);                      \
      fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__); \
      a->failures++;                                     \
    }                                                    \
  } while (0)
/* A failure the loop cannot continue from without risking a hang of the
 * other ranks: report and exit the process. */
#define MUST(cond, ...)                                                                 \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "rank %d: fatal: ", a->rank);                                     \
      fprintf(stderr, __VA_ARGS__);                                                     \
      fprintf(stderr, " [%s] (%s:%d)\n", eplbGetLastErrorDetail(), __FILE__, __LINE__); \
      exit(1);                                                                          \
    }                                                                                   \
  } while (0)

/* Bytes of this rank's slots that differ from the placement's pattern. */
static long BadBytes(RankArgs* a, unsigned char* d_w[NUM_LAYERS], const int32_t* phy2log, int P,
                     int S) {
  long bad = 0;
  unsigned char* h = (unsigned char*)malloc((size_t)S * PITCH);
  int l, s, b;
  for (l = 0; l < NUM_LAYERS; ++l) {
    MUST(cudaMemcpy(h, d_w[l], (size_t)S * PITCH, cudaMemcpyDeviceToHost) == cudaSuccess,
         "cudaMemcpy");
    for (s = 0; s < S; ++s)
      for (b = 0; b < ROW_BYTES; ++b)
        bad += h[s * PITCH + b] != Pattern(l, phy2log[l * P + a->rank * S + s], b);
  }
  free(h);
  return bad;
}

static void* RankMain(void* arg) {
  RankArgs* a = (RankArgs*)arg;
  const int N = a->num_ranks, S = 3, P = 3 * N, E = 2 * N, W2 = P - E + 1;
  ncclComm_t comm;
  cudaStream_t stream;
  eplbState_t st = NULL;
  eplbStateConfig_t cfg = EPLB_STATE_CONFIG_INIT;
  eplbStateDeviceMaps_t maps = EPLB_STATE_DEVICE_MAPS_INIT;
  eplbStateStats_t stats = EPLB_STATE_STATS_INIT;
  unsigned char* d_w[NUM_LAYERS];
  int32_t* placement = (int32_t*)malloc(sizeof(int32_t) * NUM_LAYERS * P);
  int32_t* dev_map = (int32_t*)malloc(sizeof(int32_t) * NUM_LAYERS * P);
  int32_t ids[NUM_LAYERS * TOKENS * TOP_K];
  int32_t *d_ids = NULL, *d_phys = NULL;
  long rearrangements = 0;
  int l, s, b, i, step;

  MUST(cudaSetDevice(a->rank) == cudaSuccess, "cudaSetDevice");
  MUST(ncclCommInitRank(&comm, N, a->id, a->rank) == ncclSuccess, "ncclCommInitRank");
  MUST(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess, "stream");

  cfg.num_layers = NUM_LAYERS;
  cfg.num_logical_experts = E;
  cfg.num_physical_experts = P;
  cfg.num_groups = 1;
  cfg.num_nodes = 1;
  cfg.num_ranks = N;
  cfg.rank = a->rank;
  cfg.window_size = WINDOW;
  cfg.step_interval = INTERVAL;
  cfg.staging_bytes = (size_t)4 * P * PITCH;

  /* Bad arguments: statuses, no crash. */
  CHECK(eplbStateCreate(NULL, comm, &st) == EPLB_ERROR_INVALID_ARGUMENT, "NULL config");
  CHECK(eplbStateStep(NULL, 0, stream) == EPLB_ERROR_INVALID_ARGUMENT, "NULL state");
  CHECK(strstr(eplbGetLastErrorDetail(), "eplbStateStep") != NULL, "detail names the call");
  CHECK(eplbStateDestroy(NULL) == EPLB_SUCCESS, "Destroy(NULL)");

  MUST(eplbStateCreate(&cfg, comm, &st) == EPLB_SUCCESS, "eplbStateCreate");
  MUST(eplbStateGetDeviceMaps(st, &maps) == EPLB_SUCCESS, "GetDeviceMaps");
  MUST(eplbStateGetPlacement(st, placement) == EPLB_SUCCESS, "GetPlacement");
  /* The default placement: experts in order, then redundant round robin. */
  for (i = 0; i < P; ++i) CHECK(placement[i] == (i < E ? i : (i - E) % E), "default slot %d", i);

  /* A step before the weights are registered is refused, but still counted
   * (and would join the step's collectives), so that a rank that forgot to
   * register never leaves the others waiting: see eplbStateStep. */
  CHECK(eplbStateStep(st, 0, stream) == EPLB_ERROR_INVALID_USAGE, "step before registration");

  for (l = 0; l < NUM_LAYERS; ++l) {
    unsigned char* h = (unsigned char*)malloc((size_t)S * PITCH);
    eplbTensorDesc_t td;
    memset(h, 0xEE, (size_t)S * PITCH);
    for (s = 0; s < S; ++s)
      for (b = 0; b < ROW_BYTES; ++b)
        h[s * PITCH + b] = Pattern(l, placement[l * P + a->rank * S + s], b);
    MUST(cudaMalloc((void**)&d_w[l], (size_t)S * PITCH) == cudaSuccess, "cudaMalloc");
    MUST(cudaMemcpy(d_w[l], h, (size_t)S * PITCH, cudaMemcpyHostToDevice) == cudaSuccess, "copy");
    free(h);
    td.d_slots = d_w[l];
    td.bytes_per_slot = ROW_BYTES;
    td.pitch_bytes = PITCH;
    MUST(eplbStateRegisterLayer(st, l, &td, 1) == EPLB_SUCCESS, "RegisterLayer");
  }
  CHECK(eplbStateStep(st, 0, cudaStreamLegacy) == EPLB_ERROR_INVALID_ARGUMENT, "legacy stream");
  CHECK(eplbStateStep(st, 0x80, stream) == EPLB_ERROR_INVALID_ARGUMENT, "bad flags");
  stats.struct_size = 0;
  CHECK(eplbStateGetStats(st, &stats) == EPLB_ERROR_INVALID_ARGUMENT, "stats struct_size");
  stats.struct_size = sizeof(stats);
  MUST(eplbStateGetStats(st, &stats) == EPLB_SUCCESS, "GetStats");
  CHECK(stats.num_steps == 1, "the refused step is counted");

  MUST(cudaMalloc((void**)&d_ids, sizeof(ids)) == cudaSuccess, "cudaMalloc ids");
  MUST(cudaMalloc((void**)&d_phys, sizeof(ids)) == cudaSuccess, "cudaMalloc phys");
  for (step = 0; step < STEPS; ++step) {
    uint32_t flags = ((step + a->rank) % 5 == 2) ? EPLB_STEP_DUMMY : 0u;
    eplbStatus_t status;
    /* Expert (step / 30 + j) % E with j skewed towards 0: a drifting hot spot. */
    for (i = 0; i < NUM_LAYERS * TOKENS * TOP_K; ++i) {
      unsigned h = (unsigned)(i * 2654435761u) ^ (unsigned)(step * 40503u) ^ (unsigned)a->rank;
      h ^= h >> 15;
      h *= 0x2c1b3c6du;
      h ^= h >> 12;
      ids[i] = (int32_t)((step / 30 + (int)((h % 100) * (h % 100) / (10000 / E + 1))) % E);
    }
    MUST(cudaMemcpyAsync(d_ids, ids, sizeof(ids), cudaMemcpyHostToDevice, stream) == cudaSuccess,
         "copy ids");
    for (l = 0; l < NUM_LAYERS; ++l)
      MUST(eplbRouteCount(d_ids + l * TOKENS * TOP_K, EPLB_ID_INT32, TOKENS, NULL, TOP_K,
                          maps.d_log2phy + l * E * W2, maps.d_logcnt + l * E, E, P, maps.d_record,
                          d_phys + l * TOKENS * TOP_K, maps.d_load_pass + l * P,
                          maps.d_invalid_count, stream) == EPLB_SUCCESS,
           "eplbRouteCount");
    if (step % 10 == 0) flags |= EPLB_STEP_STATS;
    status = eplbStateStep(st, flags, stream);
    MUST(status == EPLB_SUCCESS, "eplbStateStep %d: %s", step, eplbGetStatusString(status));
    MUST(eplbStateGetStats(st, &stats) == EPLB_SUCCESS, "GetStats");
    CHECK(stats.num_steps == step + 2, "num_steps");
    if (stats.num_rearrangements == rearrangements) continue;
    rearrangements = stats.num_rearrangements;
    CHECK(step + 2 == INTERVAL - INTERVAL / 4 ||
              (step + 2 - (INTERVAL - INTERVAL / 4)) % INTERVAL == 0,
          "rearranged at step %d", step);
    MUST(cudaStreamSynchronize(stream) == cudaSuccess, "sync");
    MUST(eplbStateGetPlacement(st, placement) == EPLB_SUCCESS, "GetPlacement");
    MUST(cudaMemcpy(dev_map, maps.d_phy2log, sizeof(int32_t) * NUM_LAYERS * P,
                    cudaMemcpyDeviceToHost) == cudaSuccess,
         "copy map");
    CHECK(memcmp(dev_map, placement, sizeof(int32_t) * NUM_LAYERS * P) == 0, "device map");
    CHECK(BadBytes(a, d_w, placement, P, S) == 0, "weights after rearrangement at step %d", step);
    CHECK(stats.last_status == EPLB_SUCCESS, "last_status");
    CHECK(stats.last_balancedness_after >= stats.last_balancedness_before || rearrangements > 1,
          "first plan no better (%f < %f)", stats.last_balancedness_after,
          stats.last_balancedness_before);
  }
  CHECK(rearrangements == 1 + (STEPS + 1 - (INTERVAL - INTERVAL / 4)) / INTERVAL,
        "rearrangements %ld", rearrangements);
  {
    eplbStepBalance_t bal;
    /* The last pass's reduction is enqueued on `stream` (non-blocking: a
     * plain cudaMemcpy would not wait for it). */
    MUST(cudaStreamSynchronize(stream) == cudaSuccess, "sync");
    MUST(cudaMemcpy(&bal, maps.d_step_balance, sizeof(bal), cudaMemcpyDeviceToHost) == cudaSuccess,
         "copy balance");
    /* The last EPLB_STEP_STATS pass is loop step 110, step index 111 (the
     * refused step before registration counts as index 0). */
    CHECK(bal.step == 111, "stats step %ld", (long)bal.step);
    CHECK(bal.balancedness > 0.0 && bal.balancedness <= 1.0, "balancedness %f", bal.balancedness);
  }

  CHECK(eplbStateDestroy(st) == EPLB_SUCCESS, "Destroy");
  for (l = 0; l < NUM_LAYERS; ++l) cudaFree(d_w[l]);
  cudaFree(d_ids);
  cudaFree(d_phys);
  cudaStreamDestroy(stream);
  ncclCommDestroy(comm);
  free(placement);
  free(dev_map);
  return NULL;
}

int main(void) {
  int n = 0, r, failures = 0;
  ncclUniqueId id;
  pthread_t threads[64];
  RankArgs args[64];
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    printf("state_loop: no GPU, skipped\n");
    return 77;
  }
  if (n > 64) n = 64;
  if (ncclGetUniqueId(&id) != ncclSuccess) {
    fprintf(stderr, "ncclGetUniqueId failed\n");
    return 1;
  }
  for (r = 0; r < n; ++r) {
    args[r].rank = r;
    args[r].num_ranks = n;
    args[r].id = id;
    args[r].failures = 0;
    if (pthread_create(&threads[r], NULL, RankMain, &args[r]) != 0) {
      fprintf(stderr, "pthread_create failed\n");
      return 1;
    }
  }
  for (r = 0; r < n; ++r) {
    pthread_join(threads[r], NULL);
    failures += args[r].failures;
  }
  printf("state_loop: %d GPU(s), %d failure(s)\n", n, failures);
  return failures == 0 ? 0 : 1;
}
