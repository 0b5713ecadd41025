#!/usr/bin/env bash
# The whole test suite, from a fresh checkout: installs what the tests need, checks the
# formatting, lints and docs (the gates CI enforces), then runs every test of the workspace
# (unit tests, the bpf_conformance suite, end-to-end tests on real processes). This is the
# command README.md gives and .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
(cd agent && cargo fmt -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd agent && cargo clippy -- -D warnings)
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${XCOVER_TEST_THREADS:-2}"
