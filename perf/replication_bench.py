#!/usr/bin/env python3
"""Replication benchmarks (issue #5), real processes on loopback.

1. Writer ingest throughput with 0, 1 and 2 readers attached: the writer
   (one shard core) pinned to CPU 0; readers and tidemark-loadgen share CPU 1.
   Rows/s, p99 request latency, and rows per writer-CPU-second; afterwards
   every reader is checked to hold the writer's row count.
2. Freshness: with the writer loaded at half its measured maximum (fixed
   rate), a probe writes one row at a time to the writer and, from its 204,
   polls a reader with SQL until the row is visible. Percentiles from an
   HdrHistogram (PyPI `hdrhistogram`). The time includes the reader's query
   latency, which is measured separately and reported too.

Usage: perf/replication_bench.py BIN LOADGEN DURATION_S PROBES
Prints a markdown report.
"""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from hdrh.histogram import HdrHistogram

BIN, LOADGEN = sys.argv[1], sys.argv[2]
DURATION = float(sys.argv[3]) if len(sys.argv) > 3 else 15
PROBES = int(sys.argv[4]) if len(sys.argv) > 4 else 500
SECRET = "bench-secret"


def free_port_pair():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 1))
            t.close()
            return p
        except OSError:
            t.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Node:
    def __init__(self, root, name, cpu, args):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.port = free_port_pair()
        self.log = open(os.path.join(self.dir, "log"), "w")
        cmd = ["taskset", "-c", str(cpu), BIN, "serve", "--data-dir", os.path.join(self.dir, "data"),
               "--http-addr", f"127.0.0.1:{self.port}", "--shard-cores", "1",
               "--set", "node.pin_cores=false", "--set", f"cluster.secret={SECRET}",
               "--set", "replication.heartbeat_ms=200", "--set", "replication.reconnect_ms=50"] + args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 60
        while True:
            try:
                if self.get("/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{name} did not start: see {self.dir}/log")
            time.sleep(0.05)
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def get(self, path):
        return self.request("GET", path)

    def keepalive(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return self.conn

    def metric(self, name):
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def count(self, db, table):
        body = json.dumps({"sql": f"SELECT count(*) FROM {table}"})
        st, data = self.request("POST", "/api/v1/query", body, {"x-arc-database": db})
        if st != 200:
            return 0
        return json.loads(data)["data"][0][0]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def writer_args(repl):
    return ["--set", "cluster.role=writer", "--set", f"replication.listen_addr=127.0.0.1:{repl}"]


def reader_args(repl, i):
    return ["--set", "cluster.role=reader", "--set", f"cluster.node_id=reader-{i}",
            "--set", f"replication.writer_addr=127.0.0.1:{repl}"]


def start(root, readers):
    repl = free_port_pair()
    w = Node(root, "writer", 0, writer_args(repl))
    rs = [Node(root, f"reader{i}", 1, reader_args(repl, i)) for i in range(readers)]
    deadline = time.time() + 30
    while w.metric("tidemark_replication_connected") < readers:
        if time.time() > deadline:
            raise RuntimeError("readers did not connect")
        time.sleep(0.05)
    return w, rs


def loadgen(w, rate=0.0, duration=DURATION):
    cmd = ["taskset", "-c", "1", LOADGEN, "--url", f"http://127.0.0.1:{w.port}", "--format", "lp",
           "--batch-size", "5000", "--connections", "4", "--duration", str(duration),
           "--warmup", "1", "--series", "1000", "--database", "bench", "--json"]
    if rate:
        cmd += ["--rate", str(rate)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def throughput(readers):
    root = tempfile.mkdtemp(prefix="tm-repl-")
    try:
        w, rs = start(root, readers)
        cpu0 = cpu_seconds(w.proc.pid)
        out = json.loads(loadgen(w).communicate()[0])
        cpu = cpu_seconds(w.proc.pid) - cpu0
        total = w.count("bench", "cpu")
        t0 = time.time()
        for r in rs:
            while r.count("bench", "cpu") != total:
                if time.time() - t0 > 120:
                    raise RuntimeError("a reader did not catch up")
                time.sleep(0.1)
        catchup = time.time() - t0
        for n in [w] + rs:
            n.stop()
        return {
            "readers": readers,
            "rows_per_sec": out["rows_per_sec"],
            "p99_ms": out["latency_ms"]["p99"],
            "errors": out["errors"],
            "writer_cpu_s": cpu,
            "rows_per_writer_cpu_s": out["acked_rows_total"] / cpu if cpu else 0,
            "rows": total,
            "catchup_s": catchup,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def freshness(readers, rate):
    root = tempfile.mkdtemp(prefix="tm-fresh-")
    try:
        w, rs = start(root, readers)
        bg = loadgen(w, rate=rate, duration=max(DURATION, PROBES / 40 + 5))
        time.sleep(1.5)
        r = rs[0]
        fresh = HdrHistogram(1, 60_000_000, 3)  # microseconds
        query = HdrHistogram(1, 60_000_000, 3)
        wc = w.keepalive()
        rc = r.keepalive()
        sql_for = lambda i: json.dumps({"sql": f"SELECT count(*) FROM probe WHERE v = {i}"})
        for i in range(PROBES):
            line = f"probe,p=x v={i} {time.time_ns()}\n"
            wc.request("POST", "/write?db=fresh", line)
            resp = wc.getresponse()
            resp.read()
            if resp.status != 204:
                raise RuntimeError(f"probe write: {resp.status}")
            t0 = time.perf_counter()
            while True:
                q0 = time.perf_counter()
                rc.request("POST", "/api/v1/query", sql_for(i), {"x-arc-database": "fresh"})
                qr = rc.getresponse()
                data = qr.read()
                q1 = time.perf_counter()
                if qr.status == 200 and json.loads(data)["data"][0][0] == 1:
                    fresh.record_value(max(1, int((q1 - t0) * 1e6)))
                    break
                if q1 - t0 > 10:
                    raise RuntimeError(f"probe {i} not visible after 10 s")
            # A query of a row already there: the polling cost alone.
            q0 = time.perf_counter()
            rc.request("POST", "/api/v1/query", sql_for(i), {"x-arc-database": "fresh"})
            rc.getresponse().read()
            query.record_value(max(1, int((time.perf_counter() - q0) * 1e6)))
            time.sleep(0.02)
        bg.kill()
        bg.wait()
        for n in [w] + rs:
            n.stop()
        q = lambda h, p: h.get_value_at_percentile(p) / 1000
        return {
            "readers": readers,
            "rate": rate,
            "probes": PROBES,
            "fresh_p50_ms": q(fresh, 50), "fresh_p99_ms": q(fresh, 99), "fresh_max_ms": fresh.get_max_value() / 1000,
            "query_p50_ms": q(query, 50), "query_p99_ms": q(query, 99),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    runs = [throughput(n) for n in (0, 1, 2)]
    base = runs[0]["rows_per_sec"]
    print("### Writer ingest with readers attached\n")
    print("| readers | rows/s | vs 0 readers | p99 ms | errors | writer CPU s | rows per writer-CPU-s | readers caught up in s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['readers']} | {r['rows_per_sec']:,.0f} | {r['rows_per_sec'] / base:.2f}x | {r['p99_ms']:.2f} | {r['errors']} "
              f"| {r['writer_cpu_s']:.2f} | {r['rows_per_writer_cpu_s']:,.0f} | {r['catchup_s']:.2f} |")
    half = base / 2
    print(f"\n### Freshness: writer 204 to visible on a reader, writer loaded at {half:,.0f} rows/s (half of the 0-reader maximum)\n")
    print("| readers | probes | p50 ms | p99 ms | max ms | reader query alone p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (1, 2):
        f = freshness(n, half)
        print(f"| {f['readers']} | {f['probes']} | {f['fresh_p50_ms']:.2f} | {f['fresh_p99_ms']:.2f} | {f['fresh_max_ms']:.2f} "
              f"| {f['query_p50_ms']:.2f} | {f['query_p99_ms']:.2f} |")


if __name__ == "__main__":
    main()
