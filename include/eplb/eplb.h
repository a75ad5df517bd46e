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
 *     initializer macro; fields are only ever appended, and every call
 *     accepts a struct_size of at least its header's sizeof (a caller built
 *     against a later header), reading and writing only the fields it knows
 *     and leaving struct_size as the caller set it.
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
/* Options of EPLB_POLICY_CHURN_AWARE. The policy starts from h_old_phy2log
 * (required), forecasts the next window from h_load_estimate and moves only
 * what pays: per layer it builds, from the fresh base-policy plan on the
 * forecast, three candidate placements: that plan relabelled onto the old
 * placement, and two sticky packings of its replica counts that keep
 * replicas on ranks already holding them (tight: up to the fresh plan's max
 * rank load; loose: up to (1 + sticky_slack) times it). It takes them across
 * all layers in order of predicted balancedness gain per new (layer, rank,
 * expert) holding, under a budget;
 * it keeps the old placement when the total predicted gain is below
 * min_gain (eplbPlanInfo_t.skipped = 1). A hierarchical layer whose old
 * placement splits a group over nodes is always replanned (outside the
 * budget). Deterministic; the same on every rank given the same inputs. */
struct eplbChurnOptions {
  size_t struct_size; /* sizeof(eplbChurnOptions_t) */
  /* [L][E] host forecast of the next window's per-expert load, finite, >= 0
   * and below 9.0e15 (about 2^53; only ratios matter, so scale it down if an
   * accumulator grows that large); NULL uses h_load. Maintain it with
   * eplbLoadEstimateUpdate once per step from that step's logical load (with
   * decay < 1 it stays below max load / (1 - decay)). */
  const double* h_load_estimate;
  /* At most floor(max_moved_fraction * L * P) new (layer, rank, expert)
   * holdings per call; in [0, 1]. 1 means unlimited and starts every layer
   * from the fresh plan (use it for the first rearrangement, which leaves the
   * arbitrary initial placement). Default 0.29 (a third of a full
   * replan's churn); min_gain_per_churn decides how much of it is used. */
  double max_moved_fraction;
  /* Skip threshold on the predicted gain of mean balancedness; >= 0.
   * Default 0.001. */
  double min_gain;
  /* Minimum predicted gain of mean balancedness per unit of churn (a
   * move's new holdings / (L * P)); >= 0. Default 0.075 (a layer switch
   * moving half of its layer's slots must gain ~0.04 on its layer). */
  double min_gain_per_churn;
  /* 1: also try single-slot moves (slower; measured less robust). Default 0. */
  int32_t single_moves;
  /* Cap of the loose sticky candidate: (1 + sticky_slack) x the fresh
   * plan's max rank load; < 0 disables both sticky candidates (the relabelled
   * fresh plan only); in [-1, 10]. Default 0.1 (the forecast's error is
   * larger than that, and the looser cap keeps more holdings). Absent (older
   * struct_size): 0.1. */
  double sticky_slack;
};

#define EPLB_CHURN_OPTIONS_INIT {sizeof(eplbChurnOptions_t), NULL, 0.29, 0.001, 0.075, 0, 0.1}

/* Recommended half-life, in steps, of the decayed load estimate: decay =
 * 0.5^(1 / EPLB_CHURN_DEFAULT_HALF_LIFE_STEPS). */
#define EPLB_CHURN_DEFAULT_HALF_LIFE_STEPS 200.0

/* Exponentially decayed load accumulator, the forecast for
 * eplbChurnOptions_t.h_load_estimate: h_estimate[i] = decay * h_estimate[i]
 * + h_load[i] for i < L * E, float64 in index order (identical on every
 * rank). Start from zeros; call once per (non-dummy) step with that step's
 * logical load [L][E] (host int64, each in [0, EPLB_MAX_LOAD)). decay in
 * [0, 1]. Host only; blocks; thread safe for distinct h_estimate. Errors:
 * EPLB_ERROR_INVALID_ARGUMENT (NULL pointer, shape out of limits, decay or a
 * load out of range), h_estimate untouched. */
EPLB_API eplbStatus_t eplbLoadEstimateUpdate(int32_t num_layers, int32_t num_logical_experts,
                                             double decay, const int64_t* h_load,
                                             double* h_estimate);
/* EPLB_CHURN_SECTION_END */

/* ---- device kernels (section owned by the kernel work) ---- */
/* EPLB_KERNELS_SECTION_BEGIN */
/*
 * Device kernels: route + count, window ring, read-out, GPU planner.
 *
 * Common contract of every call in this section:
 *   - d_* are device pointers (cudaMalloc'd or managed memory visible to the
 *     current device); h_* are host pointers.
 *   - Work is enqueued on `stream` (never the legacy default stream: passing
 *     0/cudaStreamLegacy is rejected with EPLB_ERROR_INVALID_ARGUMENT; use a
 *     created stream or cudaStreamPerThread). The call returns once the work
 *     is enqueued; it never synchronises the host and never allocates, so it
 *     can be captured in a CUDA graph (the graph keeps the pointers; values
 *     behind them - token counts, the record flag - are read on the device at
 *     replay time).
 *   - Thread safety: calls on different streams may run concurrently if they
 *     write disjoint buffers; the library keeps no state between calls.
 *   - Buffers: each aligned to its element size (4 bytes for int32, 8 for
 *     int64 and the counters); a buffer the call writes shares no byte with
 *     any other argument of the call (no in-place calls: the kernels read
 *     their inputs while they write). Buffers that touch are fine.
 *   - Errors: a host-checkable bad argument (NULL where not nullable, a shape
 *     outside the limits, a size too small, a misaligned buffer, a written
 *     buffer overlapping another) -> EPLB_ERROR_INVALID_ARGUMENT naming the
 *     field, nothing enqueued; a failed launch -> EPLB_ERROR_CUDA with the
 *     CUDA error name (the outputs are then undefined). The status is the
 *     call's own: an error left by the caller's earlier CUDA calls is
 *     neither returned nor cleared (cudaGetLastError still reports it).
 *     Device-side faults show up on the stream as usual.
 *   - Results are deterministic: same inputs (values and capacity sizes) ->
 *     bit-identical outputs, run after run. Counters are integers, so their
 *     atomics are exact in any order.
 */

