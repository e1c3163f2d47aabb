#!/usr/bin/env python3
"""Runs the http-compare matrix with wrk and writes results/raw.jsonl + prints a median table.

Usage: python3 bench.py [--runs 3] [--duration 10] [--modes hyper,httparse,...] [--cases big,small,pipe]
Server: pinned to CPU 0 by itself; wrk: taskset -c 1 wrk -t1.
Modes: httparse | hyper (frame-by-frame body) | hyper-collect (BodyExt::collect) |
       hyper-timer (frames + MonoioTimer header_read_timeout 30s) |
       hyper-compat (frames, monoio_compat::StreamWrapper = io_uring ops instead of poll-io)
"""
import argparse, json, os, re, resource, subprocess, sys, time, statistics

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = "/tmp/target-httpcmp/release/http-compare"
TICK = os.sysconf("SC_CLK_TCK")
PORT = 18090
MODES = {
    "httparse": ["--mode", "httparse"],
    "hyper": ["--mode", "hyper"],
    "hyper-collect": ["--mode", "hyper", "--hyper-body", "collect"],
    "hyper-timer": ["--mode", "hyper", "--hyper-timer", "30"],
    "hyper-compat": ["--mode", "hyper", "--hyper-io", "compat"],
}
BIG = os.path.join(HERE, "wrk/body_5000.lp")
ONE = os.path.join(HERE, "wrk/body_1.lp")
CASES = {  # name: (connections, body file, script, extra wrk args, pipeline depth)
    "big": (4, BIG, "post_file.lua", [], 1),
    "small": (64, ONE, "post_file.lua", [], 1),
    "pipe": (64, ONE, "post_pipeline.lua", ["--latency"], 16),
}

def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime (fields 14, 15)

def sys_busy():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v), v[3] + v[4]  # total, idle+iowait

def to_num(s):
    m = re.match(r"([\d.]+)([kMG]?)", s)
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]

def wrk(conns, body, script, extra, dur, depth):
    env = dict(os.environ, BODY_FILE=body, DEPTH=str(depth))
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--timeout", "10s", *extra,
           "-s", os.path.join(HERE, "wrk", script), f"http://127.0.0.1:{PORT}/write"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cmd, out, wrk_cpu

def one_run(mode, case, dur, run):
    conns, body, script, extra, depth = CASES[case]
    srv = subprocess.Popen(["taskset", "-c", "0", BIN, *MODES[mode], "--port", str(PORT)],
                           stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)
    wrk(conns, body, script, [], 2, depth)  # warm-up, not measured
    load = open("/proc/loadavg").read().split()[0]
    c0, (t0, i0) = cpu_ticks(srv.pid), sys_busy()
    cmd, out, wrk_cpu = wrk(conns, body, script, extra, dur, depth)
    c1, (t1, i1) = cpu_ticks(srv.pid), sys_busy()
    srv.terminate(); err = srv.communicate()[1]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    lat = {k: v for k, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    body_bytes = os.path.getsize(body)
    srv_cpu = (c1 - c0) / TICK
    r = dict(mode=mode, case=case, run=run, conns=conns, depth=depth, duration=dur,
             rps=rps, body_MBps=rps * body_bytes / 1e6, srv_cpu_s=srv_cpu,
             req_per_cpu_s=rps * dur / srv_cpu if srv_cpu else None, wrk_cpu_s=wrk_cpu,
             machine_busy_pct=100.0 * (1 - (i1 - i0) / (t1 - t0)), loadavg1=float(load),
             non2xx=int(errs.group(1)) if errs else 0, socket_errors=sockerr.group(1) if sockerr else "",
             lat=lat, cmd=" ".join(cmd), wrk_out=out, server_stderr=err[-400:])
    return r

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--modes", default="httparse,hyper")
    ap.add_argument("--cases", default="big,small,pipe")
    ap.add_argument("--out", default=os.path.join(HERE, "results/raw.jsonl"))
    a = ap.parse_args()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    res = []
    with open(a.out, "a") as f:
        for run in range(1, a.runs + 1):          # interleave modes so drifting load hits both
            for case in a.cases.split(","):
                for mode in a.modes.split(","):
                    r = one_run(mode, case, a.duration, run)
                    f.write(json.dumps(r) + "\n"); f.flush()
                    res.append(r)
                    print(f"run{run} {case:5} {mode:13} rps={r['rps']:>10.0f} MB/s={r['body_MBps']:7.1f} "
                          f"srvCPU={r['srv_cpu_s']:5.2f}s req/CPUs={r['req_per_cpu_s'] or 0:>10.0f} "
                          f"wrkCPU={r['wrk_cpu_s']:5.2f}s busy={r['machine_busy_pct']:5.1f}% load={r['loadavg1']} "
                          f"non2xx={r['non2xx']} sockerr='{r['socket_errors']}' p50={r['lat'].get('50','')} p99={r['lat'].get('99','')}",
                          flush=True)
    print("\nmedians:")
    for case in a.cases.split(","):
        for mode in a.modes.split(","):
            rs = [r for r in res if r["mode"] == mode and r["case"] == case]
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"{case:5} {mode:13} rps={med('rps'):>10.0f} MB/s={med('body_MBps'):7.1f} "
                  f"req/CPUs={med('req_per_cpu_s'):>10.0f} srvCPU={med('srv_cpu_s'):5.2f}s busy={med('machine_busy_pct'):5.1f}%")

main()
