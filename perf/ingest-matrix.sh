#!/usr/bin/env bash
# Ingest scenario matrix: tidemark, then VictoriaMetrics, then InfluxDB 1.x,
# one after another in one run, each on 127.0.0.1 with a fresh data dir under
# $WORK, the server pinned to CPU $SERVER_CPU and tidemark-loadgen to CPU
# $CLIENT_CPU (taskset). For every cell (format x batch size x connections)
# it runs the load generator for $DURATION s after $WARMUP s of warm-up and
# reads the server's CPU time (utime + stime of every thread, from
# /proc/<pid>/stat) before and after. Then, per server and format, one
# fixed-rate run per batch size at half the best rate of that format (with
# the connections of that batch size's best cell) for the latency at half
# load.
#
# Writes perf/results/<date>-<commit>-ingest.md (the table, the machine, the
# load average before and after) and the raw loadgen JSON next to it
# (<same>.jsonl).
#
#   perf/ingest-matrix.sh                    # the default matrix (~12 min)
#   SERVERS=tidemark FORMATS=lp BATCHES=5000 CONNS=4 DURATION=5 perf/ingest-matrix.sh
#
# Environment (defaults in brackets):
#   SERVERS      [tidemark victoria-metrics influxdb]
#   FORMATS      [lp msgpack-columnar msgpack-row]  (peers take only lp)
#   BATCHES      [1000 5000]      rows per request
#   CONNS        [4 16]           connections
#   COMPRESSIONS [none]           request body compression (none gzip zstd)
#   DURATION     [10]             measured seconds per cell
#   WARMUP       [2]              warm-up seconds per cell
#   SERIES       [1000]           hosts (series per measurement)
#   SCHEMA       [cpu]            tidemark-loadgen --schema: cpu (TSBS cpu-only, float
#                                 fields) or devops (cpu, mem, disk, net: 15 of 27 fields integers)
#   HALF_RATE    [1]              also run the half-rate latency cells
#   SYNC_MODE    [fdatasync]      tidemark's wal.sync_mode
#   EXTRA_SET    []               more tidemark settings, e.g. "buffer.flush_rows=100000000"
#                                 (space-separated section.key=value, each passed as --set)
#   SERVER_CPU   [0]  CLIENT_CPU [1]
#   TIDEMARK_BIN [/var/tmp/tm/release/release/tidemark]
#   LOADGEN_BIN  [/var/tmp/tm/release/release/tidemark-loadgen]
#   WORK         [a new dir under /var/tmp] data dirs and logs (ext4 here,
#                not tmpfs: fdatasync must reach a disk)
#   OUT          [perf/results/<UTC date>-<short commit>-ingest.md]
#   COMMIT, DIRTY [git rev-parse --short HEAD; uncommitted files under src,
#                shards, perf/loadgen] what the binaries were built from
#
# Installs Debian's victoria-metrics and influxdb (apt-get) when missing;
# their packaged services are not started (this script starts its own).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVERS=${SERVERS:-"tidemark victoria-metrics influxdb"}
FORMATS=${FORMATS:-"lp msgpack-columnar msgpack-row"}
BATCHES=${BATCHES:-"1000 5000"}
CONNS=${CONNS:-"4 16"}
COMPRESSIONS=${COMPRESSIONS:-none}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SERIES=${SERIES:-1000}
SCHEMA=${SCHEMA:-cpu}
HALF_RATE=${HALF_RATE:-1}
SYNC_MODE=${SYNC_MODE:-fdatasync}
EXTRA_SET=${EXTRA_SET:-}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TIDEMARK_BIN=${TIDEMARK_BIN:-/var/tmp/tm/release/release/tidemark}
# tidemark refuses unknown TIDEMARK_* variables in its environment.
export -n TIDEMARK_BIN
LOADGEN_BIN=${LOADGEN_BIN:-/var/tmp/tm/release/release/tidemark-loadgen}
# The commit the binaries were built from (set both when they were built
# from another tree, e.g. a clean export of a commit).
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD)}
DIRTY=${DIRTY:-$(git -C "$ROOT" status --porcelain --untracked-files=no -- src shards perf/loadgen Cargo.toml | wc -l)}
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/perf/results/$DATE-$COMMIT-ingest.md}
RAW=${OUT%.md}.jsonl
WORK=${WORK:-$(mktemp -d /var/tmp/ingest-matrix.XXXXXX)}
PORT=18086

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