/* Element type of a top-k id array. */
typedef enum {
  EPLB_ID_INT32 = 0,
  EPLB_ID_INT64 = 1
} eplbIdType_t;

/* Number of items (token, k) one route+count block ranks together; see the
 * replica-choice rule below. Part of the contract (the host reference and
 * the tests depend on it). */
#define EPLB_ROUTE_TILE_ITEMS 4096
/* Most blocks (segments) a route+count launch uses. */
#define EPLB_ROUTE_MAX_SEGMENTS 528
/* From this many items (T*K) on, route+count takes the hash path. */
#define EPLB_ROUTE_HASH_MIN_ITEMS (1 << 22)

/* Routes top-k logical ids to physical replicas and counts them.
 *
 * d_topk_logical   [T][K] device, int32 or int64 per id_type; T = num_tokens
 *                  (the capacity the buffers are sized for).
 * d_num_tokens     device int32, nullable: the valid token count, read on the
 *                  device (clamped to [0, T]); NULL means all T are valid. A
 *                  graph captured at the padded capacity T stays valid while
 *                  the count changes.
 * top_k            K >= 1.
 * d_log2phy        this layer's [E][R+1] device table (R = P - E), slots of
 *                  each expert first, -1 padded.
 * d_logcnt         this layer's [E] device replica counts (1..R+1).
 * d_record         device int32 flag, nullable: when it reads 0 the call
 *                  routes but does not touch d_load_pass (NULL = count).
 * d_topk_physical  [T][K] device int32 output. Valid items get a slot in
 *                  [0, P). -1 goes to an item whose id is outside [0, E),
 *                  whose expert's count is outside [1, R+1] (such an item
 *                  takes no rank), or whose chosen log2phy entry is
 *                  outside [0, P) (a broken table: never used as an
 *                  address); items of tokens >= the valid count get -1 too
 *                  (and count nowhere).
 * d_load_pass      this layer's [P] device int32 counters; each item with a
 *                  slot adds 1 to it (when recording). Not zeroed here.
 * d_invalid_count  device counter, nullable: += number of items of valid
 *                  tokens that got -1 (any of the three reasons above;
 *                  always, whatever the record flag).
 *
 * Replica choice (normative; the host reference eplb::RouteCountRef mirrors
 * it; the device functions of eplb/eplb_device.cuh implement it): let
 * n = valid_tokens * K items, flat index i = t * K + k.
 *
 * Hash path, T*K >= EPLB_ROUTE_HASH_MIN_ITEMS (4 Mi items, e.g. 512 Ki
 * tokens x top-8): item i takes replica floor(EplbItemHash(i) * logcnt[e] /
 * 2^32) with EplbItemHash(i) = i * 0x9e3779b9 mod 2^32 (Fibonacci hashing,
 * eplb_device.cuh: EplbHashedSlot). No ranking, so it runs at memory speed;
 * the items of an arithmetic progression (e.g. every item, or every K-th)
 * are spread over the replicas within a few items of equal (the tests check
 * within 8 items for strides 1-16 and 2-9 replicas), item sets unrelated to
 * the sequence about as evenly as a binomial draw (standard deviation about
 * sqrt(count/replicas); the tests check every expert within 6 of them).
 *
 * Rank path, T*K below that: the capacity
 * T * K is cut into S = max(1, min(ceil(T*K / EPLB_ROUTE_TILE_ITEMS),
 * EPLB_ROUTE_MAX_SEGMENTS)) segments of Z = ceil(T*K / S) rounded up to a
 * multiple of 32 items: segment s is items [s*Z, min((s+1)*Z, T*K)) (the
 * last ones may be shorter or empty). In
 * segment s, the occurrences of expert e in ascending flat index get ranks
 * 0, 1, 2, ...; the item of rank r takes replica (r + s) mod logcnt[e], i.e.
 * slot log2phy[e][(r + s) % logcnt[e]]. Hence:
 *   - when T*K <= EPLB_ROUTE_TILE_ITEMS (one segment; decode sizes, e.g. 512
 *     tokens x top-8), every replica of an expert gets its share within 1 of
 *     equal (floor or ceil of count/replicas);
 *   - in general each replica's share is within S of equal (each segment
 *     adds at most one extra item per replica), S <= 528 (S <= 16 up to
 *     8192 tokens x top-8).
 * The result depends on the ids, the valid count and the capacity T only.
 *
 * Errors: NULL d_topk_logical / d_log2phy / d_logcnt / d_topk_physical /
 * d_load_pass, num_tokens < 0, top_k < 1, T*K >= 2^31, E or P out of
 * [1, limits], P < E, bad id_type, a misaligned buffer, d_topk_physical /
 * d_load_pass / d_invalid_count overlapping another argument ->
 * EPLB_ERROR_INVALID_ARGUMENT. T = 0 is a no-op (no buffer is checked).
 *
 * Early launch: the launch may be made with programmatic dependent launch,
 * where the device and the code built for it are of compute capability
 * 9.0 or more: the kernel may start while the kernel before it in the
 * stream ends, and waits for that kernel's completion and writes before
 * it touches any argument's memory, so stream order holds as without it.
 * When, eplbSetEarlyLaunch's mode says:
 *   - EPLB_EARLY_LAUNCH_AUTO (the default): only while the stream is being
 *     captured into a graph right behind eplb's own eplbRouteCount or
 *     eplbCount kernels that let it start (those below; e.g. the layers
 *     of a decode step captured one after the other): the one case where
 *     it pays and eplb can see it;
 *   - EPLB_EARLY_LAUNCH_ON: also behind any kernel for launches of at most
 *     8192 items (e.g. 1024 tokens x top-8) whose tables fit the decode
 *     kernel's 48 KB of shared memory (pays where the kernel before is
 *     launched early too and lets it start; README, "Early launch");
 *   - EPLB_EARLY_LAUNCH_OFF: never.
 * The kernels that let the next launch start (griddepcontrol.launch_dependents,
 * right after their wait), and so may launch early behind eplb's own: those
 * of launches below EPLB_ROUTE_HASH_MIN_ITEMS whose tables fit 48 KB of
 * shared memory and that have at most 132 segments of EPLB_ROUTE_TILE_ITEMS
 * items (e.g. up to 67584 tokens x top-8), and eplbCount's of at most 65536
 * items. A kernel after them that the caller launches early
 * (cudaLaunchAttributeProgrammaticStreamSerialization) starts before they
 * end; as always with such a launch, that kernel must wait
 * (cudaGridDependencySynchronize) before it reads their outputs. */
