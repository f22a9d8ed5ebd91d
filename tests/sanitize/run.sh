#!/usr/bin/env bash
# tests/sanitize/run.sh BUILD_DIR asan|tsan [ctest args...]: runs ctest in an AMPD_SANITIZE
# build tree (the Makefile's test-asan / test-tsan targets).
#
# - Tests labelled no-asan / no-tsan are left out (they cannot run under that sanitizer;
#   tests/sanitize/README.md lists them and why).
# - ASan/LSan and TSan reports of every process go to BUILD_DIR/sanitizer-reports/ (log_path)
#   besides failing that process: the test scripts stop `ampd serve` with SIGTERM/SIGKILL and
#   do not look at its exit code, so a report from a server (a leak found at exit, a race in
#   a handler) would otherwise only reach its log. Any report there fails the run and is
#   printed. (GCC's UBSan ignores log_path when combined with ASan: its reports stay on the
#   process's stderr; it still halts the process, so a server's RPCs fail.)
# - ThreadSanitizer needs a narrower address-space layout than some kernels randomize
#   (vm.mmap_rnd_bits > 28 on newer kernels): the tests then run under `setarch -R`.
# The default runtime options and suppressions are baked into the binaries
# (tests/sanitize/sanitizer_defaults.cc); those set here add to them.
set -euo pipefail
build="$(cd "$1" && pwd)" kind="$2"
shift 2
case "$kind" in
  asan | tsan) ;;
  *) echo "usage: $0 BUILD_DIR asan|tsan [ctest args...]" >&2; exit 2 ;;
esac

reports="$build/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
if [[ $kind == asan ]]; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$reports/asan:log_exe_name=1"
else
  export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}log_path=$reports/tsan:log_exe_name=1"
fi

wrap=()
if [[ $kind == tsan ]]; then
  bits=$(cat /proc/sys/vm/mmap_rnd_bits 2> /dev/null || echo 0)
  if ((bits > 28)); then
    echo "vm.mmap_rnd_bits=$bits > 28: running the tests under setarch -R (ASLR off) for TSan"
    wrap=(setarch "$(uname -m)" -R)
    if ! "${wrap[@]}" true 2> /dev/null; then
      # e.g. a container whose seccomp profile refuses personality(ADDR_NO_RANDOMIZE)
      echo "error: setarch -R is not permitted here and TSan cannot run with" \
        "vm.mmap_rnd_bits=$bits; run 'sysctl vm.mmap_rnd_bits=28' on the host, or allow" \
        "the personality syscall (docker run --security-opt seccomp=unconfined)" >&2
      exit 1
    fi
  fi
fi

cd "$build"
rc=0
"${wrap[@]}" ctest --output-on-failure -LE "no-$kind" "$@" || rc=$?

shopt -s nullglob
found=("$reports"/*)
if ((${#found[@]})); then
  echo
  echo "=== ${#found[@]} sanitizer report(s) in $reports ==="
  for f in "${found[@]}"; do
    echo "--- $f"
    cat "$f"
  done
  ((rc)) || rc=1
fi
exit "$rc"
