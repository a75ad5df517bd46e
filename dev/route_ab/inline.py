#!/usr/bin/env python3
"""Inlines a header's EplbBlockRoute into a copy of kernels/route_count.cu.

  inline.py HDR RC OUT

OUT is RC with HDR's EplbBlockRoute (include/eplb/eplb_device.cuh) copied
in under another name and called instead of the header's. HDR and RC must
agree on kStageTables (added in 038af62): a file that passes it needs a
header that takes it, and a header that takes it a file that passes it.
Every variant of dev/route_ab builds against the working tree's header,
so this is how a variant keeps the function of its own revision
(dev/variants.sh does it for a revision given by name; checked with the
headers and files of f117bd4, 8d91112, ab5390c and d73193f); the baseline
for a change to the header is `inline.py include/eplb/eplb_device.cuh
kernels/route_count.cu base.cu` run before the change.
dev/route_timeline/instrument.py uses the same functions."""
import re
import sys

SIGNATURE = re.compile(
    r"template <int kWarps, int kEarlierPerThread = 0, int kMaxExperts = 1024,"
    r"(\s+bool kStageTables = \(kWarps >= 16\),)?\s+typename IdT>\n"
    r"__device__ __forceinline__ int32_t EplbBlockRoute\(.*?\n}\n", re.S)
CALL = re.compile(r"EplbBlockRoute<kWarps, kEarlier, kMaxExperts(, kStage)?>\(")
ANCHOR = "template <typename IdT, int kWarps, int kEarlier, int kMaxExperts"


def extract(hdr, name):
    """HDR's EplbBlockRoute renamed to NAME, without its default arguments."""
    m = SIGNATURE.search(hdr)
    if m is None:
        sys.exit("inline: EplbBlockRoute not found in the header")
    fn = m.group(0).replace("EplbBlockRoute(", name + "(")
    fn = fn.replace(" = 0, int kMaxExperts = 1024", ", int kMaxExperts")
    return fn.replace(" kStageTables = (kWarps >= 16)", " kStageTables"), m.group(1) is not None


def inline(hdr, rc, name, edit=lambda fn: fn):
    """RC calling NAME, HDR's function passed through EDIT, in place of the header's."""
    call = CALL.search(rc)
    if call is None:
        sys.exit("inline: the file does not call EplbBlockRoute<kWarps, kEarlier, kMaxExperts...>")
    fn, staged = extract(hdr, name)
    if staged and call.group(1) is None:
        sys.exit("inline: the header stages by a template argument the file does not pass")
    if not staged and call.group(1) is not None:
        sys.exit("inline: the file passes kStageTables to a header that does not take it")
    i = rc.index(ANCHOR)
    rc = rc[:i] + edit(fn) + "\n" + rc[i:]
    return rc.replace(call.group(0), call.group(0).replace("EplbBlockRoute", name), 1)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: inline.py HDR RC OUT")
    hdr, rc = open(sys.argv[1]).read(), open(sys.argv[2]).read()
    open(sys.argv[3], "w").write(inline(hdr, rc, "InlinedBlockRoute"))