EPLB_API eplbStatus_t eplbRouteCount(const void* d_topk_logical, eplbIdType_t id_type,
                                     int64_t num_tokens, const int32_t* d_num_tokens,
                                     int32_t top_k, const int32_t* d_log2phy,
                                     const int32_t* d_logcnt, int32_t num_logical_experts,
                                     int32_t num_physical_experts, const int32_t* d_record,
                                     int32_t* d_topk_physical, int32_t* d_load_pass,
                                     unsigned long long* d_invalid_count, cudaStream_t stream);

/* Count-only variant: the engine already routed. d_topk_physical [T][K]
 * device ids (int32 or int64); each id in [0, P) of a valid token adds 1 to
 * d_load_pass[id] when recording; other ids of valid tokens go to
 * d_invalid_count (nullable). Same d_num_tokens / d_record rules, same
 * errors and same early launch as eplbRouteCount (up to 65536 items). */
EPLB_API eplbStatus_t eplbCount(const void* d_topk_physical, eplbIdType_t id_type,
                                int64_t num_tokens, const int32_t* d_num_tokens, int32_t top_k,
                                int32_t num_physical_experts, const int32_t* d_record,
                                int32_t* d_load_pass, unsigned long long* d_invalid_count,
                                cudaStream_t stream);

/* Early-launch modes of eplbRouteCount and eplbCount (see eplbRouteCount). */
#define EPLB_EARLY_LAUNCH_OFF 0  /* never */
#define EPLB_EARLY_LAUNCH_ON 1   /* also behind any kernel, at decode sizes */
#define EPLB_EARLY_LAUNCH_AUTO 2 /* while captured behind eplb's own (default) */

/* Sets the early-launch mode, process-wide: one of EPLB_EARLY_LAUNCH_*.
 * Without this call the mode comes from the environment variable EPLB_PDL
 * ("0" off, "1" on, unset or anything else auto; read once, at the first
 * launch or query); the call overrides it for every launch made after it
 * (graphs captured before keep theirs). Where the device or the code is
 * below compute capability 9.0, launches stay normal whatever the mode.
 * Host, thread-safe.
 * Errors: mode not one of the three -> EPLB_ERROR_INVALID_ARGUMENT. */
EPLB_API eplbStatus_t eplbSetEarlyLaunch(int mode);

/* The current early-launch mode (EPLB_PDL or eplbSetEarlyLaunch) in *mode:
 * EPLB_EARLY_LAUNCH_OFF, _ON or _AUTO.
 * Errors: mode NULL -> EPLB_ERROR_INVALID_ARGUMENT. */
EPLB_API eplbStatus_t eplbGetEarlyLaunch(int* mode);

/* Ends a step for all layers in one launch.
 *
 * d_phy2log     [L][P] device int32: the placement the step was routed with.
 * d_load_pass   [L][P] device int32 counters: folded through d_phy2log into
 *               logical loads (entries whose phy2log is outside [0, E) are
 *               dropped), then zeroed.
 * d_window      [W][L][E] device int32 ring (int32: one step's count of an
 *               expert fits; halves the ring's memory).
 * d_window_sum  [L][E] device int64: running sum of the W rows.
 * d_ring_state  device int32[2], opaque: [0] = row written next, [1] = an
 *               arrival counter of the launch.
 * The new row replaces the oldest one (row d_ring_state[0]); the sum gets
 * new - evicted; the position advances modulo W. Before the first update the
 * caller zeroes d_window, d_window_sum and d_ring_state (cudaMemsetAsync); an
 * all-zero ring is an empty window. Consecutive updates must be ordered (same
 * stream or events). Errors: NULL pointers, L/E/P outside limits, P < E,
 * W < 1, a misaligned buffer, a written one (all but d_phy2log)
 * overlapping another -> EPLB_ERROR_INVALID_ARGUMENT. */
EPLB_API eplbStatus_t eplbWindowUpdate(const int32_t* d_phy2log, int32_t* d_load_pass,
                                       int32_t num_layers, int32_t num_logical_experts,
                                       int32_t num_physical_experts, int32_t window_size,
                                       int32_t* d_window, int64_t* d_window_sum,
                                       int32_t* d_ring_state, cudaStream_t stream);

/* Read-out of the window: d_load [L][E] device int64 = d_window_sum, ready
 * for ncclAllReduce (ncclInt64, ncclSum). Errors as above. */
EPLB_API eplbStatus_t eplbWindowReadout(const int64_t* d_window_sum, int32_t num_layers,
                                        int32_t num_logical_experts, int64_t* d_load,
                                        cudaStream_t stream);

/* Reference read-out: d_load [L][E] device int64 = sum of all W rows of
 * d_window [W][L][E]; equals the running sum kept by eplbWindowUpdate (the
 * tests check it). Slower: reads the whole ring. Errors as above. */
EPLB_API eplbStatus_t eplbWindowReduce(const int32_t* d_window, int32_t window_size,
                                       int32_t num_layers, int32_t num_logical_experts,
                                       int64_t* d_load, cudaStream_t stream);

/* Device scratch bytes eplbPlanComputeGpu needs for `config` (more with
 * migration FULL, up to 64 ranks: [N][N] int64 intersections and the
 * assignment solver's scratch). Host only, launches nothing, thread safe.
 * Errors: the config checks of eplbPlanComputeGpu. */
EPLB_API eplbStatus_t eplbPlanComputeGpuWorkspaceSize(const eplbPlanConfig_t* config,
                                                      size_t* workspace_bytes);

