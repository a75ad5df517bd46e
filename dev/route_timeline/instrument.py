#!/usr/bin/env python3
"""Instruments a copy of kernels/route_count.cu for dev/route_timeline.

  instrument.py SRC OUT [HEADER]

Stamps (TL_AT(k), defined by timeline.cu): 0 at the start of
RouteSubKernel, 4 right after the item's slot is stored, 5 at its end.
When SRC calls the header's EplbBlockRoute, a renamed copy of it from
HEADER (default: the working tree's include/eplb/eplb_device.cuh) is put
into the file with stamp 4 and also 1 (after barrier 1), 2 (the staged
tables stored: the global loads have landed; where the block does not
stage, kStageTables false, this is right after stamp 1 and tells nothing)
and 3 (after barrier 2); a file that routes with a function of its own
gets stamp 4 in it. A file that does not pass kStageTables cannot take
today's header (its default would change what the file measured)."""
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(root, "dev", "route_ab"))
from inline import inline  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
hdr_path = sys.argv[3] if len(sys.argv) > 3 else None
s = open(src).read()
store = "  if (slot_out != nullptr) *slot_out = slot;\n"
if "EplbBlockRoute<kWarps, kEarlier, kMaxExperts" in s:
    if hdr_path is None:
        hdr_path = os.path.join(root, "include", "eplb", "eplb_device.cuh")

    def stamp(fn):
        if store not in fn:
            sys.exit("instrument.py: the slot store was not found in EplbBlockRoute")
        fn = fn.replace(store, store + "  TL_AT(4);\n", 1)
        # Inside the header's function also: after barrier 1, once the staged
        # tables are stored (the loads have landed), after barrier 2.
        sync = "  __syncthreads();\n"
        a = fn.index(sync) + len(sync)
        fn = fn[:a] + "  TL_AT(1);\n" + fn[a:]
        ors = "  // 2. Each lane ORs"
        a = fn.index(ors)
        fn = fn[:a] + "  TL_AT(2);\n" + fn[a:]
        a = fn.index(sync, a) + len(sync)
        return fn[:a] + "  TL_AT(3);\n" + fn[a:]

    s = inline(open(hdr_path).read(), s, "TlBlockRoute", stamp)
elif store in s:
    s = s.replace(store, store + "  TL_AT(4);\n", 1)
else:
    sys.exit("instrument.py: no slot store to stamp in " + src)
k = s.index("RouteSubKernel(")
entry = "  extern __shared__ int4 smem4[];\n"
e = s.index(entry, k) + len(entry)
s = s[:e] + "  TL_AT(0);\n" + s[e:]
end = "      atomicAdd(d_invalid, static_cast<unsigned long long>(__popc(bad)));\n  }\n}\n"
j = s.index(end, e) + len(end) - 2
s = s[:j] + "  TL_AT(5);\n" + s[j:]
open(out, "w").write(s)
