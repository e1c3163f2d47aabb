#!/usr/bin/env bash
# The forwarding path (issue #13) end to end: tidemark-loadgen writing to the
# primary directly, then to a reader that forwards every request to it, in
# one run (line protocol and MessagePack columnar, 5,000-row batches, 4
# connections). Writes perf/results/<date>-<commit>-forward.md.
# Settings: DURATION (s per run, default 15), BUILD=0 to use binaries already
# built, BIN_DIR (default $CARGO_TARGET_DIR/release), COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}
python3 -c 'import hdrh' 2>/dev/null || python3 -m pip install -q hdrhistogram
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
BIN_DIR=${BIN_DIR:-$T/release}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD)}
[ "${BUILD:-1}" = 0 ] || cargo build --release -p tidemark -p tidemark-loadgen
mkdir -p perf/results
OUT=perf/results/$(date -u +%F)-$COMMIT-forward.md
{
  echo "# Forwarding bench, $(date -u +%FT%TZ), commit $COMMIT"
  echo
  echo "2 cores: the primary writer (1 shard core, fdatasync) on CPU 0; the reader that forwards (1 shard core) and tidemark-loadgen on CPU 1. Load before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  python3 perf/forward_bench.py "$BIN_DIR/tidemark" "$BIN_DIR/tidemark-loadgen" "${DURATION:-15}"
  echo
  echo "Load after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$OUT"
