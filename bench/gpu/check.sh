#!/usr/bin/env bash
# The CUDA backend's whole GPU check in one script, for a machine with a GPU, CUDA 13 (nvcc),
# CMake and Python + PyTorch, but no Debian dev packages (no oneDNN, gRPC, maybe no
# GoogleTest). From the repository root:
#
#   bench/gpu/check.sh
#
# It configures an AMPD_KERNELS_ONLY build (kernels/ + their tests + bench/gpu), builds only
# what the check needs, runs the CUDA tests (ctest -R 'cuda|conformance': the conformance
# suite's cuda_{f32,f16,bf16} instances and test_cuda_backend), the step benchmark
# (ampd_gpu_bench) and the same model in PyTorch (torch_amp_mlp.py), and prints a short
# table last: step time per precision, speedup over FP32, share of the bf16 matmul peak,
# and PyTorch AMP's step time against ampd's. Every piece runs even if an earlier one
# failed (the table says what is missing); the exit status is non-zero if any failed.
#
# GoogleTest: used from the system if CMake finds it; else from .gtest/ in the repository
# (a copy of Debian's /usr/src/googletest, ignored by git, carried to the GPU machine):
#   echo /.gtest/ >> .git/info/exclude && cp -r /usr/src/googletest .gtest
# and with the device tool: run(command="bench/gpu/check.sh", carry=[".gtest"]).
#
# Environment: OUT (where logs and JSON go; default build-gpu/logs), BUILD (build directory;
# default build-gpu), AMPD_CUDA_ARCHS (default: the GPU's compute capability, e.g. 90),
# JOBS (default: nproc), STEPS (benchmark steps, default 20).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build-gpu}
OUT=${OUT:-$BUILD/logs}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 8)}
STEPS=${STEPS:-20}
mkdir -p "$OUT" "$BUILD"
T0=$(date +%s)
log() { echo "[check.sh +$(( $(date +%s) - T0 ))s] $*"; }
declare -a STATUS=()
overall=0
note() {  # note NAME RC DETAIL
  if [ "$2" -eq 0 ]; then STATUS+=("$1: ok${3:+ ($3)}"); else STATUS+=("$1: FAILED rc=$2${3:+ ($3)}"); overall=1; fi
}

# ---- what this machine has ---------------------------------------------------------------
log "repository $ROOT, build $BUILD, logs $OUT, $JOBS jobs"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.sm,clocks.max.sm \
  --format=csv 2>&1 || log "nvidia-smi failed"
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
log "nvcc: ${NVCC:-none}"; [ -n "$NVCC" ] && "$NVCC" --version | tail -2 || true
log "cmake: $(cmake --version | head -1); ninja: $(ninja --version 2>/dev/null || echo none)"
PY=$(command -v python3 || true)
log "python3: ${PY:-none}"

ARCHS=${AMPD_CUDA_ARCHS:-}
if [ -z "$ARCHS" ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)
  case "$cc" in [0-9][0-9]|[0-9][0-9][0-9]) ARCHS=$cc ;; *) ARCHS="80;90" ;; esac
fi

CMAKE_ARGS=(-DAMPD_KERNELS_ONLY=ON -DCMAKE_BUILD_TYPE=Release "-DAMPD_CUDA_ARCHS=$ARCHS")
[ -n "$NVCC" ] && CMAKE_ARGS+=("-DCMAKE_CUDA_COMPILER=$NVCC")
if command -v ninja >/dev/null; then CMAKE_ARGS+=(-G Ninja); fi
if [ -f "$ROOT/.gtest/CMakeLists.txt" ]; then
  CMAKE_ARGS+=("-DAMPD_GTEST_SOURCE_DIR=$ROOT/.gtest")
elif [ -f /usr/src/googletest/CMakeLists.txt ]; then
  CMAKE_ARGS+=(-DAMPD_GTEST_SOURCE_DIR=/usr/src/googletest)
fi

# cuBLASLt outside the toolkit (nvcc from pip): point CMake at the nvidia-cublas wheel.
if [ -n "$NVCC" ] && [ ! -f "$(dirname "$NVCC")/../include/cublasLt.h" ] && [ -n "$PY" ]; then
  wheel=$("$PY" -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
  lib=$( [ -n "$wheel" ] && find "$wheel" -name 'libcublasLt.so*' 2>/dev/null | head -1 || true)
  hdr=$( [ -n "$wheel" ] && find "$wheel" -name cublasLt.h 2>/dev/null | head -1 || true)
  if [ -n "$lib" ] && [ -n "$hdr" ]; then
    shim=$BUILD/cublas-shim
    mkdir -p "$shim/lib"
    ln -sf "$lib" "$shim/lib/libcublasLt.so"
    CMAKE_ARGS+=("-DCMAKE_LIBRARY_PATH=$shim/lib" "-DCMAKE_INCLUDE_PATH=$(dirname "$hdr")")
    log "cuBLASLt from the Python wheel: $lib"
  fi
fi

# ---- configure and build only what the check needs -----------------------------------------
TARGETS=(ampd_backend_cuda test_backend_conformance test_cuda_backend ampd_gpu_bench)
rc=0
{
  log "cmake ${CMAKE_ARGS[*]}"
  cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}" &&
    time cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
} > "$OUT/build.log" 2>&1 || rc=$?
log "build rc=$rc ($(grep -c 'error' "$OUT/build.log" || true) lines mention errors)"
if [ "$rc" -ne 0 ]; then
  grep -E 'error|Error|FAILED|WARNING' "$OUT/build.log" | head -40 || true
  tail -20 "$OUT/build.log"
