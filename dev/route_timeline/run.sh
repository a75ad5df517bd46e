#!/usr/bin/env bash
# Per-block timeline of route+count builds at decode sizes, on one GPU:
#   bash dev/route_timeline/run.sh OUTDIR SRC [SRC...]
# SRC is a git revision or a path to a route_count.cu; each is instrumented
# by instrument.py (stamps at entry, after barrier 1, loads landed, after
# barrier 2, slot stored, exit; the middle three where the file routes with
# the header's EplbBlockRoute, instrumented from the revision's own header,
# or the working tree's for a path) against the working tree's headers and
# timed by timeline.cu. Prints one line per size and variant.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR SRC [SRC...]" >&2; exit 2; }
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
source "$root/dev/variants.sh"
inc=$(variant_init "$out")
table="static const Variant kVariants[] = {"
i=0
for src in "$@"; do
  variant_source "$root" "$src" "$out/src_$i.cu"
  variant_header "$root" "$src" "$out/hdr_$i.cuh"  # a revision's own header
  python3 "$here/instrument.py" "$out/src_$i.cu" "$out/tl_$i.cu" "$out/hdr_$i.cuh"
  variant_namespace "tl$i" "tl_$i.cu" "__device__ TlRec tl_arr[kMaxBlocks][kMaxWarps];" >>"$inc"
  table="$table {\"$src\", &eplb::tl$i::LaunchRouteCount, &eplb::tl$i::tl_arr},"
  i=$((i + 1))
done
echo "$table };" >>"$inc"
variant_build "$root" "$out" "$here/timeline.cu" timeline
"$out/timeline" | tee "$out/timeline.txt"