/* The host planner (eplbPlanCompute) on the device: one block per layer.
 * Output bit-identical to eplbPlanCompute with the same config and loads.
 *
 * config          host; policies AUTO, HIERARCHICAL, GLOBAL; migration NONE,
 *                 PRESERVE or FULL (used only with d_old_phy2log; FULL up to
 *                 64 ranks, with the workspace sized for a FULL config: it
 *                 runs the host's exact assignment solver, one definition for
 *                 both). EPLB_POLICY_CHURN_AWARE, and EPLB_MIGRATION_FULL with
 *                 an old placement and more than 64 ranks ->
 *                 EPLB_ERROR_NOT_SUPPORTED (host only).
 * d_load          [L][E] device int64 loads, each in [0, EPLB_MAX_LOAD) with
 *                 per-layer sums below it (not checked on the device: a load
 *                 out of range gives an unspecified but memory-safe plan).
 * d_old_phy2log   [L][P] device, nullable: the placement in force, entries in
 *                 [0, E) (not checked on the device; out-of-range entries
 *                 never match).
 * d_phy2log       [L][P] device int32 output.
 * d_logcnt        [L][E] device int32 output.
 * d_log2phy       [L][E][P-E+1] device int32 output, nullable.
 * d_workspace     device scratch of workspace_bytes >=
 *                 eplbPlanComputeGpuWorkspaceSize (256-byte aligned).
 * Errors: bad config (as eplbPlanCompute), NULL d_load/d_phy2log/d_logcnt/
 * d_workspace, workspace too small, a misaligned buffer, an output or the
 * workspace overlapping another argument (d_old_phy2log included: no
 * in-place update) -> EPLB_ERROR_INVALID_ARGUMENT. */
EPLB_API eplbStatus_t eplbPlanComputeGpu(const eplbPlanConfig_t* config, const int64_t* d_load,
                                         const int32_t* d_old_phy2log, int32_t* d_phy2log,
                                         int32_t* d_logcnt, int32_t* d_log2phy,
                                         void* d_workspace, size_t workspace_bytes,
                                         cudaStream_t stream);
/* EPLB_KERNELS_SECTION_END */

/* ---- packed weight exchange (section owned by the exchange work) ---- */
/* EPLB_EXCHANGE_SECTION_BEGIN */
/* Moves expert weights between the GPUs of an EP communicator so that every
 * slot holds the expert of a new phy2log (stages 5-6 of DESIGN.md).
 *
 * An expert is a *bundle* of tensors (e.g. gate/up, down, scales). For each
 * registered layer and tensor the caller owns a device array of the rank's
 * P/N local slots: row r (local slot r) starts at d_slots + r * pitch_bytes and
 * holds bytes_per_slot bytes. eplb reads and writes those rows and nothing
 * else. Rows going to one peer are packed into one contiguous staging region
 * and sent with one ncclSend per peer (one ncclRecv per peer) inside
 * ncclGroupStart/End; layers are processed in rounds that fit the staging
 * budget (small layers share a round; a layer larger than a third of the
 * budget, or than an internal round target, moves in column slices: slice k
 * of every row, a complete exchange of those bytes); packing, sending and
 * unpacking of successive rounds overlap on internal streams. Staging comes
 * from ncclMemAlloc and is registered with the communicator
 * (ncclCommRegister), so NCCL moves it between GPUs of a node without its
 * own intermediate copies; the budget therefore also decides how much of
 * the transfer can overlap: three times the largest layer's need lets every
 * layer move as one round beside its neighbours.
 *
 * Collective contract: every rank of the communicator calls Create, Run and
 * Destroy in the same order with the same shapes, the same staging budget,
 * the same tensor sizes per layer and the same old/new phy2log; Run checks
 * this (a hash of its inputs, agreed through one small ncclAllReduce) before
 * any byte moves. Thread safety: one handle is used by one host thread at a
 * time; different handles (one per GPU, e.g. one thread per GPU) are
 * independent. Every call switches to config.device for its duration and
 * restores the caller's current device. */

typedef struct eplbExchange_s* eplbExchange_t;

/* Most tensors in one layer's bundle. */
#define EPLB_EXCHANGE_MAX_TENSORS 16
/* Rows in staging start on this boundary (each tensor's row is padded). */
#define EPLB_EXCHANGE_ROW_ALIGN 16

typedef struct {
  size_t struct_size;           /* sizeof(eplbExchangeConfig_t) */
  int32_t num_layers;           /* L, 1..EPLB_MAX_LAYERS */
  int32_t num_physical_experts; /* P, 1..EPLB_MAX_PHYSICAL_EXPERTS, multiple of N */
  int32_t num_ranks;            /* N, must equal the communicator's size */
  int32_t rank;                 /* must equal the communicator's rank */
  /* [N] host, node of each rank (0-based, any labels); NULL = one node.
   * Senders on the receiver's node are preferred. Copied at Create. */
  const int32_t* h_rank_node;
  /* Device staging budget in bytes, the same on every rank; at least the
   * minimum eplbExchangeStagingQuery returns for the layers Run will see.
   * Twice the largest layer's traffic or more lets chunks overlap. */
  size_t staging_bytes;
  int32_t device; /* CUDA device ordinal of this rank; -1 = the current device */
  /* Optional second communicator over the same ranks, in the same order and
   * on the same devices as `comm` (e.g. ncclCommSplit(comm, 0, rank, &c,
   * NULL), made once by the caller), owned by the caller and kept alive
   * until Destroy; NULL on every rank or given on every rank (Run checks).
   * Successive rounds alternate between the two communicators, each on its
   * own internal stream, so that one round's NCCL kernel starts while the
   * previous one still moves bytes (the README has the measured gain).
   * The staging is registered with it too. eplb never creates or
   * destroys communicators: tearing one down inside a library call can
   * block on the other GPUs of the process while their ranks wait in a
   * collective for this one. */
  ncclComm_t overlap_comm;
} eplbExchangeConfig_t;

#define EPLB_EXCHANGE_CONFIG_INIT {sizeof(eplbExchangeConfig_t), 0, 0, 0, 0, NULL, 0, -1, NULL}

/* One tensor of a layer's bundle on this rank. */
typedef struct {
  void* d_slots;         /* device; row r at d_slots + r * pitch_bytes */
  size_t bytes_per_slot; /* > 0; the same on every rank */
  size_t pitch_bytes;    /* >= bytes_per_slot */
} eplbTensorDesc_t;

