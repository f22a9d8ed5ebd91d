#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time over its checked-in seeds (and regression
# inputs) plus a working corpus that keeps what earlier runs found.
#
#   tests/fuzz/run.sh BINARY SECONDS SEED_DIR WORK_DIR [DICT]
#
# Fails (non-zero) on a crash, a sanitizer report, a leak, an input slower than 5 s, or
# more than 1 GiB of RSS; the offending input is saved under WORK_DIR/artifacts/. After
# fixing the bug, copy it into SEED_DIR as a regression seed (name it regress-<what>).
# Used by the ctest cases fuzz.* (20 s) and by `make fuzz FUZZ_SECONDS=600`.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 BINARY SECONDS SEED_DIR WORK_DIR [DICT]" >&2
  exit 2
fi
binary=$1 seconds=$2 seeds=$3 work=$4 dict=${5:-}
if [[ ! -x $binary ]]; then
  echo "fuzz: $binary is not built (needs clang and libFuzzer: scripts/install-deps.sh)" >&2
  exit 1
fi
mkdir -p "$work/corpus" "$work/artifacts"
args=(-max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 -malloc_limit_mb=1024
      -print_final_stats=1 -artifact_prefix="$work/artifacts/")
[[ -n $dict ]] && args+=(-dict="$dict")
echo "fuzz: $(basename "$binary") for ${seconds}s; seeds $seeds; corpus $work/corpus"
set +e
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$binary" "${args[@]}" "$work/corpus" "$seeds" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "fuzz: $(basename "$binary") FAILED (exit $rc); inputs in $work/artifacts/:" >&2
  ls -l "$work/artifacts/" >&2 || true
  exit 1
fi
echo "fuzz: $(basename "$binary") OK"
