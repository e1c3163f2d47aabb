#!/usr/bin/env python3
"""Control core benchmarks (issue #11), real processes on loopback.

Three voters (node 1 a writer, nodes 2 and 3 readers), one shard core each,
Raft log on disk with fdatasync.

1. Commits: state changes (`PUT /api/v1/cluster/compactor`, which commits
   one Raft entry on three voters before it answers) sent to the leader,
   one at a time (latency) and from 8 threads (throughput). HdrHistogram.
2. Failure detection: kill -9 a follower; time until the leader's
   `/api/v1/cluster` shows it `dead`. Restart it, wait until healthy.
3. Leader election: kill -9 the leader; time until both other nodes name
   the same new leader. Restart it, wait until the three agree.

Usage: perf/cluster_bench.py BIN COMMITS ROUNDS
Prints a markdown report.
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from hdrh.histogram import HdrHistogram

# Set by main() (or by a bench that imports this module).
BIN = "tidemark"
COMMITS = 2000
ROUNDS = 20
SECRET = "bench-secret"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Node:
    def __init__(self, root, nid, seeds):
        self.id = nid
        self.dir = os.path.join(root, f"n{nid}")
        os.makedirs(self.dir, exist_ok=True)
        self.http = free_port()
        self.ctrl = free_port()
        self.args = [
            BIN, "serve", "--data-dir", os.path.join(self.dir, "data"),
            "--http-addr", f"127.0.0.1:{self.http}", "--shard-cores", "1",
            "--set", f"cluster.role={'writer' if nid == 1 else 'reader'}",
            "--set", f"cluster.node_id={nid}",
            "--set", f"cluster.secret={SECRET}",
            "--set", f"cluster.control_addr=127.0.0.1:{self.ctrl}",
            "--set", "node.pin_cores=false",
        ]
        if nid == 1:
            self.args += ["--set", f"replication.listen_addr=127.0.0.1:{free_port()}"]
        if seeds:
            self.args += ["--set", "cluster.seeds=" + ",".join(seeds)]
        self.proc = None

    def start(self):
        log = open(os.path.join(self.dir, "log"), "a")
        env = dict(os.environ, TIDEMARK_LOG="warn")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def req(self, method, path, body=None, timeout=5):
        c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=timeout)
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def view(self):
        try:
            st, body = self.req("GET", "/api/v1/cluster", timeout=1)
            return json.loads(body) if st == 200 else None
        except OSError:
            return None


def wait(what, f, timeout=60, every=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v is not None:
            return v
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def agreed(nodes):
    views = [n.view() for n in nodes]
    if any(v is None for v in views):
        return None
    leaders = {v.get("leader_id") for v in views}
    if len(leaders) != 1 or None in leaders:
        return None
    for v in views:
        ns = v.get("nodes", [])
        if len(ns) != 3 or any(x["state"] != "healthy" for x in ns):
            return None
        if sorted(x["id"] for x in ns if x["raft_member"] == "voter") != [1, 2, 3]:
            return None
    return views[0]


def pct(h, q):
    return h.get_value_at_percentile(q) / 1000.0


def main():
    global BIN, COMMITS, ROUNDS
    BIN = sys.argv[1]
    COMMITS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    root = tempfile.mkdtemp(prefix="tidemark-cluster-bench-")
    n1 = Node(root, 1, [])
    nodes = [n1]
    n1.start()
    wait("node 1", lambda: n1.view())
    for nid in (2, 3):
        n = Node(root, nid, [f"127.0.0.1:{n1.ctrl}"])
        n.start()
        nodes.append(n)
    v = wait("three voters", lambda: agreed(nodes))
    by_id = {n.id: n for n in nodes}
    leader = by_id[v["leader_id"]]

    # 1. Commits, one at a time, on the leader.
    h = HdrHistogram(1, 60_000_000, 3)
    t0 = time.monotonic()
    for i in range(COMMITS):
        s = time.monotonic()
        st, body = leader.req("PUT", "/api/v1/cluster/compactor",
                              json.dumps({"node_id": 1 + i % 3}))
        assert st == 200, body
        h.record_value(int((time.monotonic() - s) * 1e6))
    seq_rate = COMMITS / (time.monotonic() - t0)
    # From 8 threads.
    hc = HdrHistogram(1, 60_000_000, 3)
    lock = threading.Lock()
    per = COMMITS // 8

    def worker(k):
        for i in range(per):
            s = time.monotonic()
            st, body = leader.req("PUT", "/api/v1/cluster/compactor",
                                  json.dumps({"node_id": 1 + (i + k) % 3}))
            assert st == 200, body
            with lock:
                hc.record_value(int((time.monotonic() - s) * 1e6))

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    conc_rate = per * 8 / (time.monotonic() - t0)

    # 2. kill -9 a follower -> dead on the leader.
    to_dead = []
    for _ in range(ROUNDS):
        v = wait("agreement", lambda: agreed(nodes))
        leader = by_id[v["leader_id"]]
        victim = next(n for n in nodes if n is not leader and n.id != 1) \
            if leader.id == 1 else next(n for n in nodes if n is not leader)
        s = time.monotonic()
        victim.kill9()

        def dead():
            lv = leader.view()
            if lv is None:
                return None
            for x in lv["nodes"]:
                if x["id"] == victim.id and x["state"] == "dead":
                    return True
            return None
        wait("dead", dead)
        to_dead.append(time.monotonic() - s)
        victim.start()

    # 3. kill -9 the leader -> a new leader on the other two.
    to_leader = []
    for _ in range(ROUNDS):
        v = wait("agreement", lambda: agreed(nodes))
        leader = by_id[v["leader_id"]]
        rest = [n for n in nodes if n is not leader]
        s = time.monotonic()
        leader.kill9()

        def elected():
            vs = [n.view() for n in rest]
            if any(x is None for x in vs):
                return None
            ls = {x.get("leader_id") for x in vs}
            if len(ls) == 1 and None not in ls and leader.id not in ls:
                return True
            return None
        wait("new leader", elected)
        to_leader.append(time.monotonic() - s)
        leader.start()
    wait("agreement", lambda: agreed(nodes))
    for n in nodes:
        n.kill9()
    shutil.rmtree(root, ignore_errors=True)

    def ms(xs, f):
        return f"{f(xs) * 1000:.0f}"

    print("| measurement | result |")
    print("|---|---|")
    print(f"| commits, one at a time (HTTP on the leader → 3 voters) | {seq_rate:.0f}/s, "
          f"p50 {pct(h, 50):.2f} ms, p99 {pct(h, 99):.2f} ms, max {h.get_max_value() / 1000:.2f} ms |")
    print(f"| commits, 8 clients | {conc_rate:.0f}/s, p50 {pct(hc, 50):.2f} ms, "
          f"p99 {pct(hc, 99):.2f} ms |")
    print(f"| kill -9 of a follower → `dead` on the leader ({ROUNDS} runs) | "
          f"p50 {ms(to_dead, statistics.median)} ms, max {ms(to_dead, max)} ms |")
    print(f"| kill -9 of the leader → new leader on both others ({ROUNDS} runs) | "
          f"p50 {ms(to_leader, statistics.median)} ms, max {ms(to_leader, max)} ms |")


if __name__ == "__main__":
    main()
