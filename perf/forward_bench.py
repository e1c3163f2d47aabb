#!/usr/bin/env python3
"""The forwarding path (issue #13), end to end, direct and forwarded in one
run, real processes on loopback.

A cluster of two nodes: node 1 the primary writer (1 shard core, fdatasync,
pinned to CPU 0), node 2 a reader (1 shard core, pinned to CPU 1, with
tidemark-loadgen on CPU 1 too). For each format, tidemark-loadgen (5,000-row
batches, 4 connections) writes for DURATION s

* direct: to the writer;
* forwarded: to the reader, which forwards every request to the writer
  (body passed through as received, over its keep-alive connections).

Reported: rows/s, p50/p99 request latency (from loadgen's HdrHistogram),
the forwarded/direct ratio, and the CPU seconds the forwarding node spent
per million rows. Arc's own figure for the same comparison: 8.8M vs 11.4M
rows/s, 0.77x (seed 003).

Usage: perf/forward_bench.py BIN LOADGEN DURATION_S
Prints a markdown report.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import cluster_bench as cb
from cluster_bench import free_port, wait
from replication_bench import cpu_seconds

BIN, LOADGEN = sys.argv[1], sys.argv[2]
DURATION = float(sys.argv[3]) if len(sys.argv) > 3 else 15
cb.BIN = BIN


class PNode(cb.Node):
    def __init__(self, root, nid, seeds, cpu):
        super().__init__(root, nid, seeds)
        self.args = ["taskset", "-c", str(cpu)] + self.args
        self.args += ["--set", "wal.sync_mode=fdatasync"]


def loadgen(port, fmt):
    cmd = ["taskset", "-c", "1", LOADGEN, "--url", f"http://127.0.0.1:{port}", "--format", fmt,
           "--batch-size", "5000", "--connections", "4", "--duration", str(DURATION),
           "--warmup", "1", "--series", "1000", "--database", f"bench_{fmt.replace('-', '_')}",
           "--json"]
    return json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)


def main():
    root = tempfile.mkdtemp(prefix="tidemark-forward-bench-")
    n1 = PNode(root, 1, [], 0)
    n1.start()
    wait("node 1", lambda: n1.view())
    n2 = PNode(root, 2, [f"127.0.0.1:{n1.ctrl}"], 1)
    n2.start()

    def ready():
        v = n2.view()
        if v and v.get("primary_writer") == 1 and len(v.get("nodes", [])) == 2 \
                and all(x["state"] == "healthy" for x in v["nodes"]):
            return v
        return None
    wait("two nodes and a primary", ready)
    rows = []
    for fmt in ("lp", "msgpack-columnar"):
        direct = loadgen(n1.http, fmt)
        c0 = cpu_seconds(n2.proc.pid)
        fwd = loadgen(n2.http, fmt)
        fwd_cpu = cpu_seconds(n2.proc.pid) - c0
        rows.append((fmt, direct, fwd, fwd_cpu))
    for n in (n1, n2):
        n.kill9()
    shutil.rmtree(root, ignore_errors=True)

    print("| format | path | rows/s | p50 ms | p99 ms | errors | forwarding node CPU s per 1M rows |")
    print("|---|---|---|---|---|---|---|")
    for fmt, d, f, cpu in rows:
        print(f"| {fmt} | direct (to the writer) | {d['rows_per_sec']:,.0f} | "
              f"{d['latency_ms']['p50']:.2f} | {d['latency_ms']['p99']:.2f} | {d['errors']} | – |")
        per_m = cpu / (f["acked_rows_total"] / 1e6) if f["acked_rows_total"] else 0
        print(f"| {fmt} | forwarded (to the reader) | {f['rows_per_sec']:,.0f} | "
              f"{f['latency_ms']['p50']:.2f} | {f['latency_ms']['p99']:.2f} | {f['errors']} | "
              f"{per_m:.3f} |")
        print(f"| {fmt} | forwarded / direct | {f['rows_per_sec'] / d['rows_per_sec']:.2f}x | | | | |")


if __name__ == "__main__":
    main()
