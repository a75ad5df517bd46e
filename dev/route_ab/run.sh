#!/usr/bin/env bash
# Same-run A/B of kernels/route_count.cu across revisions, on one GPU:
#   bash dev/route_ab/run.sh OUTDIR REV [REV...]
# REV is a git revision, or a path to a route_count.cu (e.g. the working
# tree's kernels/route_count.cu). Headers (eplb.h, eplb_device.cuh,
# launch.cuh) come from the working tree for every variant, so a revision
# whose kernels need other headers will not build here. Env passes through
# to the harness: ROUTE_AB_DECODE_ONLY=1, ROUTE_AB_LOAD_AWARE=1.
set -euo pipefail
out=$1
shift
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR REV [REV...]" >&2; exit 2; }
root=$(git rev-parse --show-toplevel)
mkdir -p "$out"
inc="$out/variants.inc"
: >"$inc"
table="static const Variant kVariants[] = {"
i=0
for rev in "$@"; do
  src="$out/rc_$i.cu"
  if [ -f "$rev" ]; then cp "$rev" "$src"; else git -C "$root" show "$rev:kernels/route_count.cu" >"$src"; fi
  cat >>"$inc" <<INC
namespace eplb {
namespace ab$i {
using kernels::kRouteHashMinItems;
using kernels::kRouteMaxSegments;
using kernels::kRouteTileItems;
}  // namespace ab$i
}  // namespace eplb
#define kernels ab$i
#include "rc_$i.cu"
#undef kernels
INC
  table="$table {\"$rev\", &eplb::ab$i::LaunchRouteCount},"
  i=$((i + 1))
done
echo "$table };" >>"$inc"
nvcc -std=c++17 -arch=sm_90 -O3 --fmad=false --expt-relaxed-constexpr -I"$root/include" \
  -I"$root/kernels" -I"$root/bench" -I"$out" -o "$out/route_ab" "$root/dev/route_ab/route_ab.cu"
"$out/route_ab" | tee "$out/route_ab.txt"
