#!/usr/bin/env python3
"""Renders the raw JSON lines of perf/ingest-matrix.sh as a markdown report.

Each input line is one tidemark-loadgen --json report plus `server`, `kind`
(`max` = as fast as possible, `half` = fixed rate at half the best rate) and
`server_cpu_s` (the server's user + system CPU seconds over the cell,
warm-up included). Rows per server-CPU-second = rows the server accepted
during the cell, warm-up included (`acked_rows_total`) / `server_cpu_s`.
"""

import argparse
import json
import sys

TARGETS = {"lp": 600e3, "msgpack-columnar": 2e6}
# p99 at half the format's maximum rate, by batch size (ms).
HALF_P99 = {1000: 10, 5000: 25}
VM_RATIO = 6


def fmt_int(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def label(r):
    c = r.get("compression", "none")
    return r.get("format", "?") + ("" if c in (None, "none") else f" + {c}")


def per_cpu(r):
    cpu = r.get("server_cpu_s") or 0
    return r.get("acked_rows_total", 0) / cpu if cpu > 0 else 0


def syncs(r):
    """tidemark's WAL fdatasyncs in the cell and their mean duration."""
    n = r.get("wal_fsyncs")
    return "-" if not n else f"{n:,}, {r['wal_fsync_avg_ms']:.2f}"


def one_line(r):
    l = r.get("latency_ms", {})
    return (f"{r['server']} {label(r)} batch {r.get('batch_size')} conns {r.get('connections')} "
            f"rate {r.get('rate')}: {fmt_int(r.get('rows_per_sec', 0))} rows/s, server CPU "
            f"{r['server_cpu_s']:.1f} s, p50 {l.get('p50')} ms, p99 {l.get('p99')} ms, "
            f"errors {r.get('errors')} {r.get('first_error') or ''}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        # One cell's JSON line on stdin: a log line.
        print(one_line(json.loads(sys.stdin.read())))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    for a in ["commit", "dirty", "date", "started", "finished", "load-before", "load-after",
              "duration", "warmup", "series", "server-cpu", "client-cpu", "versions"]:
        ap.add_argument("--" + a, default="")
    ap.add_argument("--schema", default="cpu")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.raw) if l.strip()]
    versions = {}
    try:
        for l in open(a.versions):
            v = json.loads(l)
            versions[v["server"]] = v["version"]
    except OSError:
        pass
    out = []
    p = out.append
    p(f"# Ingest matrix {a.date}, commit {a.commit}")
    p("")
    dirty = "" if a.dirty in ("", "0") else (
        f" **The work tree had {a.dirty} uncommitted change(s) under src/, shards/, "
        "perf/loadgen/ or Cargo.toml when this ran.**")
    p(f"`perf/ingest-matrix.sh`, {a.started}-{a.finished} UTC.{dirty}")
    p("")
    p("* Machine: 2 vCPU (Firecracker VM), kernel "
      f"{open('/proc/sys/kernel/osrelease').read().strip()}, ext4 on a virtio disk. "
      f"Server pinned to CPU {a.server_cpu}, tidemark-loadgen (one thread) to CPU "
      f"{a.client_cpu} (`taskset`), loopback.")
    p(f"* Load average before: `{a.load_before}`; after: `{a.load_after}`. "
      "The machine is shared with other engineers' builds: a load above ~2 means "
      "another process competed for the server's or the client's CPU, which lowers "
      "rows/s and inflates latency; rows per server-CPU-second is the steadier column.")
    rows_are = (f"TSBS cpu-only rows ({a.series} hosts, 10 tags, 10 float fields)"
                if a.schema == "cpu" else
                f"TSBS devops-like rows ({a.series} hosts, 10 tags; cpu with 10 float "
                "fields, mem, disk and net with 15 integer and 2 float fields between them, "
                "one row of each per host and round)")
    p(f"* Each cell: {a.warmup} s warm-up, then {a.duration} s measured; {rows_are}, "
      "recent timestamps, 64 distinct bodies cycled.")
    p("* rows/s: rows acknowledged (2xx) for requests sent after the warm-up / measured "
      "time. Server CPU: utime + stime of all the server's threads over the whole cell "
      "(warm-up included, so is background work such as flushes and compactions that ran "
      "during it). rows/CPU-s: every row acknowledged in the cell / server CPU seconds.")
    p("* WAL syncs (tidemark): the `fdatasync`s of WAL groups during the cell and their "
      "mean duration, from `tidemark_wal_fsync_duration_seconds`.")
    p("* Latency: per request, from send to the end of the response, HdrHistogram. "
      "In the half-rate cells it is counted from the scheduled send time (corrected for "
      "coordinated omission).")
    for s, v in versions.items():
        p(f"* {s}: {v}")
    p("* Durability differs: tidemark acknowledges after its WAL group is fdatasynced; "
      "InfluxDB 1.x after its WAL write (fsynced, `wal-fsync-delay = 0`); "
      "VictoriaMetrics buffers rows in memory and writes them to disk about every "
      "second, with no WAL (acknowledged rows can be lost on a crash).")
    p("")
    p("## As fast as possible")
    p("")
    p("| server | format | batch | conns | rows/s | server CPU s | rows/CPU-s | p50 ms | p99 ms | p99.9 ms | max ms | WAL syncs, avg ms | errors |")
    p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r["kind"] != "max":
            continue
        l = r.get("latency_ms", {})
        p(f"| {r['server']} | {label(r)} | {r.get('batch_size')} | {r.get('connections')} "
          f"| {fmt_int(r.get('rows_per_sec', 0))} | {r['server_cpu_s']:.1f} | {fmt_int(per_cpu(r))} "
          f"| {fmt_ms(l.get('p50'))} | {fmt_ms(l.get('p99'))} | {fmt_ms(l.get('p999'))} "
          f"| {fmt_ms(l.get('max'))} | {syncs(r)} | {r.get('errors', '?')} |")
    half = [r for r in rows if r["kind"] == "half"]
    if half:
        p("")
        p("## Fixed rate at half the best rate of the format")
        p("")
        p("| server | format | batch | conns | target rows/s | rows/s | rows/CPU-s | p50 ms | p99 ms | p99.9 ms | max ms | WAL syncs, avg ms | p99 target |")
        p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in half:
            l = r.get("latency_ms", {})
            goal = HALF_P99.get(r.get("batch_size"))
            ok = "-" if goal is None else (
                f"< {goal} ms: " + ("yes" if (l.get("p99") or 1e9) < goal else "**no**"))
            p(f"| {r['server']} | {r.get('format')} | {r.get('batch_size')} | {r.get('connections')} "
              f"| {fmt_int(r.get('rate', 0))} | {fmt_int(r.get('rows_per_sec', 0))} | {fmt_int(per_cpu(r))} "
              f"| {fmt_ms(l.get('p50'))} | {fmt_ms(l.get('p99'))} | {fmt_ms(l.get('p999'))} "
              f"| {fmt_ms(l.get('max'))} | {syncs(r)} | {ok} |")

    p("")
    p("## Targets (tidemark, one server core, the settings above)")
    p("")
    plain = lambda r: r.get("compression", "none") in (None, "none")
    tm = [r for r in rows if r["server"] == "tidemark" and r["kind"] == "max" and plain(r)]
    vm = {(r.get("batch_size"), r.get("connections")): r for r in rows
          if r["server"] == "victoria-metrics" and r["kind"] == "max" and plain(r)}
    for fmt, target in TARGETS.items():
        cells = [r for r in tm if r.get("format") == fmt]
        if not cells:
            continue
        best = max(cells, key=lambda r: r.get("rows_per_sec", 0))
        got = best.get("rows_per_sec", 0)
        p(f"* {fmt} >= {target / 1e6:g}M rows/s: best {fmt_int(got)} rows/s "
          f"(batch {best['batch_size']}, {best['connections']} conns): "
          + ("**met**" if got >= target else f"**missed** ({got / target:.0%} of the target)"))
    vm_half = [r for r in half if r["server"] == "victoria-metrics"]
    vm_best_half = min((r.get("latency_ms", {}).get("p99") or 1e9 for r in vm_half), default=None)
    for r in [r for r in half if r["server"] == "tidemark"]:
        p99 = r.get("latency_ms", {}).get("p99")
        goal = HALF_P99.get(r.get("batch_size"))
        if goal is None:
            continue
        vs = "" if vm_best_half is None else (
            f"; VictoriaMetrics' best half-rate p99 {fmt_ms(vm_best_half)} ms")
        met = p99 is not None and p99 < goal and (vm_best_half is None or p99 < vm_best_half)
        p(f"* p99 < {goal} ms at half the maximum rate, {r.get('format')} batch {r.get('batch_size')}: "
          f"p99 {fmt_ms(p99)} ms at {fmt_int(r.get('rows_per_sec', 0))} rows/s{vs}: "
          + ("**met**" if met else "**missed**"))
    cells = [r for r in rows if r["server"] == "tidemark" and plain(r)]
    if cells:
        lat = lambda r, k: r.get("latency_ms", {}).get(k)
        name = lambda r: f"{r.get('format')} {r.get('batch_size')}x{r.get('connections')} {r['kind']}"
        slow = [r for r in cells if (lat(r, "max") or 0) > 1000]
        p("* no request over 1 s in any tidemark cell: "
          + ("**met**" if not slow else "**missed** (" + ", ".join(
              f"{name(r)}: {fmt_ms(lat(r, 'max'))} ms" for r in slow) + ")"))
        wide = [r for r in cells if (lat(r, "p999") or 0) > 4 * (lat(r, "p99") or 1e9)]
        p("* p99.9 at most 4x p99 in every tidemark cell: "
          + ("**met**" if not wide else "**missed** (" + ", ".join(
              f"{name(r)}: {fmt_ms(lat(r, 'p999'))} vs {fmt_ms(lat(r, 'p99'))} ms"
              for r in wide) + ")"))
    ratios = []
    for r in tm:
        if r.get("format") != "lp":
            continue
        v = vm.get((r.get("batch_size"), r.get("connections")))
        if v and per_cpu(v) > 0:
            ratios.append((r, v, per_cpu(r) / per_cpu(v)))
    if ratios:
        p(f"* rows per server-CPU-second >= {VM_RATIO}x VictoriaMetrics (line protocol, same cell): "
          + ", ".join(f"batch {r['batch_size']}/{r['connections']} conns "
                      f"{fmt_int(per_cpu(r))} vs {fmt_int(per_cpu(v))} = {x:.1f}x"
                      for r, v, x in ratios)
          + (": **met**" if all(x >= VM_RATIO for _, _, x in ratios) else ": **missed**"))
        best_tm = max((per_cpu(r) for r in tm), default=0)
        best_vm = max((per_cpu(v) for v in vm.values()), default=0)
        if best_vm:
            p(f"  Best tidemark cell of any format vs best VictoriaMetrics cell: "
              f"{fmt_int(best_tm)} vs {fmt_int(best_vm)} = {best_tm / best_vm:.1f}x.")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
