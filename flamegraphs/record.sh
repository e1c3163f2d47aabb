#!/usr/bin/env bash
# Records a flamegraph of the tidemark server under each main ingest scenario.
#
# For each scenario: a fresh tidemark (`--set node.shard_cores=1`, fdatasync
# on, data dir on ext4) pinned to CPU $SERVER_CPU, tidemark-loadgen pinned to
# CPU $CLIENT_CPU sending as fast as possible; after $SETTLE s, `perf record`
# samples every thread of the server (cpu-clock, DWARF call graphs, so no
# frame pointers are needed) for $SECONDS_REC s. Writes
#   flamegraphs/<date>-<commit>-<scenario>.svg   (inferno)
#   flamegraphs/<date>-<commit>-<scenario>.txt   (top frames, see perf/flame_top.py)
# and prints the loadgen's report. The index is flamegraphs/README.md (by hand).
#
#   flamegraphs/record.sh                        # lp and msgpack-columnar
#   SCENARIOS="lp:5000:4" flamegraphs/record.sh  # format:batch:connections
#   SCHEMA=devops SCENARIOS="lp:1000:16" flamegraphs/record.sh  # loadgen --schema
#
# Needs: perf (Debian linux-perf), inferno (cargo install inferno).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIOS=${SCENARIOS:-"lp:5000:4 msgpack-columnar:5000:4"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SCHEMA=${SCHEMA:-cpu}
SETTLE=${SETTLE:-3}
SECONDS_REC=${SECONDS_REC:-10}
FREQ=${FREQ:-499}
TIDEMARK_BIN=${TIDEMARK_BIN:-/var/tmp/tm/release/release/tidemark}
# tidemark refuses unknown TIDEMARK_* variables in its environment.
export -n TIDEMARK_BIN
LOADGEN_BIN=${LOADGEN_BIN:-/var/tmp/tm/release/release/tidemark-loadgen}
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD)}
DATE=$(date -u +%Y-%m-%d)
OUTDIR=${OUTDIR:-$ROOT/flamegraphs}
WORK=$(mktemp -d /var/tmp/flame.XXXXXX)
PORT=18087

command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
command -v inferno-flamegraph >/dev/null || { echo "cargo install inferno" >&2; exit 1; }

PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

for sc in $SCENARIOS; do
  IFS=: read -r format batch conns <<<"$sc"
  name=$DATE-$COMMIT-$format-b$batch-c$conns
  [[ $SCHEMA == cpu ]] || name=$name-$SCHEMA
  rm -rf "$WORK/data"
  TIDEMARK_LOG=warn taskset -c "$SERVER_CPU" "$TIDEMARK_BIN" serve --data-dir "$WORK/data" \
    --http-addr 127.0.0.1:$PORT --set node.shard_cores=1 --set wal.sync_mode=fdatasync \
    >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do curl -fsS -o /dev/null http://127.0.0.1:$PORT/ready 2>/dev/null && break; sleep 0.1; done
  total=$((SETTLE + SECONDS_REC + 2))
  taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" --url http://127.0.0.1:$PORT --format "$format" \
    --schema "$SCHEMA" --batch-size "$batch" --connections "$conns" --threads 1 --warmup "$SETTLE" \
    --duration "$((total - SETTLE))" >"$WORK/loadgen.txt" 2>&1 &
  lg=$!
  sleep "$SETTLE"
  echo "recording $name (server pid $PID), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  perf record -q -F "$FREQ" -e cpu-clock --call-graph dwarf,16384 -p "$PID" \
    -o "$WORK/perf.data" -- sleep "$SECONDS_REC" 2>"$WORK/perf.log" || cat "$WORK/perf.log" >&2
  wait "$lg" || true
  cat "$WORK/loadgen.txt"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=
  # --no-inline: resolving inlined frames runs addr2line per address (minutes).
  perf script --no-inline -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$WORK/folded"
  inferno-flamegraph --title "tidemark $COMMIT: $format ($SCHEMA rows), batch $batch, $conns conns (1 shard core, fdatasync), $DATE" \
    --minwidth 0.2 <"$WORK/folded" >"$OUTDIR/$name.svg"
  {
    echo "# $name"
    echo "# loadgen:"
    sed 's/^/#   /' "$WORK/loadgen.txt"
    python3 "$ROOT/perf/flame_top.py" "$WORK/folded"
  } >"$OUTDIR/$name.txt"
  echo "wrote $OUTDIR/$name.svg and .txt" >&2
done