/* What a Run did on this rank (optional output of eplbExchangeRun). */
typedef struct {
  size_t struct_size;          /* sizeof(eplbExchangeStats_t), set by the caller */
  int64_t bytes_sent;          /* payload bytes this rank sent (bundle bytes, no padding) */
  int64_t bytes_received;      /* payload bytes this rank received */
  int64_t bytes_copied_local;  /* payload bytes written into slots from this rank's own rows */
  int64_t rows_sent;           /* bundles sent (one per (expert, receiving rank)) */
  int64_t rows_received;       /* bundles received */
  int64_t slots_received;      /* local slots filled from received bundles */
  int64_t slots_copied_local;  /* local slots filled from another local slot */
  int64_t slots_kept;          /* local slots whose expert did not change */
  int32_t num_chunks;          /* NCCL groups (staging rounds with peer traffic) enqueued */
  /* Layers first_layer .. first_layer + num_layers_done - 1 are fully
   * enqueued; on success, num_layers_done == num_layers. Written also when
   * Run fails after the agreement check (see eplbExchangeRun). */
  int32_t num_layers_done;
} eplbExchangeStats_t;

#define EPLB_EXCHANGE_STATS_INIT {sizeof(eplbExchangeStats_t), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

/* Staging needed by an exchange, computed on the host before Create (no
 * handle, no GPU, no communicator).
 *
 * config          the shape (staging_bytes and device ignored).
 * h_tensor_bytes  [L][EPLB_EXCHANGE_MAX_TENSORS] host: bytes_per_slot of
 *                 tensor t of layer l, 0 where layer l has fewer tensors
 *                 (each layer needs at least one nonzero entry).
 * h_old_phy2log, h_new_phy2log  [L][P] host, both NULL or both given.
 * h_min_staging_bytes  output: the smallest staging_bytes a Run of any
 *                 range of these layers accepts. With plans: exact, the
 *                 largest over layers and ranks of one layer's send + receive
 *                 + local-copy staging. Without plans: the plan-independent
 *                 worst case, P padded bundles of the largest layer.
 * h_device_bytes  optional output: device memory Create allocates for a
 *                 budget of *h_min_staging_bytes (staging plus descriptor
 *                 tables and the agreement-check word; ncclMemAlloc may
 *                 round the staging up to its allocation granularity,
 *                 typically 2 MiB).
 *
 * Host only; blocks; thread safe. Errors: EPLB_ERROR_INVALID_ARGUMENT (NULL
 * output, a shape outside the limits, P % N != 0, a bad h_rank_node, a bad
 * tensor table, an expert id < 0, a new expert held by no old slot of its
 * layer, only one of the two plans), outputs untouched. */
EPLB_API eplbStatus_t eplbExchangeStagingQuery(const eplbExchangeConfig_t* config,
                                               const size_t* h_tensor_bytes,
                                               const int32_t* h_old_phy2log,
                                               const int32_t* h_new_phy2log,
                                               size_t* h_min_staging_bytes,
                                               size_t* h_device_bytes);

/* Creates the exchange of this rank over `comm` (a communicator of N ranks,
 * one GPU each, owned by the caller and kept alive until Destroy). Allocates
 * all device memory the exchange will ever use here: config->staging_bytes
 * of staging plus small tables; Run never allocates.
 *
 * Staging comes from ncclMemAlloc and is registered with `comm`
 * (ncclCommRegister; local, not collective), so `comm` must outlive the
 * exchange: Destroy deregisters it.
 *
 * Host; blocks (device allocation, stream and event creation); not
 * collective (no NCCL collective). Errors: EPLB_ERROR_INVALID_ARGUMENT (NULL,
 * struct_size, shapes, rank/num_ranks/device different from the
 * communicator's, h_rank_node, staging_bytes == 0, an overlap_comm equal to
 * `comm` or whose size, rank or device differ from it), EPLB_ERROR_CUDA,
 * EPLB_ERROR_NCCL,
 * EPLB_ERROR_OUT_OF_MEMORY; *out untouched on error. */
EPLB_API eplbStatus_t eplbExchangeCreate(const eplbExchangeConfig_t* config, ncclComm_t comm,
                                         eplbExchange_t* out);

/* Registers (or replaces) the weight bundle of `layer` on this rank:
 * h_tensors[num_tensors] host array, copied; the device arrays stay the
 * caller's and must stay valid while Run may touch them. Tensors may have
 * different row sizes and pitches. num_local_slots must be P/N. Every layer
 * a Run covers must be registered, with the same tensor sizes on every rank.
 *
 * Host; blocks: waits for this exchange's work in flight, then copies a
 * small table to the device on an internal stream; never touches the
 * weights. Errors: EPLB_ERROR_INVALID_ARGUMENT (NULL
 * handle or array, layer out of range, num_tensors outside
 * 1..EPLB_EXCHANGE_MAX_TENSORS, a NULL d_slots, bytes_per_slot == 0,
 * pitch_bytes < bytes_per_slot, num_local_slots != P/N), EPLB_ERROR_CUDA;
 * the previous registration is kept on error. A budget too small for the
 * bundle is not checked here (it depends on the plan): Run reports it. */
EPLB_API eplbStatus_t eplbExchangeRegisterLayer(eplbExchange_t ex, int32_t layer,
                                                const eplbTensorDesc_t* h_tensors,
                                                int32_t num_tensors, int32_t num_local_slots);

