#!/usr/bin/env bash
# Writer failover time (issue #12): three voters with the default settings,
# min_acks = 1, a writing client; ROUNDS (default 20) faults of the primary
# (kill -9 and SIGSTOP alternately), fault → first 2xx from the new primary.
# Writes perf/results/<date>-<commit>-failover.md. BUILD=0 to use a binary
# already built, BIN_DIR (default $CARGO_TARGET_DIR/release), COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
BIN_DIR=${BIN_DIR:-$T/release}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}
[ "${BUILD:-1}" = 0 ] || cargo build --release -p tidemark
mkdir -p perf/results
OUT=perf/results/$(date -u +%F)-$COMMIT-failover.md
{
  echo "# Failover bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "Three voters on one 2-core machine (nodes 1, 2 writers, node 3 a reader, all with a replication port and min_acks = 1; 1 shard core each; defaults: heartbeat 500 ms, dead after 2,500 ms, primary lease 2,000 ms, election timeout 500 ms). Load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/failover_bench.py "$BIN_DIR/tidemark" "${ROUNDS:-20}"
  echo
  echo "Load after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
