#!/usr/bin/env bash
# Same-run A/B of kernels/route_count.cu across revisions, on one GPU:
#   bash dev/route_ab/run.sh OUTDIR REV [REV...]
# REV is a git revision, or a path to a route_count.cu (e.g. the working
# tree's kernels/route_count.cu). Headers (eplb.h, eplb_device.cuh,
# launch.cuh) come from the working tree for every variant, so a revision
# whose kernels need other headers will not build here; but a revision
# that routes with the header's EplbBlockRoute gets its own revision's
# copy of that function inlined (dev/route_ab/inline.py), and a path does
# not (inline a baseline for a header change yourself, dev/README.md). Env passes through
# to the harness: ROUTE_AB_DECODE_ONLY=1, ROUTE_AB_LOAD_AWARE=1.
# The decode floors (an empty kernel, a copy of the ids) run in 512-item
# blocks at every size, whatever shape the variants launch.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR REV [REV...]" >&2; exit 2; }
out=$1
shift
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
source "$root/dev/variants.sh"
inc=$(variant_init "$out")
table="static const Variant kVariants[] = {"
i=0
for rev in "$@"; do
  variant_source "$root" "$rev" "$out/rc_$i.cu"
  # A revision routes with its own header's EplbBlockRoute, inlined (every
  # variant builds against the working tree's headers).
  if [ ! -f "$rev" ] && grep -q "EplbBlockRoute<kWarps, kEarlier, kMaxExperts" "$out/rc_$i.cu"; then
    variant_header "$root" "$rev" "$out/hdr_$i.cuh"
    python3 "$root/dev/route_ab/inline.py" "$out/hdr_$i.cuh" "$out/rc_$i.cu" "$out/rc_$i.cu"
  fi
  variant_namespace "ab$i" "rc_$i.cu" >>"$inc"
  table="$table {\"$rev\", &eplb::ab$i::LaunchRouteCount},"
  i=$((i + 1))
done
echo "$table };" >>"$inc"
variant_build "$root" "$out" "$root/dev/route_ab/route_ab.cu" route_ab
"$out/route_ab" | tee "$out/route_ab.txt"
