"""Query benchmark: the same TSBS-style queries on tidemark (over HTTP) and on
DuckDB (the PyPI package, in-process) over the same Parquet files, in one run;
prints a table with the median time of each and the ratio tidemark / DuckDB.

usage: query_bench.py <tidemark url> <parquet root> <database> [runs]
The node must already hold the data, flushed (perf/query-bench.sh does it).
"""
import json
import statistics
import sys
import time
import urllib.request

import duckdb

url, root, db = sys.argv[1:4]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5

con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(
    f"CREATE VIEW cpu AS SELECT * REPLACE (time::TIMESTAMPTZ AS time) "
    f"FROM read_parquet('{root}/{db}/cpu/**/*.parquet', union_by_name = true)"
)
lo, hi = con.execute("SELECT min(time), max(time) FROM cpu").fetchone()
mid = lo + (hi - lo) / 2
frm = mid.strftime("%Y-%m-%dT%H:%M:%SZ")
to = (mid + (hi - lo) / 4).strftime("%Y-%m-%dT%H:%M:%SZ")

QUERIES = {
    "count(*)": "SELECT count(*) FROM cpu",
    "lastpoint": "SELECT c.hostname, c.usage_user FROM cpu c JOIN (SELECT hostname, max(time) AS t FROM cpu GROUP BY hostname) l "
                 "ON c.hostname = l.hostname AND c.time = l.t ORDER BY c.hostname",
    "single-groupby-1-1-12": f"SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE hostname = 'host_7' "
                             f"AND time >= '{frm}' AND time < '{to}' GROUP BY 1 ORDER BY 1",
    "double-groupby-1": f"SELECT date_trunc('hour', time) AS h, hostname, avg(usage_user) FROM cpu "
                        f"WHERE time >= '{frm}' AND time < '{to}' GROUP BY 1, 2 ORDER BY 1, 2",
    "groupby-orderby-limit": f"SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE time < '{to}' "
                             f"GROUP BY 1 ORDER BY 1 DESC LIMIT 5",
    "high-cpu-all": f"SELECT count(*) FROM cpu WHERE usage_user > 90.0 AND time >= '{frm}' AND time < '{to}'",
    "count-per-hour": "SELECT date_trunc('hour', time) AS h, count(*) FROM cpu GROUP BY 1 ORDER BY 1",
}


def tidemark(sql):
    req = urllib.request.Request(
        f"{url}/api/v1/query",
        data=json.dumps({"sql": sql}).encode(),
        headers={"x-arc-database": db, "Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        body = json.loads(r.read())
    assert body["success"], body
    return time.perf_counter() - t, body["row_count"]


def duck(sql):
    t = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return time.perf_counter() - t, len(rows)


total = con.execute("SELECT count(*) FROM cpu").fetchone()[0]
print(f"rows: {total}, window {frm} .. {to}, median of {runs} runs after one warm-up\n")
print("| query | tidemark ms | DuckDB ms | ratio | rows |")
print("|---|---:|---:|---:|---:|")
for name, sql in QUERIES.items():
    tidemark(sql)
    duck(sql)
    t = [tidemark(sql) for _ in range(runs)]
    d = [duck(sql) for _ in range(runs)]
    tm = statistics.median(x[0] for x in t) * 1000
    dm = statistics.median(x[0] for x in d) * 1000
    assert t[0][1] == d[0][1], f"{name}: {t[0][1]} rows vs {d[0][1]}"
    print(f"| {name} | {tm:.1f} | {dm:.1f} | {tm / dm:.2f} | {t[0][1]} |")
