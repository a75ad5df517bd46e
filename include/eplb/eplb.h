/*
 * eplb — expert-parallel load balancer for Mixture-of-Experts inference.
 *
 * The one public header. Plain C (C99 or later); it includes only standard
 * headers, cuda_runtime_api.h and nccl.h.
 *
 * Conventions (every function):
 *   - returns eplbStatus_t (EPLB_SUCCESS = 0) and writes results through
 *     pointers; on error the outputs are left untouched and
 *     eplbGetLastErrorDetail() names the function and the reason;
 *   - h_* are host pointers, d_* device pointers, num_* counts, *_bytes sizes;
 *   - argument order: handle, inputs, outputs, workspace, stream last;
 *   - calls that enqueue GPU work take an explicit cudaStream_t, return once
 *     the work is enqueued and never use the legacy default stream; a call
 *     that blocks the host says so in its comment;
 *   - config and result structs start with struct_size and have an
 *     initializer macro; fields are only ever appended.
 *
 * Vocabulary: L layers, E logical experts, P physical slots (all ranks), R =
 * P - E redundant slots, N ranks (one GPU each, P/N slots per rank), G expert
 * groups, M nodes. phy2log[L][P], log2phy[L][E][R+1] (-1 padded, ascending),
 * logcnt[L][E].
 */
#ifndef EPLB_EPLB_H_
#define EPLB_EPLB_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define EPLB_API __attribute__((visibility("default")))
#else
#define EPLB_API
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                   */
/* ------------------------------------------------------------------------ */

#define EPLB_VERSION_MAJOR 0
#define EPLB_VERSION_MINOR 1
#define EPLB_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define EPLB_VERSION_CODE (EPLB_VERSION_MAJOR * 10000 + EPLB_VERSION_MINOR * 100 + EPLB_VERSION_PATCH)

/* Run-time version of the linked library (EPLB_VERSION_CODE form). Host. */
EPLB_API int eplbGetVersion(void);

/* ------------------------------------------------------------------------ */
/* Status and errors                                                         */
/* ------------------------------------------------------------------------ */

/* Explicit values; never renumbered. */
typedef enum {
  EPLB_SUCCESS = 0,
  EPLB_ERROR_INVALID_ARGUMENT = 1, /* a bad value, size, pointer or shape */
  EPLB_ERROR_INVALID_USAGE = 2,    /* a call out of order or in the wrong state */
  EPLB_ERROR_CUDA = 3,             /* a CUDA runtime call failed (detail has its name) */
  EPLB_ERROR_NCCL = 4,             /* an NCCL call failed (detail has its name) */
  EPLB_ERROR_OUT_OF_MEMORY = 5,    /* host or device allocation failed */
  EPLB_ERROR_TIMEOUT = 6,          /* a wait exceeded its limit */
  EPLB_ERROR_MISMATCH = 7,         /* ranks disagree on inputs or plans */
  EPLB_ERROR_NOT_SUPPORTED = 8,    /* valid request this build or device cannot do */
  EPLB_ERROR_INTERNAL = 9          /* a bug in eplb */
} eplbStatus_t;

/* Fixed text of a status; never NULL (unknown values get "unknown status"). */
EPLB_API const char* eplbGetStatusString(eplbStatus_t status);

/* Detail of the last error raised by an eplb call on the calling thread:
 * "eplbFunction: reason". Empty string when the last call succeeded. Valid
 * until the next eplb call on this thread. Never NULL. */
EPLB_API const char* eplbGetLastErrorDetail(void);

/* ------------------------------------------------------------------------ */
/* Limits                                                                    */
/* ------------------------------------------------------------------------ */

#define EPLB_MAX_LAYERS 128
#define EPLB_MAX_LOGICAL_EXPERTS 1024
#define EPLB_MAX_PHYSICAL_EXPERTS 4096
#define EPLB_MAX_RANKS 1024
/* Each load is in [0, EPLB_MAX_LOAD) and each layer's total load too: loads
 * convert to float64 exactly. */
#define EPLB_MAX_LOAD ((int64_t)1 << 53)

/* ------------------------------------------------------------------------ */
/* Planning (host)                                                           */
/* ------------------------------------------------------------------------ */

typedef enum {
  /* Hierarchical when N % M == 0, G % M == 0 and E % G == 0; global when
   * N % M == 0 and G % M != 0; otherwise EPLB_ERROR_INVALID_ARGUMENT. */
  EPLB_POLICY_AUTO = 0,
  /* DeepSeek hierarchical: groups -> nodes, replicate per node, pack per node. */
  EPLB_POLICY_HIERARCHICAL = 1,
  /* The same procedure with one group and one node. */
  EPLB_POLICY_GLOBAL = 2,
  /* Churn-aware: starts from the old placement and moves only what pays
   * (see eplbChurnOptions_t). Needs h_old_phy2log. */
  EPLB_POLICY_CHURN_AWARE = 3
} eplbPolicy_t;

