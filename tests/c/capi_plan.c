/* The status, version and planning API used from C99: proves the header is
 * C, that every entry point links from C, and checks the results (plan
 * invariants, the published DeepSeek EPLB README example, migration,
 * evaluation, error reporting with outputs untouched). Exit 0 = pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eplb/eplb.h"

static int g_failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                            \
    }                                                                          \
  } while (0)

#define CHECK_OK(call)                                                     \
  do {                                                                     \
    eplbStatus_t st_ = (call);                                             \
    if (st_ != EPLB_SUCCESS) {                                             \
      fprintf(stderr, "%s:%d: %s -> %s (%s)\n", __FILE__, __LINE__, #call, \
              eplbGetStatusString(st_), eplbGetLastErrorDetail());         \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

/* Structural invariants of any plan: each slot holds a valid expert, every
 * expert has logcnt replicas (at least one), log2phy lists exactly the
 * expert's slots ascending and -1 padded. */
static void CheckPlanInvariants(const eplbPlanConfig_t* c, const int32_t* phy2log,
                                const int32_t* logcnt, const int32_t* log2phy) {
  int32_t L = c->num_layers, E = c->num_logical_experts, P = c->num_physical_experts;
  int32_t W = P - E + 1;
  int32_t l, e, p, k;
  int32_t* seen = (int32_t*)calloc((size_t)E, sizeof(int32_t));
  if (seen == NULL) {
    ++g_failures;
    return;
  }
  for (l = 0; l < L; ++l) {
    int64_t total = 0;
    memset(seen, 0, (size_t)E * sizeof(int32_t));
    for (p = 0; p < P; ++p) {
      int32_t x = phy2log[(size_t)l * P + p];
      CHECK(x >= 0 && x < E);
      if (x >= 0 && x < E) ++seen[x];
    }
    for (e = 0; e < E; ++e) {
      int32_t cnt = logcnt[(size_t)l * E + e];
      CHECK(cnt >= 1 && cnt == seen[e]);
      total += cnt;
      if (log2phy != NULL) {
        const int32_t* row = log2phy + ((size_t)l * E + e) * W;
        for (k = 0; k < W; ++k) {
          if (k < cnt) {
            CHECK(row[k] >= 0 && row[k] < P && phy2log[(size_t)l * P + row[k]] == e);
            if (k > 0) CHECK(row[k] > row[k - 1]);
          } else {
            CHECK(row[k] == -1);
          }
        }
      }
    }
    CHECK(total == P);
  }
  free(seen);
}

static int64_t CountDiff(const int32_t* a, const int32_t* b, size_t n) {
  int64_t d = 0;
  size_t i;
  for (i = 0; i < n; ++i) d += a[i] != b[i];
  return d;
}

/* Per layer and GPU, the multiset of experts (as counts). */
static int SameExpertsPerGpu(const eplbPlanConfig_t* c, const int32_t* a, const int32_t* b) {
  int32_t L = c->num_layers, P = c->num_physical_experts, N = c->num_ranks;
  int32_t S = P / N, l, g, i, j;
  for (l = 0; l < L; ++l) {
    for (g = 0; g < N; ++g) {
      const int32_t* x = a + (size_t)l * P + (size_t)g * S;
      const int32_t* y = b + (size_t)l * P + (size_t)g * S;
      for (i = 0; i < S; ++i) {
        int cx = 0, cy = 0;
        for (j = 0; j < S; ++j) {
          cx += x[j] == x[i];
          cy += y[j] == x[i];
        }
        if (cx != cy) return 0;
      }
    }
  }
  return 1;
}

static void TestVersionAndStatus(void) {
  int s;
  CHECK(eplbGetVersion() == EPLB_VERSION_CODE);
  for (s = EPLB_SUCCESS; s <= EPLB_ERROR_INTERNAL; ++s) {
    const char* text = eplbGetStatusString((eplbStatus_t)s);
    CHECK(text != NULL && text[0] != '\0');
    CHECK(strcmp(text, "unknown status") != 0);
    if (s > 0) CHECK(strcmp(text, eplbGetStatusString((eplbStatus_t)(s - 1))) != 0);
  }
  CHECK(strcmp(eplbGetStatusString((eplbStatus_t)1234), "unknown status") == 0);
  CHECK(eplbGetLastErrorDetail() != NULL);
}

/* The worked example of the DeepSeek EPLB README. Its loads and its
 * published phy2log are the reference output recorded in
 * shared/conformance/01_readme_example.eplb (blocks `weights`, `phy2log`,
 * `objective`). */
