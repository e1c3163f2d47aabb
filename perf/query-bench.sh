#!/usr/bin/env bash
# Loads ROWS rows (default 10M, TSBS cpu-only, 1,000 hosts, one row per host
# every 10 s from 2026-01-01T00:00:00Z, every row distinct) into a fresh
# release node with tidemark-loadgen, flushes, then runs perf/query_bench.py:
# the same queries on tidemark and on DuckDB over the same Parquet files.
# Writes the table to perf/results/<date>-<commit>-query.md.
#
# Settings (environment): ROWS, RUNS (timed runs per query, default 5),
# THREADS (query.threads and DuckDB's threads, default 2), PORT,
# CARGO_TARGET_DIR (binaries in ${CARGO_TARGET_DIR:-target}/release),
# BUILD=0 to use the binaries already built, OUT to choose the output file,
# KEEP=1 to leave the node running and its data in place afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
RUNS=${RUNS:-5}
THREADS=${THREADS:-2}
PORT=${PORT:-18700}
BATCH=10000
BIN=${CARGO_TARGET_DIR:-target}/release
python3 -c 'import duckdb, pytz' 2>/dev/null || python3 -m pip install -q duckdb pytz
COMMIT=$(git rev-parse --short HEAD)
# The binaries are built from the work tree: say so if it differs from HEAD.
if ! git diff --quiet HEAD -- Cargo.toml Cargo.lock src shards perf/loadgen; then
  COMMIT="$COMMIT+dirty"
fi
if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release -p tidemark -p tidemark-loadgen
fi
DATA=$(mktemp -d)
NODE=
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: node pid $NODE on 127.0.0.1:$PORT, data in $DATA" >&2
    return
  fi
  if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT
"$BIN/tidemark" serve --data-dir "$DATA" --http-addr 127.0.0.1:$PORT \
  --set wal.sync_mode=none --set query.threads="$THREADS" --set query.max_rows=10000000 \
  --set query.timeout_ms=600000 >"$DATA/node.log" 2>&1 &
NODE=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.2; done
curl -sf 127.0.0.1:$PORT/ready >/dev/null || { cat "$DATA/node.log"; exit 1; }
# One connection over a pool of ROWS/BATCH distinct bodies: every row is sent
# once (several connections start at neighbouring pool offsets and so would
# send the same bodies more than once).
"$BIN/tidemark-loadgen" --url http://127.0.0.1:$PORT --format msgpack-columnar \
  --batch-size $BATCH --connections 1 --rows "$ROWS" --warmup 0 --series 1000 \
  --start-time 1767225600000000000 --interval-ms 10000 --database bench \
  --pool $(((ROWS + BATCH - 1) / BATCH))
curl -sf -XPOST 127.0.0.1:$PORT/api/v1/flush >/dev/null
mkdir -p perf/results
OUT=${OUT:-perf/results/$(date -u +%F)-$COMMIT-query.md}
{
  echo "# Query bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "\`perf/query-bench.sh\` (ROWS=$ROWS RUNS=$RUNS THREADS=$THREADS): tidemark release build" \
    "(query.threads=$THREADS, one shard core) over HTTP/JSON vs DuckDB" \
    "$(python3 -c 'import duckdb; print(duckdb.__version__)') in-process (threads=$THREADS)," \
    "same Parquet files ($(find "$DATA/parquet" -name '*.parquet' | wc -l) files," \
    "$(du -sh "$DATA/parquet" | cut -f1)). $(nproc) CPUs; load average before the queries:" \
    "$(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/query_bench.py http://127.0.0.1:$PORT "$DATA/parquet" bench "$RUNS" "$THREADS"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
