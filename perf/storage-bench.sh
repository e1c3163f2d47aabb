#!/usr/bin/env bash
# Storage over time, measured (perf/results/<date>-<commit>-storage.md):
#
#  A. ROWS rows (default 10M, TSBS cpu-only, 1,000 hosts every 10 s, every
#     row distinct) written as about 1,000 small flushes (buffer.flush_rows
#     = ROWS/1000, checked every 20 ms, the load paced at LOAD_RATE rows/s so
#     each flush takes about one request), so every query reads ~1,000 files.
#  B. The same node's data, copied, compacted (`POST /api/v1/compact`, no
#     rate limit): compaction throughput in rows/s on its one thread.
#  C. B plus 1% of the points written again (same series and times, new
#     values), flushed: the scan merges the overlapping files.
#  D. As A with requests of 10,500 rows: a flush can end in the middle of a
#     10 s step, so neighbouring files share a timestamp (other hosts), and
#     the scan runs its dedup path over files without a repeated point.
#  For A, B, C: perf/query_bench.py, tidemark vs DuckDB, 2 threads each,
#  DuckDB over the compacted files of B (every point once); for D, DuckDB
#  over D's own files (no point twice there). Results checked equal. Then E: ingest p99 (line protocol, RATE rows/s, one
#  connection) into a node with A's files, with and without a compaction
#  of them running (default compaction settings: nice 10, 64 MiB/s).
#
# Settings: ROWS, RUNS (default 5), THREADS (2), RATE (default 100000),
# LOAD_RATE (default 200000),
# CARGO_TARGET_DIR (binaries in ${CARGO_TARGET_DIR:-target}/release),
# BUILD=0 to use the binaries already built, OUT for the output file.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
RUNS=${RUNS:-5}
THREADS=${THREADS:-2}
RATE=${RATE:-100000}
LOAD_RATE=${LOAD_RATE:-200000}
BATCH=10000
PORT=18750
BIN=${CARGO_TARGET_DIR:-target}/release
python3 -c 'import duckdb, pytz' 2>/dev/null || python3 -m pip install -q duckdb pytz
COMMIT=$(git rev-parse --short HEAD)
if ! git diff --quiet HEAD -- Cargo.toml src shards perf/loadgen; then COMMIT="$COMMIT+dirty"; fi
if [ "${BUILD:-1}" != 0 ]; then cargo build --release -p tidemark -p tidemark-loadgen; fi
WORK=$(mktemp -d)
PIDS=()
# The nodes run inside the `{ ... } | tee` subshell: their pids go to a file
# too, so the trap (in this shell) can stop any left running.
cleanup() {
  local rc=$?
  for p in $(cat "$WORK/pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  if [ "$rc" != 0 ]; then tail -n 20 "$WORK"/*.log >&2 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# start <name> <port> [--set k=v ...]: a release node on $WORK/<name>.
start() {
  local name=$1 port=$2; shift 2
  "$BIN/tidemark" serve --data-dir "$WORK/$name" --http-addr 127.0.0.1:$port \
    --set wal.sync_mode=none --set query.threads="$THREADS" --set query.max_rows=10000000 \
    --set query.timeout_ms=600000 --set compaction.enabled=false "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  echo $! >>"$WORK/pids"
  for _ in $(seq 300); do curl -sf 127.0.0.1:$port/ready >/dev/null && return; sleep 0.2; done
  cat "$WORK/$name.log"; exit 1
}
stop() { kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'; }
load() { # load <port> <rows> <batch> [start ns] [rate]
  "$BIN/tidemark-loadgen" --url http://127.0.0.1:$1 --format msgpack-columnar \
    --batch-size "$3" --connections 1 --rows "$2" --warmup 0 --series 1000 --rate "${5:-0}" \
    --start-time "${4:-1767225600000000000}" --interval-ms 10000 --database bench \
    --pool $((($2 + $3 - 1) / $3)) --json >"$WORK/load.json"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["errors"] == 0, r' "$WORK/load.json"
  curl -sf -XPOST 127.0.0.1:$1/api/v1/flush >/dev/null
}
files() { find "$1" -name '*.parquet' | wc -l; }
bench() { # bench <port> <title> [DuckDB's parquet root]
  echo "### $2"
  echo
  echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/query_bench.py http://127.0.0.1:$1 "${3:-$WORK/compacted}" bench "$RUNS" "$THREADS"
  echo
}

FLUSH_ROWS=$((ROWS / 1000))
mkdir -p perf/results
OUT=${OUT:-perf/results/$(date -u +%F)-$COMMIT-storage.md}
{
  echo "# Storage bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "\`perf/storage-bench.sh\` (ROWS=$ROWS RUNS=$RUNS THREADS=$THREADS RATE=$RATE): release build," \
    "one shard core, DuckDB $(python3 -c 'import duckdb; print(duckdb.__version__)') in-process," \
    "$(nproc) CPUs."
  echo
  # A: 1,000 small flushes.
  start a $PORT --set buffer.flush_rows=$FLUSH_ROWS --set flush.check_interval_ms=20
  load $PORT "$ROWS" $BATCH 1767225600000000000 "$LOAD_RATE"
  A_FILES=$(files "$WORK/a/parquet"); A_BYTES=$(du -sb "$WORK/a/parquet" | cut -f1)
  stop
  # B: a copy, compacted with no rate limit.
  cp -r "$WORK/a" "$WORK/b"
  start b $((PORT + 1)) --set compaction.bytes_per_second=0
  T0=$(date +%s.%N)
  curl -sf -XPOST 127.0.0.1:$((PORT + 1))/api/v1/compact >"$WORK/compact.json"
  T1=$(date +%s.%N)
  cp -r "$WORK/b/parquet" "$WORK/compacted"
  B_FILES=$(files "$WORK/compacted"); B_BYTES=$(du -sb "$WORK/compacted" | cut -f1)
  python3 - "$WORK/compact.json" "$T0" "$T1" "$ROWS" "$A_FILES" "$A_BYTES" "$B_FILES" "$B_BYTES" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); t = float(sys.argv[3]) - float(sys.argv[2]); rows = int(sys.argv[4])
af, ab, bf, bb = map(int, sys.argv[5:9])
print(f"Compaction of A's files ({af} files, {ab/2**20:.0f} MiB, {ab/rows:.1f} B/row) into {bf} files "
      f"({bb/2**20:.0f} MiB, {bb/rows:.1f} B/row): {len(r['jobs'])} jobs, {r['rows_deduplicated']} rows merged, "
      f"{t:.1f} s wall, **{rows/t/1e6:.2f}M rows/s** on the one compaction thread "
      f"(jobs' own time {sum(j['seconds'] for j in r['jobs']):.1f} s).")
PY
  echo
  bench $((PORT + 1)) "B. After compaction ($B_FILES files)"
  # C: 1% of the points again, with new values.
  DUP=$((ROWS / 100))
  load $((PORT + 1)) "$DUP" $BATCH 1767225600000000000
  curl -sf -H 'x-arc-database: bench' -d '{"sql":"EXPLAIN SELECT count(*) FROM cpu"}' \
    127.0.0.1:$((PORT + 1))/api/v1/query | grep -o 'files_merged=[0-9]*' | head -1 | sed 's/^/C plan: /'
  echo
  bench $((PORT + 1)) "C. B + 1% of the points written again ($(files "$WORK/b/parquet") files; DuckDB over B's compacted files)"
  stop
  # A's queries (the node again on its files).
  start a $PORT
  bench $PORT "A. $A_FILES files from small flushes, no repeated point"
  stop
  # D: flushes that share their edge timestamps.
  start d $((PORT + 2)) --set buffer.flush_rows=$FLUSH_ROWS --set flush.check_interval_ms=20
  load $((PORT + 2)) "$ROWS" 10500 1767225600000000000 "$LOAD_RATE"
  curl -sf -H 'x-arc-database: bench' -d '{"sql":"EXPLAIN SELECT count(*) FROM cpu"}' \
    127.0.0.1:$((PORT + 2))/api/v1/query | grep -o 'files_merged=[0-9]*' | head -1 | sed 's/^/D plan: /'
  echo
  for i in 1 2; do
    curl -s -o /dev/null -w "D count(*) query $i: %{time_total} s\n" -H 'x-arc-database: bench' \
      -d '{"sql":"SELECT count(*) FROM cpu"}' 127.0.0.1:$((PORT + 2))/api/v1/query
  done
  curl -sf -H 'x-arc-database: bench' -d '{"sql":"EXPLAIN SELECT hostname FROM cpu"}' \
    127.0.0.1:$((PORT + 2))/api/v1/query | grep -o 'files_merged=[0-9]*' | head -1 | sed 's/^/D plan after a merge found no repeat: /'
  echo
  bench $((PORT + 2)) "D. $(files "$WORK/d/parquet") files whose edges share a timestamp, no repeated point (DuckDB over the same files)" "$WORK/d/parquet"
  stop
  # E: ingest p99 with and without a compaction running (A's files, default limits).
  cp -r "$WORK/a" "$WORK/e"
  start e $PORT
  echo "### E. Ingest while compacting"
  echo
  echo "Line protocol, $RATE rows/s, 1,000-row requests, one connection, 10 s each, into a node holding A's files."
  echo
  echo "| run | rows/s | p50 ms | p99 ms | p99.9 ms | max ms |"
  echo "|---|---:|---:|---:|---:|---:|"
  gen() { "$BIN/tidemark-loadgen" --url http://127.0.0.1:$PORT --format lp --batch-size 1000 \
      --connections 1 --duration 10 --warmup 1 --rate "$RATE" --series 1000 --database live --json; }
  row() { python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); l = r["latency_ms"]
print("| %s | %.0f | %.2f | %.2f | %.2f | %.2f |" % (sys.argv[1], r["rows_per_sec"], l["p50"], l["p99"], l["p999"], l["max"]))' "$1"; }
  gen | row "no compaction"
  ( curl -sf -XPOST 127.0.0.1:$PORT/api/v1/compact >"$WORK/e-compact.json" ) &
  CPID=$!
  gen | row "compaction running"
  wait $CPID
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("\nThe compaction: %d jobs, %.1f s." % (len(r["jobs"]), r["seconds"]))' "$WORK/e-compact.json"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
