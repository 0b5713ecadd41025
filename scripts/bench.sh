#!/usr/bin/env bash
# xcover's benchmark: per-call cost (hit, miss, idle) for xcover and kernel uprobes, attach and
# detach times for 1 000 / 10 000 / 100 000 functions, a real workload's throughput, the
# TUI's CPU use, and `xcover merge` of 1 000 reports of 100 000 functions (a fleet's week),
# all measured in one run. Prints a Markdown table, writes JSON.
#
#   scripts/bench.sh [--quick] [--out <path>] [--no-kernel] [--merge-only]
#
# --quick       a short run (a few minutes on 2 cores, plus the release build if needed);
#               the merge of 100 reports instead of 1 000
# --out PATH    where the JSON goes (default bench/results.json; the merge's beside it,
#               <path>-merge.json)
# --no-kernel   skip the kernel-uprobe side (no bpftrace)
# --merge-only  only the merge figure (7 GB of generated reports, in /dev/shm when it has
#               room, removed after)
#
# Needs root (ptrace, bpftrace, apt-get for set-up). Timings are noisy on shared cores: every
# figure is a min and a median over repeats, never a pass/fail.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$root/bench/results.json"
args=()
merge_reports=1000
merge_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick)
      args+=("$1")
      merge_reports=100
      ;;
    --no-kernel) args+=("$1") ;;
    --merge-only) merge_only=1 ;;
    --out)
      [ $# -ge 2 ] || { echo "bench: --out needs a path" >&2; exit 2; }
      out=$2
      shift
      ;;
    -h | --help)
      sed -n '2,17p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "bench: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

cd "$root"
XCOVER_BENCH=1 scripts/setup.sh
if ! command -v python3 >/dev/null; then
  echo "bench: installing python3" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
fi

echo "bench: building xcover (release)" >&2
cargo build --release --quiet
xcover="${CARGO_TARGET_DIR:-$root/target}/release/xcover"

build=$(mktemp -d /tmp/xcover-bench-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
cc -O2 -o "$build/target" bench/target.c bench/funcs.S
cc -O2 -fno-inline -o "$build/httpd" bench/httpd.c
cc -O2 -o "$build/loadgen" bench/loadgen.c
cc -O2 -o "$build/genreports" bench/genreports.c

if [ "$merge_only" = 0 ]; then
  python3 bench/driver.py --xcover "$xcover" --build "$build" --out "$out" "${args[@]}"
fi
python3 bench/merge_scale.py --xcover "$xcover" --gen "$build/genreports" \
  --reports "$merge_reports" --functions 100000 --out "${out%.json}-merge.json"
