#!/usr/bin/env python3
"""Writer failover time (issue #12), real processes on loopback, defaults.

Three voters, one shard core each: nodes 1 and 2 writers, node 3 a reader,
each with a replication port (so each may be promoted) and
`replication.min_acks = 1`; every other setting is the default (heartbeat
500 ms, dead after 2,500 ms, primary lease 2,000 ms, election timeout
500 ms). A client writes one row at a time to the primary, following
`x-tidemark-primary` (with a 0.5 s timeout; a node that did not answer is
not asked again for a second). Each round kills (-9) or stops (SIGSTOP) the primary,
and measures the time from the fault to the first 2xx from the new primary;
the old primary is then restarted (or continued) and rejoins. Rounds are
split by whether the primary was also the Raft leader (then a new leader is
elected first): before every other pair of rounds a planned hand-over makes
the Raft leader the primary (or, before the others, another node). Each
fault comes at least `cluster.failover_cooldown_ms` (5 s) after the last
failover, which would otherwise hold the next one back.

Usage: perf/failover_bench.py BIN ROUNDS
Prints a markdown report.
"""
import http.client
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

import cluster_bench as cb
from cluster_bench import free_port, wait

ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
cb.BIN = sys.argv[1]


class FNode(cb.Node):
    def __init__(self, root, nid, seeds):
        super().__init__(root, nid, seeds)
        role = "reader" if nid == 3 else "writer"
        self.args += [
            "--set", f"cluster.role={role}",
            "--set", f"replication.listen_addr=127.0.0.1:{free_port()}",
            "--set", "replication.min_acks=1",
        ]


def agreed(nodes):
    v = cb.agreed(nodes)
    if v is None or v.get("primary_writer") is None:
        return None
    views = [n.view() for n in nodes]
    if any(x is None or x.get("primary_writer") != v["primary_writer"] for x in views):
        return None
    return v


class Client:
    """Writes rows one at a time to whoever is primary; records 2xx times."""

    def __init__(self, nodes):
        self.ports = {n.http: n.id for n in nodes}
        self.target = nodes[0].http
        self.acks = []  # (monotonic time, node id, epoch)
        self.stop = False
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        i = 0
        ports = list(self.ports)
        turn = 0
        # A node that did not answer is not asked again for a second, even
        # if another node still names it primary (it may not know yet).
        silent_until = {}
        while not self.stop:
            body = f"t,c=bench id={i}i {1_700_000_000_000_000_000 + i}\n"
            i += 1
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.target, timeout=0.5)
                c.request("POST", "/api/v1/write/line-protocol?db=bench", body=body)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 204:
                    with self.lock:
                        self.acks.append((time.monotonic(), self.ports[self.target],
                                          int(r.getheader("x-tidemark-writer-epoch"))))
                    continue
                hint = r.getheader("x-tidemark-primary")
                port = int(hint.rsplit(":", 1)[1]) if hint else None
                if port in self.ports and silent_until.get(port, 0) < time.monotonic():
                    self.target = port
                    continue
            except OSError:
                silent_until[self.target] = time.monotonic() + 1.0
            turn += 1
            self.target = ports[turn % len(ports)]
            time.sleep(0.02)

    def first_after(self, t, not_node, epoch):
        with self.lock:
            for at, node, e in self.acks:
                if at > t and node != not_node and e > epoch:
                    return at
        return None


def main():
    root = tempfile.mkdtemp(prefix="tidemark-failover-bench-")
    n1 = FNode(root, 1, [])
    n1.start()
    wait("node 1", lambda: n1.view())
    nodes = [n1]
    for nid in (2, 3):
        n = FNode(root, nid, [f"127.0.0.1:{n1.ctrl}"])
        n.start()
        nodes.append(n)
    by_id = {n.id: n for n in nodes}
    wait("three voters and a primary", lambda: agreed(nodes))
    client = Client(nodes)
    results = []  # (fault, primary was leader, seconds)
    for r in range(ROUNDS):
        v = wait("agreement", lambda: agreed(nodes), timeout=120)
        # Half the rounds with the primary also the Raft leader (a planned
        # hand-over to the leader first), half with it not.
        want_leader = (r // 2) % 2 == 1
        if (v["leader_id"] == v["primary_writer"]) != want_leader:
            leader = v["leader_id"]
            target = leader if want_leader else next(
                n.id for n in nodes if n.id != leader and n.id != v["primary_writer"])
            st, body = by_id[leader].req("POST", "/api/v1/cluster/failover",
                                         f'{{"target": {target}}}')
            assert st == 202, body
            wait("the hand-over", lambda: (lambda x: x if x and x["primary_writer"] == target
                                           else None)(agreed(nodes)), timeout=120)
            v = wait("agreement", lambda: agreed(nodes), timeout=120)
        # A failure right after a failover waits out the cooldown
        # (cluster.failover_cooldown_ms, 5 s): measure apart from it.
        left = v.get("last_failover_ms", 0) / 1000 + 5.2 - time.time()
        if left > 0:
            time.sleep(left)
        v = wait("agreement", lambda: agreed(nodes), timeout=120)
        old = by_id[v["primary_writer"]]
        was_leader = v["leader_id"] == old.id
        epoch = v["writer_epoch"]
        # Let the client reach the primary first.
        n0 = len(client.acks)
        wait("writes", lambda: True if len(client.acks) > n0 + 20 else None)
        fault = "kill -9" if r % 2 == 0 else "SIGSTOP"
        t = time.monotonic()
        if fault == "kill -9":
            old.kill9()
        else:
            old.proc.send_signal(signal.SIGSTOP)
        at = wait("a 2xx from a new primary",
                  lambda: client.first_after(t, old.id, epoch), timeout=120, every=0.005)
        results.append((fault, was_leader, at - t))
        if fault == "kill -9":
            old.start()
        else:
            time.sleep(0.5)
            old.proc.send_signal(signal.SIGCONT)
    client.stop = True
    client.t.join()
    for n in nodes:
        n.kill9()
    shutil.rmtree(root, ignore_errors=True)

    def row(name, xs):
        if not xs:
            return f"| {name} | 0 | – | – |"
        return (f"| {name} | {len(xs)} | {statistics.median(xs) * 1000:.0f} ms | "
                f"{max(xs) * 1000:.0f} ms |")

    print("| fault (primary killed → first 2xx from the new primary) | rounds | p50 | max |")
    print("|---|---|---|---|")
    print(row("all rounds", [s for _, _, s in results]))
    for fault in ("kill -9", "SIGSTOP"):
        for leader in (False, True):
            xs = [s for f, l, s in results if f == fault and l == leader]
            who = "primary was also the Raft leader" if leader else "primary was not the Raft leader"
            print(row(f"{fault}, {who}", xs))


if __name__ == "__main__":
    main()
