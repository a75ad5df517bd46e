#!/usr/bin/env python3
"""Replica balance of eplbRouteCount's replica rules on real routing.

Reads the shared DeepSeek-V2-Lite top-k trace ($EPLB_DATA_DIR/traces/
deepseek-v2-lite/topk/, 64 experts, top-6), concatenates its 20 prompts in
prompt order into one batch per layer (7,755 tokens in all) and takes the
first T tokens. Each layer gets its own placement: 8 redundant slots (64 ->
72, as DeepSeek-V3's 256 -> 288), each given to the expert with the most
items per replica in that batch (a planner that saw the batch itself). Then
every expert's items are spread over its replicas by each rule, and the
script prints, over the 26 layers, the median and the worst of the largest
|replica share - items / replicas| of any replicated expert, in items and
as a percentage of items / replicas.

Rules: "rank" is eplbRouteCount's below EPLB_ROUTE_HASH_MIN_ITEMS (segments
of up to 4096 items, ranks in item order within a segment, replica
(rank + segment) mod count); "rank/Z" the same with segments of Z items
(what a kernel that ranks within each block of Z items, with no count of the
segment's earlier blocks, would give); "hash" is the hash path's
floor(EplbItemHash(i) * count / 2^32) applied at every size.

    EPLB_DATA_DIR=../shared python3 dev/route_balance.py
"""
import collections
import glob
import math
import os
import statistics


def read_topk(path):
    layers, cur = {}, None
    with open(path) as f:
        for line in f:
            if line.startswith("#") or line.startswith("eplb-topk") or line.startswith("layers "):
                continue
            if line.startswith("layer "):
                cur = int(line.split()[1])
                layers[cur] = []
                continue
            v = line.split()
            if v:
                layers[cur].append([int(x) for x in v])
    return layers


def segments(n, tile, max_segs=528):
    s = max(1, min(math.ceil(n / tile), max_segs))
    z = math.ceil(n / s)
    return (z + 31) // 32 * 32


def spread(ids, cnt, rule):
    share = collections.Counter()
    if rule == "hash":
        for i, e in enumerate(ids):
            share[(e, (((i * 0x9E3779B9) & 0xFFFFFFFF) * cnt[e]) >> 32)] += 1
        return share
    z = segments(len(ids), 4096) if rule == "rank" else int(rule.split("/")[1])
    seen = collections.Counter()
    for i, e in enumerate(ids):
        if i % z == 0:
            seen.clear()
        share[(e, (seen[e] + i // z) % cnt[e])] += 1
        seen[e] += 1
    return share


def worst(ids, rule, extra=8, experts=64):
    load = collections.Counter(ids)
    cnt = {e: 1 for e in range(experts)}
    for _ in range(extra):
        e = max(range(experts), key=lambda x: (load[x] / cnt[x], -x))
        cnt[e] += 1
    share = spread(ids, cnt, rule)
    items = pct = 0.0
    for e in range(experts):
        if cnt[e] < 2:
            continue
        mean = load[e] / cnt[e]
        for j in range(cnt[e]):
            d = abs(share[(e, j)] - mean)
            items, pct = max(items, d), max(pct, 100 * d / mean)
    return items, pct


def main():
    root = os.environ.get("EPLB_DATA_DIR")
    if not root:
        raise SystemExit("set EPLB_DATA_DIR to the shared data folder")
    files = glob.glob(os.path.join(root, "traces/deepseek-v2-lite/topk/*.txt"))
    files.sort(key=lambda p: int(os.path.basename(p)[1:5]))  # prompt order
    traces = [read_topk(p) for p in files]
    rules = ["rank", "rank/2048", "rank/512", "hash"]
    total = sum(len(t[0]) for t in traces)
    print("tokens  items  rule        worst replica off its share, median / worst of 26 layers")
    for T in (1024, 2048, 4096, total):
        for rule in rules:
            res = []
            for layer in range(26):
                toks = [row for t in traces for row in t[layer]][:T]
                res.append(worst([e for row in toks for e in row], rule))
            med_i = statistics.median(r[0] for r in res)
            med_p = statistics.median(r[1] for r in res)
            w = max(res, key=lambda r: r[1])
            print(f"{T:6d} {6 * T:6d}  {rule:10s}  {med_i:5.1f} items {med_p:5.2f}% / "
                  f"{w[0]:5.1f} items {w[1]:5.2f}%")


if __name__ == "__main__":
    main()
