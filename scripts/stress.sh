#!/bin/sh
# Long reliability runs of issue 8: 200 attach/detach cycles on an 8-thread target (ignored in
# the default suite), and the SIGKILL test (in the default suite too) repeated, since each
# run lands its 20 kills at slightly different moments.
# Usage: scripts/stress.sh [KILL_RUNS]   (default 10; uses $CARGO_TARGET_DIR when set)
set -eu
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo test --release --test tests -- --ignored --nocapture --test-threads=1 \
    faults::load_200_cycles_on_8_threads
i=1
while [ "$i" -le "$runs" ]; do
    echo "stress: SIGKILL run $i of $runs" >&2
    cargo test --release --test tests -- --nocapture --test-threads=1 \
        faults::xcover_killed_during_attach_and_detach
    i=$((i + 1))
done
