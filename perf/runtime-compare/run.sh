#!/usr/bin/env bash
# Full measurement as reported in README.md. Sequential on purpose (2-core box).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR=/tmp/target-rtcmp
cargo build --release
B=$CARGO_TARGET_DIR/release/runtime-compare
DIR=${DIR:-/tmp}   # must be a real disk fs, not tmpfs: check `df -T $DIR`
df -T "$DIR"
$B wal --dir "$DIR" --secs 3 --mode buffered --handoff off   # spec'd group commit
$B wal --dir "$DIR" --secs 3 --mode buffered --handoff on    # with leader handoff
$B wal --dir "$DIR" --secs 3 --mode direct   --handoff on    # O_DIRECT (monoio File+O_DIRECT vs glommio DmaFile)
$B tcp --secs 3
