#!/usr/bin/env python3
"""Median table from results/*.jsonl: python3 summarize.py results/raw.jsonl [more.jsonl ...]"""
import json, sys, statistics as st
rs = [json.loads(l) for f in sys.argv[1:] for l in open(f)]
keys = sorted({(r["case"], r["mode"]) for r in rs}, key=lambda k: (["big", "small", "pipe"].index(k[0]), k[1]))
print("| case | mode | runs | req/s | body MB/s | server CPU s / 10 s | req per server-CPU-s | p50 / p90 (pipe) |")
print("|---|---|---|---|---|---|---|---|")
for c, m in keys:
    x = [r for r in rs if r["case"] == c and r["mode"] == m]
    med = lambda k: st.median(r[k] for r in x)
    lat = ""
    if c == "pipe":
        def ms(v):
            return float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-2]) if v.endswith("ms") else float(v[:-1]) * 1000
        lat = f"{st.median(ms(r['lat']['50']) for r in x):.2f} / {st.median(ms(r['lat']['90']) for r in x):.2f} ms"
    print(f"| {c} | {m} | {len(x)} | {med('rps'):,.0f} | {med('body_MBps'):,.1f} | {med('srv_cpu_s'):.2f} | {med('req_per_cpu_s'):,.0f} | {lat} |")
