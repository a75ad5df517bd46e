#!/usr/bin/env bash
# The kernels eplb may launch early (programmatic dependent launch,
# kernels/enqueue.cuh: the decode-size route+count kernels RouteSubKernel
# and the count kernel CountKernel) must not touch global memory before
# griddepcontrol.wait (SASS: ACQBULK), and must have no load on the
# read-only path (LDG...CONSTANT), which may be moved above it. Reads the
# library's SASS with cuobjdump, the code for sm_90 and up (older code has
# no wait and is never launched early). It checks instruction order, not
# control flow (a wait inside a branch would pass).
#   pdl_sass.sh LIBRARY CUOBJDUMP
# Exit 77 (skipped) where there is no cuobjdump, unless EPLB_REQUIRE_GPU=1.
set -euo pipefail
lib=$1
tool=${2:-}
if [ -z "$tool" ] || [ ! -x "$tool" ]; then
  echo "cuobjdump not found"
  [ "${EPLB_REQUIRE_GPU:-0}" = 1 ] && exit 1
  exit 77
fi
"$tool" -sass "$lib" | awk '
  /arch = sm_/ { split($3, a, "_"); arch = a[2] + 0; next }
  /Function :/ {
    if (pdl && !waited) { print "no ACQBULK in " name; bad = 1 }
    name = $3; waited = 0
    pdl = (arch >= 90 && name ~ /14RouteSubKernel|11CountKernel/)
    if (pdl) kernels++
    next
  }
  !pdl { next }
  /ACQBULK/ { waited = 1 }
  /CONSTANT/ { print "read-only-path load in " name ": " $0; bad = 1 }
  !waited && /(LDG|STG|REDG|ATOMG|LD\.E|ST\.E|ATOM\.E|RED\.E|UBLK|UTMA|SULD|SUST|SUATOM|TLD|TEX)/ {
    print "global access before the wait in " name ": " $0; bad = 1
  }
  END {
    if (pdl && !waited) { print "no ACQBULK in " name; bad = 1 }
    print kernels + 0, "kernels checked"
    if (kernels == 0) { print "no kernel found"; bad = 1 }
    exit bad
  }'
