#!/usr/bin/env python3
"""Top costs of a folded-stack profile (inferno-collapse-perf output).

Prints, as shares of all samples: samples per thread (the first frame),
the frames where time is spent (self), and the frames time is spent under
(inclusive: a stack counts once for every distinct frame in it). Used by
flamegraphs/record.sh; the README's "what it shows" is read off this.

    python3 perf/flame_top.py folded [--top 30]
"""

import argparse
import collections
import re


def short(frame, width=110):
    f = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    f = re.sub(r"<impl [^>]*>", "<impl>", f)
    return f if len(f) <= width else f[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folded")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    selfc = collections.Counter()
    incl = collections.Counter()
    threads = collections.Counter()
    total = 0
    for line in open(a.folded, errors="replace"):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(n)
        frames = stack.split(";")
        total += n
        # Thread names carry their number (iou-wrk-1234): group them.
        threads[re.sub(r"[-_]?\d+$", "", frames[0])] += n
        selfc[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    if not total:
        print("no samples")
        return
    pct = lambda n: f"{100.0 * n / total:5.1f}%"
    print(f"total weight: {total} (cpu-clock: ns of CPU time sampled)")
    print("\n## threads")
    for t, n in threads.most_common():
        print(f"{pct(n)}  {t}")
    print(f"\n## self (top {a.top})")
    for f, n in selfc.most_common(a.top):
        print(f"{pct(n)}  {short(f)}")
    print(f"\n## inclusive (top {a.top * 2}, frames under 100%)")
    shown = 0
    for f, n in incl.most_common():
        if n >= total * 0.995:
            continue
        print(f"{pct(n)}  {short(f)}")
        shown += 1
        if shown >= a.top * 2:
            break


if __name__ == "__main__":
    main()