for b in "$TIDEMARK_BIN" "$LOADGEN_BIN"; do
  [[ -x $b ]] || { echo "missing $b (cargo build --release -p tidemark -p tidemark-loadgen)" >&2; exit 1; }
done
need=()
[[ $SERVERS == *victoria-metrics* ]] && ! command -v victoria-metrics >/dev/null && need+=(victoria-metrics)
[[ $SERVERS == *influxdb* ]] && ! command -v influxd >/dev/null && need+=(influxdb)
if ((${#need[@]})); then
  log "installing ${need[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$(dirname "$OUT")"
: >"$RAW"
SERVER_PID=
cleanup() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# CPU seconds (all threads, user + system) of $1, from /proc/<pid>/stat.
cpu_secs() {
  python3 - "$1" <<'EOF'
import os, sys
s = open(f"/proc/{sys.argv[1]}/stat").read()
f = s[s.rindex(")") + 2:].split()
print((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))
EOF
}

wait_http() { # url, pid
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || { echo "server exited; log in $WORK" >&2; exit 1; }
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server not ready at $1" >&2
  exit 1
}

start_server() { # name -> sets SERVER_PID, URL, VERSION
  local name=$1 dir=$WORK/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  case $name in
    tidemark)
      local extra=()
      for kv in $EXTRA_SET; do extra+=(--set "$kv"); done
      TIDEMARK_LOG=warn taskset -c "$SERVER_CPU" "$TIDEMARK_BIN" serve \
        --data-dir "$dir/data" --http-addr 127.0.0.1:$PORT \
        --set node.shard_cores=1 --set "wal.sync_mode=$SYNC_MODE" "${extra[@]}" \
        >"$dir/log" 2>&1 &
      SERVER_PID=$!
      URL=http://127.0.0.1:$PORT
      wait_http "$URL/ready" "$SERVER_PID"
      VERSION="tidemark $COMMIT (shard_cores=1, wal.sync_mode=$SYNC_MODE${EXTRA_SET:+, $EXTRA_SET})"
      ;;
    victoria-metrics)
      taskset -c "$SERVER_CPU" victoria-metrics -httpListenAddr=127.0.0.1:$PORT \
        -storageDataPath="$dir/data" -loggerLevel=ERROR >"$dir/log" 2>&1 &
      SERVER_PID=$!
      URL=http://127.0.0.1:$PORT
      wait_http "$URL/health" "$SERVER_PID"
      VERSION="VictoriaMetrics $(dpkg-query -W -f '${Version}' victoria-metrics) (Debian)"
      ;;
    influxdb)
      cat >"$dir/influxdb.conf" <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:$((PORT + 1))"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$PORT"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
EOF
      taskset -c "$SERVER_CPU" influxd -config "$dir/influxdb.conf" >"$dir/log" 2>&1 &
      SERVER_PID=$!
      URL=http://127.0.0.1:$PORT
      wait_http "$URL/ping" "$SERVER_PID"
      curl -fsS -XPOST "$URL/query" --data-urlencode 'q=CREATE DATABASE bench' >/dev/null
      VERSION="InfluxDB $(dpkg-query -W -f '${Version}' influxdb) (Debian)"
      ;;
  esac
  log "$VERSION: pid $SERVER_PID on CPU $SERVER_CPU"
  echo "{\"server\":\"$name\",\"version\":\"$VERSION\"}" >>"$RAW.versions"
}

