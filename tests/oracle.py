"""Runs SQL queries with DuckDB over tidemark's Parquet files and prints the
results as JSON, timestamps as integer nanoseconds since the epoch.

usage: oracle.py <parquet root> <database> <measurement> < queries.json
"""
import datetime
import json
import sys

import duckdb

root, db, measurement = sys.argv[1:4]
queries = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
# DuckDB's date_trunc does not take nanosecond timestamps: the view casts
# `time` to microseconds (the test data has whole seconds, so no value changes).
con.execute(
    f"CREATE VIEW {measurement} AS SELECT * REPLACE (time::TIMESTAMPTZ AS time) "
    f"FROM read_parquet('{root}/{db}/{measurement}/**/*.parquet', union_by_name = true)"
)


def norm(v):
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        delta = v - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return v


out = []
for q in queries:
    rows = con.execute(q).fetchall()
    out.append([[norm(v) for v in r] for r in rows])
print(json.dumps(out))
