#!/usr/bin/env bash
# Per-block timeline of route+count builds at decode sizes, on one GPU:
#   bash dev/route_timeline/run.sh OUTDIR SRC [SRC...]
# SRC is a git revision or a path to a route_count.cu; each is instrumented
# by instrument.py (stamps at entry, slot stored, exit) against the working
# tree's headers and timed by timeline.cu. Prints one line per size and
# variant.
set -euo pipefail
out=$1
shift
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR SRC [SRC...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
mkdir -p "$out"
inc="$out/variants.inc"
: >"$inc"
table="static const Variant kVariants[] = {"
i=0
for src in "$@"; do
  raw="$out/src_$i.cu"
  if [ -f "$src" ]; then cp "$src" "$raw"; else git -C "$root" show "$src:kernels/route_count.cu" >"$raw"; fi
  python3 "$here/instrument.py" "$raw" "$out/tl_$i.cu"
  cat >>"$inc" <<INC
namespace eplb {
namespace tl$i {
using kernels::kRouteHashMinItems;
using kernels::kRouteMaxSegments;
using kernels::kRouteTileItems;
__device__ TlRec tl_arr[kMaxBlocks][kMaxWarps];
}  // namespace tl$i
}  // namespace eplb
#define kernels tl$i
#include "tl_$i.cu"
#undef kernels
INC
  table="$table {\"$src\", &eplb::tl$i::LaunchRouteCount, &eplb::tl$i::tl_arr},"
  i=$((i + 1))
done
echo "$table };" >>"$inc"
nvcc -std=c++17 -arch=sm_90 -O3 --fmad=false --expt-relaxed-constexpr -I"$root/include" \
  -I"$root/kernels" -I"$root/bench" -I"$out" -o "$out/timeline" "$here/timeline.cu"
"$out/timeline" | tee "$out/timeline.txt"