fi
grep -E '^real|CUDA backend' "$OUT/build.log" || true
note build "$rc"

# ---- tests -----------------------------------------------------------------------------------
rc=0
if [ -x "$BUILD/bin/test_cuda_backend" ]; then
  # A few informative tests first, run directly so that their notes show: the device, TF32,
  # which path the FP32 bias takes, and (without a GPU) the reason the plugin gives.
  timeout 120 "$BUILD/bin/test_cuda_backend" \
    --gtest_filter='*DescribesTheDevice*:*EngineLinearLayerProducts*:*MisalignedViews*:*ExplainsWhy*' \
    2>&1 | grep -E 'device:|plugin says|FP32 bias|misaligned matmuls|Skipped|no usable|FAILED|Failure' \
    | sort -u | head -20 || true
  timeout 300 ctest --test-dir "$BUILD" -R 'cuda|conformance' -j 8 --timeout 240 \
    --output-on-failure > "$OUT/ctest.log" 2>&1 || rc=$?
  summary=$(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1 || true)
  skipped=$(grep -c '(Skipped)' "$OUT/ctest.log" || true)
  log "ctest rc=$rc: $summary; $skipped skipped"
  if [ "$rc" -ne 0 ]; then
    grep -E '\(Failed\)|\(Timeout\)|\(SEGFAULT\)|Failure|error:' "$OUT/ctest.log" | head -60 || true
  fi
  if [ "$skipped" -gt 0 ] && nvidia-smi > /dev/null 2>&1; then
    # A GPU is there but the CUDA tests skipped: the backend did not start. Say so.
    log "a GPU is present but $skipped CUDA tests were skipped"
    rc=1
  fi
  note tests "$rc" "$summary; $skipped skipped"
else
  note tests 1 "not built"
fi

# ---- benchmarks ------------------------------------------------------------------------------
rc=0
if [ -x "$BUILD/bin/ampd_gpu_bench" ]; then
  timeout 300 "$BUILD/bin/ampd_gpu_bench" --steps "$STEPS" --json "$OUT/ampd_bench.json" \
    > "$OUT/bench.log" 2>&1 || rc=$?
  cat "$OUT/bench.log"
  note "ampd benchmark" "$rc"
else
  note "ampd benchmark" 1 "not built"
fi

rc=0
if [ -n "$PY" ]; then
  PYTHONUNBUFFERED=1 timeout 240 "$PY" "$ROOT/bench/gpu/torch_amp_mlp.py" --steps "$STEPS" \
    --json "$OUT/torch_bench.json" > "$OUT/torch.log" 2>&1 || rc=$?
  cat "$OUT/torch.log" | tail -15
  note "torch benchmark" "$rc"
else
  note "torch benchmark" 1 "no python3"
fi

# ---- compute-sanitizer memcheck over the CUDA conformance cases (bounded; informative) -------
CS=$(command -v compute-sanitizer || true)
[ -z "$CS" ] && [ -n "$NVCC" ] && [ -x "$(dirname "$NVCC")/compute-sanitizer" ] && CS="$(dirname "$NVCC")/compute-sanitizer"
if [ -n "$CS" ] && [ -x "$BUILD/bin/test_backend_conformance" ] && [ "${MEMCHECK_SECONDS:-75}" -gt 0 ]; then
  rc=0
  timeout "${MEMCHECK_SECONDS:-75}" "$CS" --tool memcheck --leak-check no --error-exitcode 9 \
    "$BUILD/bin/test_backend_conformance" --gtest_filter='*cuda*' --gtest_brief=1 \
    > "$OUT/memcheck.log" 2>&1 || rc=$?
  errs=$(grep -cE '^========= (Invalid|Program hit|Uninitialized|Out-of-range)' "$OUT/memcheck.log" || true)
  tail -4 "$OUT/memcheck.log"
  if [ "$rc" -eq 124 ]; then
    STATUS+=("memcheck: ran ${MEMCHECK_SECONDS:-75} s without finishing; $errs errors so far")
    [ "$errs" -gt 0 ] && overall=1
  else
    grep -E '^=========' "$OUT/memcheck.log" | head -20 || true
    note memcheck "$rc" "$errs errors"
  fi
fi

# ---- the table (last) ---------------------------------------------------------------------------
STATUS+=("total $(( $(date +%s) - T0 )) s")
if [ -n "$PY" ]; then
  "$PY" "$ROOT/bench/gpu/summary.py" "$OUT/ampd_bench.json" "$OUT/torch_bench.json" \
    "${STATUS[@]}" | tee "$OUT/summary.txt" || true
else
  printf '%s\n' "${STATUS[@]}"
  cat "$OUT/ampd_bench.json" 2>/dev/null || true
fi
exit "$overall"
