#!/usr/bin/env bash
# One device call: build, run every suite with EPLB_REQUIRE_GPU=1 (nothing
# passes by skipping) on 1, 2 and 4 GPUs, compute-sanitizer, the live demo
# and every benchmark. Usage, from the repository root of a GPU machine:
#   bash scripts/gpu_check.sh [OUTDIR]
# Needs the shared data copied to .data/ (conformance/, traces/) or
# EPLB_DATA_DIR set. Writes six logs to OUTDIR and prints a summary. Exits
# non-zero when a test, benchmark, sanitizer run or the demo fails, or a
# step is skipped for the deadline.
# EPLB_CHECK_STEPS picks steps (default: all of host gpu multigpu demo bench
# sanitizer), e.g. EPLB_CHECK_STEPS="gpu multigpu" for a quick re-check.
set -uo pipefail
out=${1:-${OUT:-out}}
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0   # never unset: NVLink multicast must stay off
export EPLB_REQUIRE_GPU=1 EPLB_REQUIRE_DATA=1
export EPLB_DATA_DIR=${EPLB_DATA_DIR:-$PWD/.data}
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
all=$(seq -s, 0 $((ngpu - 1)))
sum="$out/summary.txt"
{ nvidia-smi -L; nvcc --version | tail -1; date; } | tee "$sum"

steps=" ${EPLB_CHECK_STEPS:-host gpu multigpu demo bench sanitizer} "
want() { [[ "$steps" == *" $1 "* ]]; }
t0=$(date +%s)
deadline=${EPLB_CHECK_SECONDS:-560}  # the device tool's call limit is 600 s
left() { echo $((deadline - ($(date +%s) - t0))); }
budget() { local l; l=$(left); echo $((l < $1 ? l : $1)); }  # min(left, cap)
# A step skipped for the deadline fails the run too (rc is set below).
fits() { [ "$(left)" -ge "$1" ] || { echo "skipped $2: deadline" | tee -a "$sum"; rc=1; return 1; }; }
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/build.log" 2>&1 &&
  cmake --build build-gpu >>"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(($(date +%s) - t0)) s" | tee -a "$sum"

rc=0
# ctest -L takes a regex: anchor it, or "gpu" would select "multigpu" too.
run_ctest() {  # label devices [ctest args...]
  local label=$1 devs=$2
  shift 2
  echo "===== ctest -L ^$label\$ on GPUs $devs $*" >>"$out/ctest.log"
  CUDA_VISIBLE_DEVICES=$devs timeout $(budget 300) ctest --test-dir build-gpu -L "^$label\$" \
    --output-on-failure --timeout 240 "$@" >"$out/ctest_tmp.log" 2>&1 || rc=1
  cat "$out/ctest_tmp.log" >>"$out/ctest.log"
  echo "ctest -L $label on GPUs $devs $*: $(grep -E 'tests passed|tests failed' "$out/ctest_tmp.log")" |
    tee -a "$sum"
  grep -E "\(Failed\)|\(Timeout\)|\(Skipped\)" "$out/ctest_tmp.log" | tee -a "$sum"
  rm -f "$out/ctest_tmp.log"
}
want host && run_ctest host "$all"
want gpu && run_ctest gpu 0
# On 2 GPUs the tests that need 4 (named *Four*) are left out: under
# EPLB_REQUIRE_GPU=1 they would fail rather than skip there.
want multigpu && [ "$ngpu" -ge 2 ] && run_ctest multigpu 0,1 -E Four
want multigpu && [ "$ngpu" -ge 4 ] && run_ctest multigpu 0,1,2,3

# The README's main job on all GPUs.
if want demo; then
  CUDA_VISIBLE_DEVICES=$all timeout $(budget 150) build-gpu/eplb demo >"$out/demo.txt" 2>&1
  drc=$?
  echo "demo: rc=$drc" | tee -a "$sum"
  [ $drc -eq 0 ] || rc=1
fi

