#!/usr/bin/env bash
# Installs every Debian package ampd needs to build, test, benchmark and run its demo.
# Idempotent: packages already present are not reinstalled, and apt-get update runs
# only when something is missing. On a fresh Debian 12 machine this is all the set-up.
#
#   scripts/install-deps.sh            install what is missing (needs root or sudo)
#   scripts/install-deps.sh --check    only report what is missing (exit 1 if anything)
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git clang-format
  # RPC and schema
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # metrics, CPU kernels, persistence, config and command line
  prometheus-cpp-dev libdnnl-dev libsqlite3-dev libyaml-cpp-dev libcli11-dev
  nlohmann-json3-dev zlib1g-dev
  # SHA-256 of uploads (libcrypto), in ampctl and the server
  libssl-dev
  # tests and benchmarks (openssl: the CLI makes throwaway certificates for the TLS tests)
  libgtest-dev libgmock-dev libbenchmark-dev openssl
  # libFuzzer targets (tests/fuzz/): clang++ and its runtime (libclang_rt.fuzzer, ASan, UBSan)
  clang-14 libclang-rt-14-dev
  # Python side of the tests (reference numerics, Python client, checkpoint reader)
  python3 python3-venv python3-pip python3-numpy python3-grpcio python3-protobuf python3-yaml
  # integration tests: a real Prometheus server and promtool
  prometheus
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
