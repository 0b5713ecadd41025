#!/usr/bin/env bash
# Installs what xcover's tests and benchmarks need on a fresh Debian machine. Idempotent: a
# tool already present is left alone, so a second run costs only the checks.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v clang >/dev/null || need+=(clang)
command -v llvm-strip >/dev/null || need+=(llvm)
command -v genhtml >/dev/null || need+=(lcov)
command -v tmux >/dev/null || need+=(tmux)
command -v go >/dev/null || need+=(golang-go)
command -v readelf >/dev/null || need+=(binutils)
# glibc's local symbols (__memcpy_avx_unaligned_erms and the like), for the tests that hook
# all of libc.so.6.
dpkg-query -W -f='${Status}' libc6-dbg 2>/dev/null | grep -q 'ok installed' || need+=(libc6-dbg)
command -v setpriv >/dev/null || need+=(util-linux)
if [ "${XCOVER_BENCH:-0}" = 1 ]; then
  command -v bpftrace >/dev/null || need+=(bpftrace)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run this script as root (it uses apt-get)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
