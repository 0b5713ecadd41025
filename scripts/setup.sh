#!/usr/bin/env bash
# Installs what xcover's tests and benchmarks need on a fresh Debian machine. Idempotent: a
# tool already present is left alone, so a second run costs only the checks. Every tool a
# test runs is here: a test never skips for a missing tool, it fails and names this script.
set -euo pipefail

need=()
# want <command> <package>: the package, once, unless the command is on PATH.
want() {
  command -v "$1" >/dev/null && return
  case " ${need[*]-} " in *" $2 "*) ;; *) need+=("$2") ;; esac
}
want cc gcc
want c++ g++
want clang clang
want llvm-strip llvm
want genhtml lcov
want tmux tmux
want go golang-go
want strace strace
for tool in readelf nm objdump strip; do
  want "$tool" binutils
done
# glibc's local symbols (__memcpy_avx_unaligned_erms and the like), for the tests that hook
# all of libc.so.6.
dpkg-query -W -f='${Status}' libc6-dbg 2>/dev/null | grep -q 'ok installed' || need+=(libc6-dbg)
want setpriv util-linux
# The engines xcover's outputs are checked with: Prometheus scrapes `attach --metrics`, a
# Python receiver built on the official OpenTelemetry protobuf definitions decodes the OTLP
# push, and the OpenVEX JSON schema validates `reach --openvex` (both from PyPI, in a venv).
want prometheus prometheus
want python3 python3
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "${XCOVER_BENCH:-0}" = 1 ]; then
  want bpftrace bpftrace
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
scripts/corpus.sh

# Python packages of the output tests, pinned, in a venv of their own under target/
# (idempotent: left alone when it already has them).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pyenv="$root/target/pyenv"
py_pins=(opentelemetry-proto==1.45.2 protobuf==7.36.2 jsonschema==4.26.0 rfc3339-validator==0.1.4 rfc3987==1.3.8)
py_check='
import importlib.metadata as m, sys
want = dict(p.split("==") for p in sys.argv[1:])
sys.exit(any(m.version(k) != v for k, v in want.items()))'
if ! "$pyenv/bin/python" -c "$py_check" "${py_pins[@]}" 2>/dev/null; then
  echo "setup: installing ${py_pins[*]} into $pyenv" >&2
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install -q --disable-pip-version-check "${py_pins[@]}"
fi