static void TestReadmeExample(void) {
  static const int64_t load[2 * 12] = {90, 132, 40,  61, 104, 165, 39,  4,   73,  56, 183, 86,
                                       20, 107, 104, 64, 19,  197, 187, 157, 172, 86, 16,  27};
  static const int32_t expected[2 * 16] = {5, 6,  5, 7, 8, 4,  3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                                           7, 10, 6, 8, 6, 11, 8, 9, 2,  4, 5,  1, 5, 0, 3,  1};
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  int32_t phy2log[2 * 16], logcnt[2 * 12], log2phy[2 * 12 * 5];
  double layer_bal[2];
  eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
  eplbPlanMetrics_t metrics = EPLB_PLAN_METRICS_INIT;
  config.num_layers = 2;
  config.num_logical_experts = 12;
  config.num_physical_experts = 16;
  config.num_groups = 4;
  config.num_nodes = 2;
  config.num_ranks = 8;

  CHECK_OK(eplbPlanCompute(&config, load, NULL, phy2log, logcnt, log2phy, &info));
  CHECK(memcmp(phy2log, expected, sizeof(expected)) == 0);
  CHECK(info.policy == EPLB_POLICY_HIERARCHICAL);
  CHECK(info.moved_slots == -1);
  CHECK(info.skipped == 0);
  CheckPlanInvariants(&config, phy2log, logcnt, log2phy);
  CHECK(strcmp(eplbGetLastErrorDetail(), "") == 0);

  CHECK_OK(eplbPlanEvaluate(&config, load, phy2log, NULL, layer_bal, &metrics));
  CHECK(fabs(metrics.max_load_sum - 335.5) <= 1e-9 * 335.5);
  CHECK(fabs(metrics.balancedness - 0.81636914327548027) <= 1e-9);
  CHECK(fabs(0.5 * (layer_bal[0] + layer_bal[1]) - metrics.balancedness) <= 1e-12);
  CHECK(fabs(info.balancedness - metrics.balancedness) <= 1e-12);
  CHECK(metrics.moved_slots == -1);

  /* Without log2phy and info: same placement. */
  {
    int32_t p2[2 * 16], c2[2 * 12];
    CHECK_OK(eplbPlanCompute(&config, load, NULL, p2, c2, NULL, NULL));
    CHECK(memcmp(p2, expected, sizeof(expected)) == 0);
    CHECK(memcmp(c2, logcnt, sizeof(logcnt)) == 0);
  }
}

/* A DeepSeek-V3-shaped case with a pseudo-random skewed load; an old
 * placement from a perturbed load exercises every migration mode. */
static void TestMigration(void) {
  enum { L = 4, E = 256, P = 288, G = 8, M = 4, N = 32 };
  static int64_t load[L * E], old_load[L * E];
  static int32_t old[L * P], plain[L * P], mig[3][L * P], logcnt[L * E],
      log2phy[L * E * (P - E + 1)];
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  eplbPlanMetrics_t plain_m = EPLB_PLAN_METRICS_INIT;
  uint64_t x = 88172645463325252ull;
  int i, k;
  config.num_layers = L;
  config.num_logical_experts = E;
  config.num_physical_experts = P;
  config.num_groups = G;
  config.num_nodes = M;
  config.num_ranks = N;
  for (i = 0; i < L * E; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    load[i] = (int64_t)(100000.0 / (1.0 + (double)(x % 997)) * (1.0 + (double)(i % 7)));
    old_load[i] = load[i] + (int64_t)(x % 5000);
  }
  CHECK_OK(eplbPlanCompute(&config, old_load, NULL, old, logcnt, NULL, NULL));
  CHECK_OK(eplbPlanCompute(&config, load, NULL, plain, logcnt, log2phy, NULL));
  CheckPlanInvariants(&config, plain, logcnt, log2phy);
  CHECK_OK(eplbPlanEvaluate(&config, load, plain, NULL, NULL, &plain_m));
  for (k = 0; k < 3; ++k) {
    eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
    eplbPlanMetrics_t m = EPLB_PLAN_METRICS_INIT;
    config.migration = (eplbMigration_t)k;
    CHECK_OK(eplbPlanCompute(&config, load, old, mig[k], logcnt, log2phy, &info));
    CheckPlanInvariants(&config, mig[k], logcnt, log2phy);
    CHECK(info.moved_slots == CountDiff(mig[k], old, (size_t)L * P));
    CHECK_OK(eplbPlanEvaluate(&config, load, mig[k], old, NULL, &m));
    CHECK(m.moved_slots == info.moved_slots);
    /* Every mode keeps the plan's per-rank loads, so its quality. */
    CHECK(fabs(m.balancedness - plain_m.balancedness) <= 1e-12);
    CHECK(fabs(m.max_load_sum - plain_m.max_load_sum) <= 1e-9 * plain_m.max_load_sum);
  }
  CHECK(memcmp(mig[0], plain, sizeof(plain)) == 0); /* NONE is the plain plan */
  CHECK(SameExpertsPerGpu(&config, mig[1], plain)); /* PRESERVE only reorders a GPU */
  CHECK(CountDiff(mig[1], old, (size_t)L * P) <= CountDiff(plain, old, (size_t)L * P));
  CHECK(CountDiff(mig[2], old, (size_t)L * P) <= CountDiff(mig[1], old, (size_t)L * P));
  config.migration = EPLB_MIGRATION_FULL;
}

