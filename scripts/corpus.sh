#!/usr/bin/env bash
# The real-program corpus of tests/corpus.rs (called by scripts/setup.sh; idempotent):
# Debian's stripped python3, sqlite3, bash, redis-server and nginx (the last two for later
# corpus tests), and, built into target/corpus/ (not committed) from tests/targets/corpus/,
# a `gcc -static` C program, a stripped Rust release binary and a stripped Go binary (the
# standard library only: no module is fetched).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in python3:python3-minimal sqlite3:sqlite3 redis-server:redis-server nginx:nginx; do
  cmd=${pair%%:*} pkg=${pair##*:}
  [ -x "/usr/bin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "corpus: missing ${need[*]}; run scripts/setup.sh as root (it uses apt-get)" >&2
    exit 1
  fi
  echo "corpus: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Installed, not started: nothing here runs as a service.
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

src=tests/targets/corpus
out=target/corpus
mkdir -p "$out"
# build <output> <source> <command…>: runs the command when the output is older than its
# source or missing.
build() {
  local o=$1 s=$2
  shift 2
  if [ ! -x "$o" ] || [ "$s" -nt "$o" ]; then
    "$@"
  fi
}
build "$out/checksum-static" "$src/checksum.c" \
  gcc -O2 -static -o "$out/checksum-static" "$src/checksum.c"
build "$out/checksum-rs" "$src/checksum.rs" \
  sh -c "rustc -O --edition 2021 -o '$out/checksum-rs' '$src/checksum.rs' && strip '$out/checksum-rs'"
build "$out/checksum-go" "$src/checksum.go" \
  env GOFLAGS=-mod=mod GOCACHE="$PWD/$out/gocache" GOPATH="$PWD/$out/gopath" GO111MODULE=off \
  GOPROXY=off go build -ldflags=-s -o "$out/checksum-go" "$src/checksum.go"
