#!/usr/bin/env bash
# Control core benches (issue #11): Raft commits per second and commit
# latency on three voters, kill -9 → dead, and leader kill -9 → new leader
# (p50/max over ROUNDS runs). Writes perf/results/<date>-<commit>-cluster.md.
# Settings: COMMITS (default 2000), ROUNDS (default 20), BUILD=0 to use a
# binary already built, BIN_DIR (default $CARGO_TARGET_DIR/release), COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
python3 -c 'import hdrh' 2>/dev/null || python3 -m pip install -q hdrhistogram
BIN_DIR=${BIN_DIR:-$T/release}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}
[ "${BUILD:-1}" = 0 ] || cargo build --release -p tidemark
mkdir -p perf/results
OUT=perf/results/$(date -u +%F)-$COMMIT-cluster.md
{
  echo "# Cluster bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "Three voters on one 2-core machine (1 shard core each, defaults: heartbeat 500 ms, unhealthy 1,500 ms, dead 2,500 ms, election timeout 500 ms), Raft log fdatasync'ed. Load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/cluster_bench.py "$BIN_DIR/tidemark" "${COMMITS:-2000}" "${ROUNDS:-20}"
  echo
  echo "Load after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