# Benchmarks (each measures its own baseline and reports the ratio), the
# GPU pipeline ones first. A step that would pass the deadline is skipped.
bench() {  # name devices [env assignments...]
  local n=$1 devs=$2 b=build-gpu/bench/bench_$1
  shift 2
  [ -x "$b" ] && want bench || return 0
  fits 45 "bench_$n $*" || return 0
  echo "===== bench_$n on GPUs $devs $*" >>"$out/bench.txt"
  env CUDA_VISIBLE_DEVICES=$devs "$@" timeout $(budget 120) "$b" --benchmark_min_time=0.1s \
    --benchmark_counters_tabular=true >>"$out/bench.txt" 2>&1
  local brc=$?
  echo "bench_$n on GPUs $devs $*: rc=$brc" | tee -a "$sum"
  [ $brc -eq 0 ] || rc=1
}
bench state "$all"
# Its decode graphs are captured in each early-launch mode (off / on /
# auto) in the same run (counters *_off, *_on, *_auto).
bench kernels 0
# One process per exchange case (each case keeps its GPU memory to itself).
for n in 2 4; do
  [ "$ngpu" -ge $n ] || continue
  for wl in full big; do bench exchange "$all" EPLB_BENCH_N=$n EPLB_BENCH_WORKLOAD=$wl; done
done
bench planner 0
bench churn_policy 0
# compute-sanitizer: memcheck over the single-GPU suites, racecheck on the
# kernels that use shared memory.
# sanitize TOOL LABEL MIN_SECONDS CAP_SECONDS ENV BINARY [ARGS...]: one run
# on GPU 0 (ENV: assignments, or ""), logged to sanitizer.log, its rc and
# summary line in the summary; returns 1 only when skipped for the deadline.
# memcheck reports no API errors: KernelsApi.OwnStatusAndAdjacentBuffers
# provokes an out-of-memory cudaMalloc on purpose (two API errors, which
# made memcheck exit 9 with no memory-access error); the tests check every
# status themselves.
sanitize() {
  local tool=$1 label=$2 min=$3 cap=$4 envs=$5 bin=$6
  shift 6
  fits "$min" "$label" || return 1
  local opts=(--tool "$tool" --error-exitcode 9)
  [ "$tool" = memcheck ] && opts+=(--report-api-errors no)
  # shellcheck disable=SC2086  # ENV is a list of assignments
  env CUDA_VISIBLE_DEVICES=0 $envs timeout "$(budget "$cap")" compute-sanitizer "${opts[@]}" \
    "$bin" "$@" >"$out/sanitizer_tmp.log" 2>&1
  local src=$?
  [ $src -eq 0 ] || rc=1
  cat "$out/sanitizer_tmp.log" >>"$out/sanitizer.log"
  echo "$label: rc=$src; $(grep -m1 'SUMMARY' "$out/sanitizer_tmp.log")" | tee -a "$sum"
  rm -f "$out/sanitizer_tmp.log"
}
race_tests='RouteCount.Adversarial:Count.*:Window.*:Graph.*:EarlyLaunch.*:DeviceFunctions.*'
pdl_tests='EarlyLaunch.*:Graph.*:RouteCount.*:Count.*'  # the kernels launched early
for t in build-gpu/tests/gpu_*; do
  [ -x "$t" ] && want sanitizer || continue
  n=$(basename "$t")
  sanitize memcheck "memcheck $n" 60 200 "" "$t" || continue
  sanitize racecheck "racecheck $n" 30 120 "" "$t" --gtest_filter="$race_tests" || continue
  [ "$n" = gpu_kernels ] || continue
  sanitize memcheck "memcheck $n EPLB_PDL=1" 60 150 EPLB_PDL=1 "$t" \
    --gtest_filter="$pdl_tests" || continue
  sanitize racecheck "racecheck $n EPLB_PDL=1" 30 120 EPLB_PDL=1 "$t" --gtest_filter="$pdl_tests"
done

echo "total: $(($(date +%s) - t0)) s, rc=$rc" | tee -a "$sum"
exit $rc
