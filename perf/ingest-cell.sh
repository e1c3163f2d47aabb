#!/usr/bin/env bash
# One ingest cell against a fresh tidemark, for quick A/B experiments
# (perf/ingest-matrix.sh runs the whole matrix and the peers):
#
#   perf/ingest-cell.sh FORMAT CONNS RATE SECONDS [--set key=value ...]
#   perf/ingest-cell.sh lp 4 0 10                          # as fast as possible
#   perf/ingest-cell.sh msgpack-columnar 4 310000 10 --set wal.io=uring
#
# tidemark (one shard core, fdatasync) is pinned to CPU $SERVER_CPU and
# tidemark-loadgen ($BATCH rows per request, default 1,000; TSBS cpu-only, 1,000 hosts, 2 s
# warm-up) to CPU $CLIENT_CPU. Prints the loadgen's report, the WAL's
# fdatasync count and seconds and the write route's request count and
# seconds (from /metrics), and the server's CPU seconds. RATE 0 = as fast as
# possible. FLUSH_RENICE=N renices the running flush threads to N (the same
# as --set flush.nice=N, for binaries without that key).
set -euo pipefail
FORMAT=$1 CONNS=$2 RATE=$3 SECONDS_=$4
shift 4
TIDEMARK_BIN=${TIDEMARK_BIN:-/var/tmp/tm/release/release/tidemark}
export -n TIDEMARK_BIN
LOADGEN_BIN=${LOADGEN_BIN:-/var/tmp/tm/release/release/tidemark-loadgen}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18190}
DIR=$(mktemp -d /var/tmp/ingest-cell.XXXXXX)
TIDEMARK_LOG=warn taskset -c "$SERVER_CPU" "$TIDEMARK_BIN" serve --data-dir "$DIR/data" \
  --http-addr 127.0.0.1:$PORT --set node.shard_cores=1 --set wal.sync_mode=fdatasync "$@" \
  >"$DIR/log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; sleep 0.1; done
if [[ -n ${FLUSH_RENICE:-} ]]; then
  for t in /proc/$PID/task/*; do
    grep -q tidemark-flush "$t/comm" && renice -n "$FLUSH_RENICE" -p "$(basename "$t")" >/dev/null
  done
fi
taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" --url http://127.0.0.1:$PORT --format "$FORMAT" \
  --batch-size "${BATCH:-1000}" --connections "$CONNS" --threads 1 --duration "$SECONDS_" --warmup 2 \
  --rate "$RATE" --series 1000 --schema cpu --database bench
curl -fsS http://127.0.0.1:$PORT/metrics | grep -E \
  '^tidemark_wal_fsync_duration_seconds_(count|sum)|^tidemark_http_request_duration_seconds_(count|sum)\{shard="0",route="write'
echo "server CPU s: $(awk '{print ($14 + $15) / 100}' /proc/$PID/stat)"
