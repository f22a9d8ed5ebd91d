#!/usr/bin/env bash
# Packs this machine's full ampd build (ampd, ampctl, ampd_bench, the CUDA plugin) with the
# shared libraries it needs that a CUDA-only machine lacks (gRPC, protobuf, oneDNN, ...)
# into .gpubundle/ampd.tar.xz, so that bench/gpu/engine_check.sh can run the real engine
# and service on a GPU machine that has no Debian dev packages. glibc and the CUDA driver /
# toolkit libraries are left out (the GPU machine has its own, newer ones).
#
#   bench/gpu/bundle.sh [BUILD_DIR]        # default build/; needs a CUDA-enabled build
#   echo /.gpubundle/ >> .git/info/exclude # once
#   run(command="bench/gpu/engine_check.sh", carry=[".gpubundle"])
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$ROOT/build}
BIN=$BUILD/bin
for f in ampd ampctl ampd_bench libampd_backend_cuda.so; do
  [ -e "$BIN/$f" ] || { echo "bundle.sh: $BIN/$f is missing: build with nvcc present first" >&2; exit 1; }
done
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/deps"
cp "$BIN/ampd" "$BIN/ampctl" "$BIN/ampd_bench" "$BIN/libampd_backend_cuda.so" "$STAGE/bin/"
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libcuda|libcublas|libcudart|libnvidia)'
for f in "$STAGE"/bin/*; do
  ldd "$f" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "$name" =~ $skip ]] && continue
  cp -L "$path" "$STAGE/deps/$name"
done
mkdir -p "$ROOT/.gpubundle"
tar -C "$STAGE" -cJf "$ROOT/.gpubundle/ampd.tar.xz" bin deps
echo "bundle.sh: $(du -h "$ROOT/.gpubundle/ampd.tar.xz" | cut -f1) .gpubundle/ampd.tar.xz" \
  "($(ls "$STAGE/deps" | wc -l) libraries)"