/* Moves the weights of layers [first_layer, first_layer + num_layers) from
 * the placement h_old_phy2log to h_new_phy2log (each [num_layers][P] host,
 * the rows of those layers only; the same on every rank). Collective.
 *
 * Phases: (1) validate and plan on the host (this overlaps the GPU work
 * still in flight); (2) agreement check: one ncclAllReduce of a hash of
 * every input (shapes, budget, tensor sizes, plans, validation outcome) on
 * `stream`, then THE HOST BLOCKS until it completes — i.e. until `stream`
 * has reached this point, including the work enqueued on it before the
 * call; (3) enqueue the exchange, ordered after the work already on `stream`
 * and before the work enqueued on it after the call (internal streams fork
 * from and join back to `stream` through events), and return without
 * waiting for it. When `stream` reaches the point after the call, every slot
 * of every covered layer holds its new expert; a layer is never visible half
 * moved to work ordered after the call. So a caller that commits the maps of
 * these layers on `stream` after the call (or after synchronising it)
 * commits exactly when their weights are in place. Slots whose expert does
 * not change are never written.
 *
 * h_stats optional output (struct_size set by the caller).
 *
 * Errors (nothing moved, weights unchanged, stats untouched):
 *   EPLB_ERROR_INVALID_ARGUMENT — NULL plan, range outside [0, L), an expert
 *     id < 0, a new expert of a layer held by no old slot of that layer, a
 *     layer not registered; this rank still takes part in the check, so the
 *     other ranks return EPLB_ERROR_MISMATCH instead of hanging;
 *   EPLB_ERROR_MISMATCH — the ranks' inputs differ (every rank returns it);
 *   EPLB_ERROR_INVALID_USAGE — staging_bytes below what a layer of this plan
 *     needs (the same decision on every rank when the inputs agree; a rank
 *     whose own check fails reports its own error, the others MISMATCH).
 *   A NULL handle, or the legacy default stream (0 / cudaStreamLegacy),
 *   returns EPLB_ERROR_INVALID_ARGUMENT without the check (the other ranks
 *   then wait in it: a caller bug).
 * Errors after the check (EPLB_ERROR_NCCL with ncclGetErrorString in the
 * detail, EPLB_ERROR_CUDA): h_stats is written; the layers counted in
 * h_stats->num_layers_done are enqueued in full and ordered before later
 * work on `stream`, the layers after them are untouched, except a layer
 * moving in column slices (one too large for a staging round) when the
 * failure falls between its slices: its slots are partly new, and the
 * detail names it. The communicator should be considered broken.
 *
 * Host: blocks for the check (see above). Not thread safe per handle. */
EPLB_API eplbStatus_t eplbExchangeRun(eplbExchange_t ex, const int32_t* h_old_phy2log,
                                      const int32_t* h_new_phy2log, int32_t first_layer,
                                      int32_t num_layers, eplbExchangeStats_t* h_stats,
                                      cudaStream_t stream);

/* Releases the exchange's device memory, streams and events. Waits (blocks)
 * for the exchange's work in flight; does not destroy the communicator. NULL
 * is a no-op returning EPLB_SUCCESS. Not collective.
 * After an error past the agreement check (the communicator is then broken):
 * abort the communicator(s) first (ncclCommAbort, which also ends transfers
 * a failed peer left hanging), then destroy the exchange; it makes no NCCL
 * call on them then. Destroying it first can block for ever on a transfer
 * whose peer died. */
EPLB_API eplbStatus_t eplbExchangeDestroy(eplbExchange_t ex);
/* EPLB_EXCHANGE_SECTION_END */

/* ---- per-rank state machine (section owned by the state-machine work) ---- */
/* EPLB_STATE_SECTION_BEGIN */
/* The per-rank state machine: ties route + count, the window, read-out,
 * planning, the weight exchange and the map commit together (DESIGN.md
 * "host-side state machine"). An engine creates one state per rank over its
 * EP communicator, registers its expert weight bundles, routes every MoE
 * layer with eplbRouteCount on the maps of eplbStateGetDeviceMaps (counting
 * into its d_load_pass), and calls eplbStateStep once per forward pass.
 *
 * Collective contract: every rank of the communicator calls Create, Step (with
 * the same EPLB_STEP_STATS bit; EPLB_STEP_DUMMY may differ between ranks) and
 * Rearrange in the same order, with the same config. Every rank
 * then makes the same sequence of NCCL calls, on error paths too: a rank that
 * fails locally before a collective still takes part in it (with a poison
 * value), so the others return EPLB_ERROR_MISMATCH instead of hanging.
 * Thread safety: one state is used by one host thread at a time; states of
 * different ranks (e.g. one thread per GPU) are independent. Every call
 * switches to the communicator's device for its duration and restores the
 * caller's current device. Streams: every call that enqueues work takes the
 * caller's stream (never the legacy default stream: 0 / cudaStreamLegacy is
 * rejected); use the same stream (or order them) for all calls of a state. */

typedef struct eplbState_s* eplbState_t;

/* eplbStateStep flags. */
/* A padding / warm-up pass: its counts are discarded (not entered into the
 * window), but the step still counts towards step_interval. May differ
 * between ranks. */
#define EPLB_STEP_DUMMY 0x1u
/* Compute this pass's balancedness into d_step_balance (one ncclAllReduce on
 * the stream; no host sync). Must be the same on every rank. */
#define EPLB_STEP_STATS 0x2u

typedef struct {
  size_t struct_size;           /* sizeof(eplbStateConfig_t) */
  int32_t num_layers;           /* L */
  int32_t num_logical_experts;  /* E */
  int32_t num_physical_experts; /* P, multiple of N */
  int32_t num_groups;           /* G */
  int32_t num_nodes;            /* M; planning uses 1 when N % M != 0 */
  int32_t num_ranks;            /* N, must equal the communicator's size */
  int32_t rank;                 /* must equal the communicator's rank */
  int32_t window_size;          /* W >= 1 passes in the load window */
  int32_t step_interval;        /* >= 1; the first rearrangement comes after
                                   step_interval - step_interval / 4 steps */
  /* Device staging budget of the weight exchange (eplbExchangeConfig_t). */
  size_t staging_bytes;
  /* [N] host, node of each rank; NULL = rank r on node r * M / N. Copied. */
  const int32_t* h_rank_node;
  eplbPolicy_t policy;       /* AUTO, HIERARCHICAL or GLOBAL */
  eplbMigration_t migration; /* of every rearrangement (old = placement in force) */
  /* Initial placement, at most one of the two (both NULL: the E experts in
   * order, then slot E + i holds expert i % E). Host, copied, the same on
   * every rank (checked). */
  const int32_t* h_initial_phy2log; /* [L][P] */
  const int64_t* h_initial_load;    /* [L][E]: planned with config's policy */
  /* Optional second communicator for the weight exchange
   * (eplbExchangeConfig_t.overlap_comm): NULL or a communicator over the
   * same ranks and devices as the state's, on every rank alike; owned by the
   * caller and kept alive until Destroy. Recommended: it shortens the
   * exchange, the longest phase of a rearrangement. */
  ncclComm_t overlap_comm;
} eplbStateConfig_t;

