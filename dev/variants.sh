# Shared by dev/route_ab and dev/route_timeline: each variant of
# kernels/route_count.cu is compiled into its own namespace of one binary.
#   variant_source ROOT REV OUT   -- REV: a path to a route_count.cu, or a
#                                    git revision; writes it to OUT (the
#                                    header's EplbBlockRoute is not in it)
#   variant_namespace NS FILE [DECL] -- prints the block that includes FILE
#                                    as namespace eplb::NS (DECL: extra
#                                    declarations in that namespace)
variant_source() {
  if [ -f "$2" ]; then cp "$2" "$3"; else git -C "$1" show "$2:kernels/route_count.cu" >"$3"; fi
}
#   variant_header ROOT REV OUT   -- the eplb_device.cuh that goes with REV:
#                                    the revision's own, or for a path the
#                                    working tree's
variant_header() {
  if [ -f "$2" ]; then
    cp "$1/include/eplb/eplb_device.cuh" "$3"
  else
    git -C "$1" show "$2:include/eplb/eplb_device.cuh" >"$3"
  fi
}
variant_namespace() {
  cat <<INC
namespace eplb {
namespace $1 {
using kernels::kRouteHashMinItems;
using kernels::kRouteMaxSegments;
using kernels::kRouteTileItems;
${3:-}
}  // namespace $1
}  // namespace eplb
#define kernels $1
#include "$2"
#undef kernels
INC
}
#   variant_init OUT              -- makes OUT with an empty variants.inc
#                                    and prints that file's path
variant_init() {
  mkdir -p "$1"
  : >"$1/variants.inc"
  echo "$1/variants.inc"
}
#   variant_build ROOT OUT MAIN BIN -- compiles MAIN (which includes
#                                    OUT/variants.inc) into OUT/BIN
variant_build() {
  nvcc -std=c++17 -arch=sm_90 -O3 --fmad=false --expt-relaxed-constexpr -I"$1/include" \
    -I"$1/kernels" -I"$1/bench" -I"$1" -I"$2" -o "$2/$4" "$3"
}
