#!/bin/sh
# Long reliability runs of issue 8 that stay out of the default suite: 200 attach/detach
# cycles on an 8-thread target, and xcover SIGKILLed at every point of attach and detach.
# Usage: scripts/stress.sh   (uses $CARGO_TARGET_DIR when set)
set -eu
cd "$(dirname "$0")/.."
cargo test --release --test tests -- --ignored --nocapture --test-threads=1 \
    faults::load_200_cycles_on_8_threads faults::xcover_killed_during_attach_and_detach