#define EPLB_STATE_CONFIG_INIT                                                              \
  {sizeof(eplbStateConfig_t), 0, 0, 0, 1, 1, 0, 0, 1000, 3000, 0, NULL, EPLB_POLICY_AUTO, \
   EPLB_MIGRATION_FULL, NULL, NULL, NULL}

/* Balancedness of one pass, reduced over ranks (device struct, written by a
 * step with EPLB_STEP_STATS). Tokens are (token, k) items counted by route +
 * count on all ranks; a rank's tokens are those of its slots. */
typedef struct {
  double avg_tokens_per_rank; /* mean over layers of (layer tokens / N) */
  double max_tokens_per_rank; /* mean over layers of the busiest rank's tokens */
  double balancedness;        /* mean over layers of avg / max (1 for an empty layer) */
  int64_t step;               /* index (0-based) of the step that wrote this */
} eplbStepBalance_t;

/* Device pointers owned by the state, fixed for its lifetime (so they can be
 * baked into CUDA graphs). */
typedef struct {
  size_t struct_size;        /* sizeof(eplbStateDeviceMaps_t), set by the caller */
  const int32_t* d_phy2log;  /* [L][P] placement in force */
  const int32_t* d_log2phy;  /* [L][E][P-E+1], for eplbRouteCount (layer l at
                                d_log2phy + l * E * (P-E+1)) */
  const int32_t* d_logcnt;   /* [L][E] (layer l at d_logcnt + l * E) */
  int32_t* d_load_pass;      /* [L][P] counters route + count adds to (layer l
                                at d_load_pass + l * P); consumed by Step */
  int32_t* d_record;         /* record flag for eplbRouteCount, 1 after Create;
                                the caller may set 0 / 1 on its stream */
  unsigned long long* d_invalid_count; /* invalid-id counter; zeroed at Create only */
  const eplbStepBalance_t* d_step_balance; /* last EPLB_STEP_STATS result */
  const double* d_layer_balancedness;      /* [L] per layer, same step */
} eplbStateDeviceMaps_t;

#define EPLB_STATE_DEVICE_MAPS_INIT \
  {sizeof(eplbStateDeviceMaps_t), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL}

/* Phases of a rearrangement (indices of the eplbStateStats_t arrays). */
typedef enum {
  EPLB_STATE_PHASE_READOUT = 0,   /* window sum -> logical load */
  EPLB_STATE_PHASE_ALLREDUCE = 1, /* ncclAllReduce of the load + copy to host */
  EPLB_STATE_PHASE_PLAN = 2,      /* host planner, then the exchange's transfer plans */
  EPLB_STATE_PHASE_CHECK = 3,     /* cross-rank agreement on the plan and exchange inputs */
  EPLB_STATE_PHASE_EXCHANGE = 4,  /* the weight exchange, enqueued and run */
  EPLB_STATE_PHASE_COMMIT = 5     /* new maps copied to the device */
} eplbStatePhase_t;
#define EPLB_STATE_NUM_PHASES 6

typedef struct {
  size_t struct_size;               /* sizeof(eplbStateStats_t), set by the caller */
  int64_t num_steps;                /* steps taken, dummy ones included */
  int64_t num_dummy_steps;
  int64_t num_rearrangements;       /* attempted (periodic and on demand) */
  int64_t num_failed_rearrangements;
  int64_t steps_to_next_rearrangement; /* periodic */
  /* The last rearrangement (zeros / -1 before the first one). */
  int32_t last_status;              /* eplbStatus_t it returned */
  int32_t last_layers_committed;    /* layers whose maps (and weights) changed */
  int64_t last_slots_moved;         /* (layer, slot) entries, all ranks, that changed */
  int64_t last_bytes_sent;          /* payload bytes this rank sent */
  int64_t last_bytes_received;      /* payload bytes this rank received */
  double last_balancedness_before;  /* of the old placement on the all-reduced load */
  double last_balancedness_after;   /* of the new placement on the same load */
  /* Host time blocked in each phase (ms). */
  double last_host_ms[EPLB_STATE_NUM_PHASES];
  /* Stream time between the phase boundaries (ms, CUDA events): the stall
   * the rearrangement inserted into the stream, split by phase; -1 for a
   * phase a failed rearrangement did not reach. */
  double last_device_ms[EPLB_STATE_NUM_PHASES];
} eplbStateStats_t;

#define EPLB_STATE_STATS_INIT \
  {sizeof(eplbStateStats_t), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, {0.0}, {0.0}}

/* Creates this rank's state over `comm` (N ranks, one GPU each; owned by the
 * caller, kept alive until Destroy; the state runs on the communicator's
 * device). Allocates all memory the state will ever use, here: maps, load
 * counters, the window [W][L][E] int32, the exchange staging, pinned host
 * buffers; Step and Rearrange never allocate.
 *
 * Collective: one small ncclAllReduce checks that every rank passed the same
 * config and initial placement; then one small send/recv round between every
 * pair of ranks on each communicator, from and into the staging, connects
 * NCCL's peers here instead of in the first rearrangement. Host; blocks.
 * Errors: EPLB_ERROR_INVALID_ARGUMENT
 * (NULL, struct_size, shapes outside the limits or the policy table,
 * EPLB_POLICY_CHURN_AWARE, window_size / step_interval < 1, staging_bytes ==
 * 0, rank / num_ranks different from the communicator's, a bad initial
 * placement or load, both initial inputs given), EPLB_ERROR_MISMATCH (ranks
 * passed different configs; every rank returns it), EPLB_ERROR_CUDA,
 * EPLB_ERROR_NCCL, EPLB_ERROR_OUT_OF_MEMORY; *out untouched on error. */
EPLB_API eplbStatus_t eplbStateCreate(const eplbStateConfig_t* config, ncclComm_t comm,
                                      eplbState_t* out);

