#!/usr/bin/env bash
# Fetches a ROWS-row result (default 1M: TSBS cpu-only, 1,000 hosts, every
# row distinct, flushed) from a fresh release node through Flight SQL,
# PostgreSQL binary, HTTP Arrow and HTTP JSON in one run
# (perf/protocol_bench.py), with the server's CPU time for each.
# Writes the table to perf/results/<date>-<commit>-protocols.md.
#
# Settings (environment): ROWS, RUNS (default 3), THREADS (query.threads,
# default 1), PORT, CARGO_TARGET_DIR (binaries in
# ${CARGO_TARGET_DIR:-target}/release), BUILD=0 to use the binaries built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
RUNS=${RUNS:-3}
THREADS=${THREADS:-1}
PORT=${PORT:-18800}
PG_PORT=$((PORT + 10))
FLIGHT_PORT=$((PORT + 11))
BATCH=10000
BIN=${CARGO_TARGET_DIR:-target}/release
python3 -c 'import adbc_driver_flightsql, pyarrow, psycopg' 2>/dev/null ||
  python3 -m pip install -q adbc-driver-flightsql pyarrow "psycopg[binary]"
COMMIT=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- Cargo.toml Cargo.lock src shards perf/loadgen; then
  COMMIT="$COMMIT+dirty"
fi
if [ "${BUILD:-1}" != 0 ]; then
  cargo build --release -p tidemark -p tidemark-loadgen
fi
DATA=$(mktemp -d)
NODE=
cleanup() {
  if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT
"$BIN/tidemark" serve --data-dir "$DATA" --http-addr 127.0.0.1:$PORT \
  --set wal.sync_mode=none --set query.threads="$THREADS" --set query.max_rows=10000000 \
  --set query.timeout_ms=600000 --set pg.addr=127.0.0.1:$PG_PORT \
  --set flight.addr=127.0.0.1:$FLIGHT_PORT >"$DATA/node.log" 2>&1 &
NODE=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.2; done
curl -sf 127.0.0.1:$PORT/ready >/dev/null || { cat "$DATA/node.log"; exit 1; }
"$BIN/tidemark-loadgen" --url http://127.0.0.1:$PORT --format msgpack-columnar \
  --batch-size $BATCH --connections 1 --rows "$ROWS" --warmup 0 --series 1000 \
  --start-time 1767225600000000000 --interval-ms 10000 --database bench \
  --pool $(((ROWS + BATCH - 1) / BATCH)) >/dev/null
curl -sf -XPOST 127.0.0.1:$PORT/api/v1/flush >/dev/null
mkdir -p perf/results
OUT=${OUT:-perf/results/$(date -u +%F)-$COMMIT-protocols.md}
{
  echo "# Query protocols, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "\`perf/protocol-bench.sh\` (ROWS=$ROWS RUNS=$RUNS THREADS=$THREADS): one release node" \
    "(query.threads=$THREADS, one shard core), \`SELECT * FROM cpu\` over $ROWS flushed TSBS rows" \
    "(1,000 hosts, 10 tags, 10 fields), clients in Python 3 on the same machine. $(nproc) CPUs;" \
    "load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/protocol_bench.py "$NODE" "$PORT" "$PG_PORT" "$FLIGHT_PORT" bench "SELECT * FROM cpu" "$RUNS"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