stop_server() {
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# tidemark's WAL fdatasync count and total seconds so far ("0 0" for peers).
fsync_stats() {
  if [[ $1 == tidemark ]]; then
    curl -fsS "$URL/metrics" | awk '
      /^tidemark_wal_fsync_duration_seconds_count/ {c += $2}
      /^tidemark_wal_fsync_duration_seconds_sum/ {s += $2}
      END {print c + 0, s + 0}'
  else
    echo 0 0
  fi
}

# One cell: server format batch conns rate kind compression
run_cell() {
  local server=$1 format=$2 batch=$3 conns=$4 rate=$5 kind=$6 compression=${7:-none} before after json
  local fs_before fs_after
  fs_before=$(fsync_stats "$server")
  before=$(cpu_secs "$SERVER_PID")
  if ! json=$(taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" --url "$URL" --format "$format" \
    --batch-size "$batch" --connections "$conns" --threads 1 --duration "$DURATION" \
    --warmup "$WARMUP" --rate "$rate" --series "$SERIES" --schema "$SCHEMA" --database bench \
    --compression "$compression" --json); then
    log "loadgen failed: $json"
  fi
  after=$(cpu_secs "$SERVER_PID")
  fs_after=$(fsync_stats "$server")
  [[ -n $json ]] || json='{}'
  python3 - "$server" "$kind" "$before" "$after" "$json" "$fs_before" "$fs_after" >>"$RAW" <<'EOF'
import json, sys
server, kind, before, after, raw, fs_before, fs_after = sys.argv[1:]
v = json.loads(raw)
v.update(server=server, kind=kind, server_cpu_s=float(after) - float(before))
(c0, s0), (c1, s1) = (map(float, x.split()) for x in (fs_before, fs_after))
if c1 > c0:
    v.update(wal_fsyncs=int(c1 - c0), wal_fsync_avg_ms=(s1 - s0) / (c1 - c0) * 1e3)
print(json.dumps(v))
EOF
  log "$(tail -1 "$RAW" | python3 "$ROOT/perf/ingest_table.py" --one -)"
  sleep 1
}

rm -f "$RAW.versions"
LOAD_BEFORE=$(cat /proc/loadavg)
STARTED=$(date -u +%H:%M:%S)
log "load before: $LOAD_BEFORE; work dir $WORK"
for server in $SERVERS; do
  start_server "$server"
  formats=$FORMATS
  [[ $server == tidemark ]] || formats=lp
  for format in $formats; do
    [[ $server != tidemark && $format != lp ]] && continue
    for batch in $BATCHES; do
      for conns in $CONNS; do
        for compression in $COMPRESSIONS; do
          run_cell "$server" "$format" "$batch" "$conns" 0 max "$compression"
        done
      done
    done
    if [[ $HALF_RATE == 1 ]]; then
      # Half the best rate of this server and format, once per batch size,
      # with the connections of that batch size's best cell.
      while read -r rate batch conns; do
        if [[ $rate -gt 0 ]]; then
          run_cell "$server" "$format" "$batch" "$conns" "$rate" half
        fi
      done < <(python3 - "$RAW" "$server" "$format" <<'EOF'
import json, sys
raw, server, fmt = sys.argv[1:]
rows = [json.loads(l) for l in open(raw)]
rows = [r for r in rows if r["server"] == server and r.get("format") == fmt and r["kind"] == "max"
        and r.get("compression", "none") == "none"]
half = round(max(r.get("rows_per_sec", 0) for r in rows) / 2)
for batch in sorted({r["batch_size"] for r in rows}):
    best = max((r for r in rows if r["batch_size"] == batch), key=lambda r: r.get("rows_per_sec", 0))
    print(half, batch, best["connections"])
EOF
      )
    fi
  done
  stop_server
done
LOAD_AFTER=$(cat /proc/loadavg)
log "load after: $LOAD_AFTER"

python3 "$ROOT/perf/ingest_table.py" "$RAW" \
  --commit "$COMMIT" --dirty "$DIRTY" --date "$DATE" --started "$STARTED" \
  --finished "$(date -u +%H:%M:%S)" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" \
  --duration "$DURATION" --warmup "$WARMUP" --series "$SERIES" --schema "$SCHEMA" \
  --server-cpu "$SERVER_CPU" --client-cpu "$CLIENT_CPU" --versions "$RAW.versions" >"$OUT"
rm -f "$RAW.versions"
log "wrote $OUT"
rm -rf "$WORK"