static void TestInvalidCalls(void) {
  static const int64_t load[2 * 12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                       1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  int32_t phy2log[2 * 16], logcnt[2 * 12];
  int64_t bad_load[2 * 12];
  eplbPlanMetrics_t metrics = EPLB_PLAN_METRICS_INIT;
  eplbStatus_t st;
  int i;
  const char* detail;
  config.num_layers = 2;
  config.num_logical_experts = 12;
  config.num_physical_experts = 16;
  config.num_groups = 4;
  config.num_nodes = 2;
  config.num_ranks = 8;
  for (i = 0; i < 2 * 16; ++i) phy2log[i] = -7;

  /* P < E. */
  config.num_physical_experts = 8;
  st = eplbPlanCompute(&config, load, NULL, phy2log, logcnt, NULL, NULL);
  CHECK(st == EPLB_ERROR_INVALID_ARGUMENT);
  detail = eplbGetLastErrorDetail();
  CHECK(strncmp(detail, "eplbPlanCompute", 15) == 0 && strlen(detail) > 17);
  for (i = 0; i < 2 * 16; ++i) CHECK(phy2log[i] == -7);
  config.num_physical_experts = 16;

  /* A load out of range. */
  memcpy(bad_load, load, sizeof(load));
  bad_load[5] = -1;
  st = eplbPlanCompute(&config, bad_load, NULL, phy2log, logcnt, NULL, NULL);
  CHECK(st == EPLB_ERROR_INVALID_ARGUMENT);
  CHECK(strlen(eplbGetLastErrorDetail()) > 0);
  for (i = 0; i < 2 * 16; ++i) CHECK(phy2log[i] == -7);

  /* NULL output, then NULL config. */
  CHECK(eplbPlanCompute(&config, load, NULL, NULL, logcnt, NULL, NULL) ==
        EPLB_ERROR_INVALID_ARGUMENT);
  CHECK(eplbPlanCompute(NULL, load, NULL, phy2log, logcnt, NULL, NULL) ==
        EPLB_ERROR_INVALID_ARGUMENT);

  /* An old placement holding an expert out of range. */
  {
    int32_t old[2 * 16];
    for (i = 0; i < 2 * 16; ++i) old[i] = i % 12;
    old[3] = 12;
    CHECK(eplbPlanCompute(&config, load, old, phy2log, logcnt, NULL, NULL) ==
          EPLB_ERROR_INVALID_ARGUMENT);
    for (i = 0; i < 2 * 16; ++i) CHECK(phy2log[i] == -7);
  }

  /* Evaluate: a placement entry out of range; metrics untouched. */
  for (i = 0; i < 2 * 16; ++i) phy2log[i] = i % 12;
  phy2log[0] = 99;
  metrics.balancedness = -5.0;
  CHECK(eplbPlanEvaluate(&config, load, phy2log, NULL, NULL, &metrics) ==
        EPLB_ERROR_INVALID_ARGUMENT);
  CHECK(strncmp(eplbGetLastErrorDetail(), "eplbPlanEvaluate", 16) == 0);
  CHECK(metrics.balancedness == -5.0);

  /* A success clears the detail. */
  phy2log[0] = 0;
  CHECK_OK(eplbPlanEvaluate(&config, load, phy2log, NULL, NULL, &metrics));
  CHECK(strcmp(eplbGetLastErrorDetail(), "") == 0);
  CHECK(metrics.balancedness > 0.0 && metrics.balancedness <= 1.0);
}

/* The process-wide early-launch mode, from C: every mode set and read
 * back, refused values leave it alone. Host only. */
static void TestEarlyLaunchSetting(void) {
  int before = -1, mode = -1;
  const int modes[] = {EPLB_EARLY_LAUNCH_OFF, EPLB_EARLY_LAUNCH_AUTO, EPLB_EARLY_LAUNCH_ON};
  size_t i;
  CHECK_OK(eplbGetEarlyLaunch(&before));
  CHECK(before == EPLB_EARLY_LAUNCH_OFF || before == EPLB_EARLY_LAUNCH_ON ||
        before == EPLB_EARLY_LAUNCH_AUTO);
  for (i = 0; i < sizeof(modes) / sizeof(modes[0]); ++i) {
    CHECK_OK(eplbSetEarlyLaunch(modes[i]));
    CHECK_OK(eplbGetEarlyLaunch(&mode));
    CHECK(mode == modes[i]);
  }
  CHECK(eplbSetEarlyLaunch(3) == EPLB_ERROR_INVALID_ARGUMENT);
  CHECK_OK(eplbGetEarlyLaunch(&mode));
  CHECK(mode == EPLB_EARLY_LAUNCH_ON);
  CHECK(eplbGetEarlyLaunch(NULL) == EPLB_ERROR_INVALID_ARGUMENT);
  CHECK_OK(eplbSetEarlyLaunch(before));
}

int main(void) {
  TestVersionAndStatus();
  TestEarlyLaunchSetting();
  TestReadmeExample();
  TestMigration();
  TestInvalidCalls();
  if (g_failures != 0) {
    fprintf(stderr, "capi_plan: %d check(s) failed\n", g_failures);
    return 1;
  }
  printf("capi_plan: all checks passed\n");
  return 0;
}
