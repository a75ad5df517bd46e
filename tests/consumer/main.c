/* Downstream consumer of the installed eplb package: plans a small case
 * through the public C API and checks the result. Exit 0 = pass. */
#include <stdio.h>

#include "eplb/eplb.h"

int main(void) {
  /* 1 layer, 8 experts, 12 slots, 2 groups, 2 nodes, 4 GPUs. */
  const int64_t load[8] = {50, 10, 40, 5, 30, 20, 60, 15};
  int32_t phy2log[12], logcnt[8], seen[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  eplbPlanConfig_t config = EPLB_PLAN_CONFIG_INIT;
  eplbPlanInfo_t info = EPLB_PLAN_INFO_INIT;
  eplbStatus_t st;
  int i, total = 0;
  config.num_layers = 1;
  config.num_logical_experts = 8;
  config.num_physical_experts = 12;
  config.num_groups = 2;
  config.num_nodes = 2;
  config.num_ranks = 4;
  if (eplbGetVersion() != EPLB_VERSION_CODE) {
    fprintf(stderr, "consumer: header %d, library %d\n", EPLB_VERSION_CODE, eplbGetVersion());
    return 1;
  }
  st = eplbPlanCompute(&config, load, NULL, phy2log, logcnt, NULL, &info);
  if (st != EPLB_SUCCESS) {
    fprintf(stderr, "consumer: eplbPlanCompute: %s (%s)\n", eplbGetStatusString(st),
            eplbGetLastErrorDetail());
    return 1;
  }
  for (i = 0; i < 12; ++i) {
    if (phy2log[i] < 0 || phy2log[i] >= 8) return 1;
    ++seen[phy2log[i]];
  }
  for (i = 0; i < 8; ++i) {
    if (seen[i] != logcnt[i] || logcnt[i] < 1) return 1;
    total += logcnt[i];
  }
  if (total != 12 || info.policy != EPLB_POLICY_HIERARCHICAL) return 1;
  printf("consumer: ok (eplb %d, balancedness %.4f)\n", eplbGetVersion(), info.balancedness);
  return 0;
}
