#!/usr/bin/env bash
# Replication benches (issue #5): writer ingest with 0, 1 and 2 readers, and
# freshness from the writer's 204 to visibility on a reader (HdrHistogram).
# Writes perf/results/<date>-<commit>-replication.md.
# Settings: DURATION (s per throughput run, default 15), PROBES (default 500),
# BUILD=0 to use binaries already built, BIN_DIR (default $CARGO_TARGET_DIR/release),
# COMMIT (the commit the binaries were built from; default HEAD).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
python3 -c 'import hdrh' 2>/dev/null || python3 -m pip install -q hdrhistogram
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
BIN_DIR=${BIN_DIR:-$T/release}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}
[ "${BUILD:-1}" = 0 ] || cargo build --release -p tidemark -p tidemark-loadgen
mkdir -p perf/results
OUT=perf/results/$(date -u +%F)-$COMMIT-replication.md
{
  echo "# Replication bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "2 cores: the writer (1 shard core, fdatasync) on CPU 0; readers and tidemark-loadgen (line protocol, 5,000-row batches, 4 connections) on CPU 1. Load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/replication_bench.py "$BIN_DIR/tidemark" "$BIN_DIR/tidemark-loadgen" "${DURATION:-15}" "${PROBES:-500}"
  echo
  echo "Load after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