typedef enum {
  /* Slots exactly as the reference policy orders them. */
  EPLB_MIGRATION_NONE = 0,
  /* Within each GPU, an expert already on that GPU keeps its old slot. */
  EPLB_MIGRATION_PRESERVE = 1,
  /* PRESERVE, plus new GPU packs matched to old GPUs and new node packs to
   * old nodes by exact assignment so that the fewest slots change. The
   * multiset of per-rank loads equals that of the plain plan. Default. */
  EPLB_MIGRATION_FULL = 2
} eplbMigration_t;

/* Options of EPLB_POLICY_CHURN_AWARE. Fields documented where defined. */
typedef struct eplbChurnOptions eplbChurnOptions_t;

typedef struct {
  size_t struct_size; /* sizeof(eplbPlanConfig_t) */
  int32_t num_layers;
  int32_t num_logical_experts;
  int32_t num_physical_experts;
  int32_t num_groups;
  int32_t num_nodes;
  int32_t num_ranks;
  eplbPolicy_t policy;
  eplbMigration_t migration; /* used only when an old placement is given */
  /* EPLB_POLICY_CHURN_AWARE only; NULL selects the defaults. */
  const eplbChurnOptions_t* churn;
} eplbPlanConfig_t;

#define EPLB_PLAN_CONFIG_INIT \
  {sizeof(eplbPlanConfig_t), 0, 0, 0, 1, 1, 0, EPLB_POLICY_AUTO, EPLB_MIGRATION_FULL, NULL}

/* What a plan call decided (optional output). */
typedef struct {
  size_t struct_size;    /* sizeof(eplbPlanInfo_t), set by the caller */
  eplbPolicy_t policy;   /* the policy that ran (AUTO resolved) */
  int32_t skipped;       /* 1 when the policy kept the old placement */
  int64_t moved_slots;   /* (layer, slot) entries that differ from old; -1 without old */
  double balancedness;   /* of the plan on the given load */
} eplbPlanInfo_t;

#define EPLB_PLAN_INFO_INIT {sizeof(eplbPlanInfo_t), EPLB_POLICY_AUTO, 0, -1, 0.0}

/* Computes a placement of expert replicas from per-expert loads.
 *
 * h_load        [L][E] int64 host loads, each in [0, EPLB_MAX_LOAD), each
 *               layer's sum below EPLB_MAX_LOAD.
 * h_old_phy2log [L][P] host, optional (NULL): the placement in force; enables
 *               config->migration.
 * h_phy2log     [L][P] host output.
 * h_logcnt      [L][E] host output.
 * h_log2phy     [L][E][P-E+1] host output, ascending slots, -1 padded; NULL
 *               when not wanted.
 * h_info        optional output.
 *
 * Pure function of its inputs: float64 in a fixed order, no contraction, no
 * reassociation; the same on every rank and every run. Host only; blocks;
 * thread safe (no shared state). Errors: EPLB_ERROR_INVALID_ARGUMENT (a
 * shape outside the limits or the policy table, P < E, a load out of range,
 * a bad old placement), outputs untouched. */
EPLB_API eplbStatus_t eplbPlanCompute(const eplbPlanConfig_t* config, const int64_t* h_load,
                                      const int32_t* h_old_phy2log, int32_t* h_phy2log,
                                      int32_t* h_logcnt, int32_t* h_log2phy,
                                      eplbPlanInfo_t* h_info);

typedef struct {
  size_t struct_size;   /* sizeof(eplbPlanMetrics_t), set by the caller */
  double balancedness;  /* mean over layers of mean rank load / max rank load */
  double max_load_sum;  /* sum over layers of the max rank load */
  int64_t moved_slots;  /* vs h_old_phy2log; -1 when none given */
} eplbPlanMetrics_t;

#define EPLB_PLAN_METRICS_INIT {sizeof(eplbPlanMetrics_t), 0.0, 0.0, -1}

/* Scores a placement on a load: rank load = sum over the rank's slots of
 * w[e] / count[e] (count from the placement itself); a layer whose max rank
 * load is 0 counts as balancedness 1. h_layer_balancedness [L] optional.
 * Host only; blocks; thread safe. */
EPLB_API eplbStatus_t eplbPlanEvaluate(const eplbPlanConfig_t* config, const int64_t* h_load,
                                       const int32_t* h_phy2log, const int32_t* h_old_phy2log,
                                       double* h_layer_balancedness,
                                       eplbPlanMetrics_t* h_metrics);

/* ---- churn-aware policy (section owned by the replay work) ---- */
/* EPLB_CHURN_SECTION_BEGIN */
/* EPLB_CHURN_SECTION_END */

/* ---- device kernels (section owned by the kernel work) ---- */
/* EPLB_KERNELS_SECTION_BEGIN */
/* EPLB_KERNELS_SECTION_END */

/* ---- packed weight exchange (section owned by the exchange work) ---- */
/* EPLB_EXCHANGE_SECTION_BEGIN */
/* EPLB_EXCHANGE_SECTION_END */

/* ---- per-rank state machine (section owned by the state-machine work) ---- */
/* EPLB_STATE_SECTION_BEGIN */
/* EPLB_STATE_SECTION_END */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EPLB_EPLB_H_ */
