#!/usr/bin/env bash
# Regenerates bpf/cover.bpf.o from bpf/cover.bpf.c (and the loader's test object
# bpf/tests/object_globals.bpf.o), byte for byte reproducibly.
#
#   scripts/build-bpf.sh            # rebuild the committed objects
#   scripts/build-bpf.sh OUT_DIR    # build into OUT_DIR/ instead (used by the
#                                   # reproducibility test)
#
# Installs clang and llvm from Debian when clang is missing (idempotent). The object only
# depends on the source and the clang version: it is compiled from inside bpf/ with a
# relative source path and a fixed debug compilation directory, so no absolute path of the
# checkout ends up in the DWARF or BTF strings.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-$root/bpf}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

if ! command -v clang >/dev/null 2>&1; then
    echo "build-bpf: clang not found, installing clang and llvm from Debian" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang llvm >/dev/null
fi

# build SRC_DIR SRC OUT: compile from inside SRC_DIR with a relative source path.
build() {
    local dir="$1" src="$2" out="$3"
    (
        cd "$dir"
        # -mcpu=v3: the probe uses a compare-and-swap on its first hit (BPF_CMPXCHG).
        clang -O2 -g -target bpf -mcpu=v3 \
            -fdebug-compilation-dir=. -fdebug-prefix-map="$dir"=. \
            -Wall -Werror \
            -c "$src" -o "$out.tmp"
    )
    mv "$out.tmp" "$out"
    echo "build-bpf: wrote $out ($(clang --version | head -n1))"
}

build "$root/bpf" cover.bpf.c "$out_dir/cover.bpf.o"
if [ $# -ge 1 ]; then
    build "$root/bpf/tests" object_globals.bpf.c "$out_dir/object_globals.bpf.o"
else
    build "$root/bpf/tests" object_globals.bpf.c "$root/bpf/tests/object_globals.bpf.o"
fi
