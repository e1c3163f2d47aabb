#!/usr/bin/env bash
# Loads ROWS rows (default 10M, TSBS cpu-only, 1,000 hosts) into a fresh
# release node with tidemark-loadgen, flushes, then runs perf/query_bench.py:
# the same queries on tidemark and on DuckDB over the same Parquet files.
# Writes the table to perf/results/<date>-<commit>-query.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
PORT=${PORT:-18700}
python3 -c 'import duckdb, pytz' 2>/dev/null || python3 -m pip install -q duckdb pytz
cargo build --release -p tidemark -p tidemark-loadgen
DATA=$(mktemp -d)
trap 'kill $NODE 2>/dev/null; rm -rf "$DATA"' EXIT
target/release/tidemark serve --data-dir "$DATA" --http-addr 127.0.0.1:$PORT \
  --set wal.sync_mode=none --set query.threads=2 --set query.max_rows=10000000 \
  >"$DATA/node.log" 2>&1 &
NODE=$!
until curl -sf 127.0.0.1:$PORT/ready >/dev/null; do sleep 0.2; done
target/release/tidemark-loadgen --url http://127.0.0.1:$PORT --format msgpack-columnar \
  --batch-size 10000 --connections 4 --rows "$ROWS" --warmup 0 --series 1000 \
  --interval-ms 10000 --database bench --pool 100
curl -sf -XPOST 127.0.0.1:$PORT/api/v1/flush >/dev/null
mkdir -p perf/results
OUT=perf/results/$(date -u +%F)-$(git rev-parse --short HEAD)-query.md
{
  echo "# Query bench, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
  echo
  echo "ROWS=$ROWS; tidemark release, query.threads=2; DuckDB $(python3 -c 'import duckdb; print(duckdb.__version__)') in-process; same Parquet files"
  echo
  python3 perf/query_bench.py http://127.0.0.1:$PORT "$DATA/parquet" bench ${RUNS:-5}
} | tee "$OUT"