/* Registers (or replaces) the weight bundle of `layer` on this rank: its P/N
 * local slots, as in eplbExchangeRegisterLayer (h_tensors[num_tensors] host,
 * copied; the device arrays stay the caller's and must stay valid while the
 * state lives). Every layer must be registered before the first Step. Host;
 * blocks briefly; not collective. Errors: those of eplbExchangeRegisterLayer;
 * the previous registration is kept on error. */
EPLB_API eplbStatus_t eplbStateRegisterLayer(eplbState_t state, int32_t layer,
                                             const eplbTensorDesc_t* h_tensors,
                                             int32_t num_tensors);

/* The state's device pointers (see eplbStateDeviceMaps_t). Host; no GPU
 * work; thread safe. Errors: NULL, struct_size too small. */
EPLB_API eplbStatus_t eplbStateGetDeviceMaps(eplbState_t state, eplbStateDeviceMaps_t* h_maps);

/* Ends a forward pass (call it after the pass's route + count calls, on the
 * same stream). Enqueues: the pass's d_load_pass folded into the window (or
 * discarded when EPLB_STEP_DUMMY) and zeroed; with EPLB_STEP_STATS, the
 * pass's balancedness. Counts the step; every step_interval steps (the first
 * time after step_interval - step_interval / 4) it then rearranges, exactly
 * as eplbStateRearrange.
 *
 * A step that does not rearrange never blocks the host and never allocates
 * (its GPU work is one window kernel, plus a kernel, an ncclAllReduce and a
 * kernel with STATS). A step that rearranges blocks (see eplbStateRearrange).
 * Not for stream capture: the host counts steps, so call it after replaying
 * the pass's graph (route + count itself is capturable).
 * Errors: EPLB_ERROR_INVALID_ARGUMENT (NULL state, unknown flag bits, the
 * legacy stream), EPLB_ERROR_INVALID_USAGE (the state is broken by an
 * earlier CUDA/NCCL failure; or a layer not registered on this rank — that
 * step is still counted and takes part in its collectives, a rearrangement
 * included, which then fails on every rank with nothing moved, so one rank's
 * missing registration never leaves the others waiting), then the errors of
 * a rearrangement (the step itself was counted). */
EPLB_API eplbStatus_t eplbStateStep(eplbState_t state, uint32_t flags, cudaStream_t stream);

/* Rearranges now (call it between passes: after a Step, before the next
 * pass's route + count). Collective. Phases, in this order on every rank:
 * read-out of the window on `stream`; ncclAllReduce of the logical load; the
 * host BLOCKS until `stream` gets there and copies the load; host planning
 * (migration-aware against the placement in force, then the exchange's
 * transfer plans: the validation and planning of eplbExchangeRun);
 * cross-rank check that every rank planned the same and has the same
 * exchange inputs (one ncclAllReduce for both, the host blocks on it);
 * weight exchange (the moves are enqueued, without a second check);
 * commit: the new maps are copied to the device on `stream` after
 * the weights, so work enqueued after this call sees new weights and new
 * maps together. Returns once all that is enqueued. Resets the periodic
 * counter (the next periodic rearrangement is step_interval steps away).
 *
 * Errors (every rank returns an error; the maps always describe the weights
 * of this rank, each layer wholly old or wholly new, but for the one case
 * named below):
 *   EPLB_ERROR_MISMATCH — the ranks planned differently, or a rank failed
 *     before the check; nothing moved anywhere, the state stays usable;
 *   EPLB_ERROR_INVALID_USAGE — a layer not registered, or the staging budget
 *     too small for this plan (nothing moved, the state stays usable);
 *   EPLB_ERROR_CUDA / EPLB_ERROR_NCCL (or EPLB_ERROR_OUT_OF_MEMORY) during
 *     the exchange or commit — layers whose weights moved have their new
 *     maps, the others keep old ones; the state is broken (later calls:
 *     EPLB_ERROR_INVALID_USAGE) and the communicator should be aborted. Also
 *     when the failure came before anything moved on this rank: the other
 *     ranks had already enqueued their transfers with it. A layer too large
 *     for one staging round moves in column slices; a failure between its
 *     slices leaves its weights partly new under its old maps (the message
 *     names the layer): reload it.
 *   A failure on one rank before the check (an allocation included) fails
 *   every rank as above (that rank: its own status, the others
 *   EPLB_ERROR_MISMATCH), nothing moved, the states stay usable.
 *   Not detected: a failure on one rank after the check leaves the other
 *   ranks' transfers with it pending; they have returned EPLB_SUCCESS, and
 *   their next call that waits for the GPU (the next rearrangement,
 *   eplbStateGetStats) blocks. An engine that must survive a rank's failure
 *   watches its communicator (ncclCommGetAsyncError, a timeout) and aborts
 *   it, then destroys the state (see eplbStateDestroy). */
EPLB_API eplbStatus_t eplbStateRearrange(eplbState_t state, cudaStream_t stream);

/* Counters and the last rearrangement's phases, bytes and slots. Host;
 * BLOCKS until the last rearrangement's work is finished on the device (its
 * event timings); otherwise no GPU work. Errors: NULL, struct_size. */
EPLB_API eplbStatus_t eplbStateGetStats(eplbState_t state, eplbStateStats_t* h_stats);

/* Copies the placement in force (h_phy2log [L][P], host) as the host sees it
 * (the maps committed by the last call, possibly still in flight on the
 * stream). Host; no GPU work. Errors: NULL. */
EPLB_API eplbStatus_t eplbStateGetPlacement(eplbState_t state, int32_t* h_phy2log);

/* Releases everything Create allocated; waits (blocks) for the state's work
 * in flight. Not collective; does not destroy the communicator. NULL is a
 * no-op returning EPLB_SUCCESS.
 * A broken state (an error past the plan check): abort the communicator(s)
 * first (ncclCommAbort), then destroy the state; it makes no NCCL call on
 * them then. Destroying it first can block for ever on a transfer whose
 * peer died. */
EPLB_API eplbStatus_t eplbStateDestroy(eplbState_t state);
/* EPLB_STATE_SECTION_END */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EPLB_EPLB_H_ */
