#!/usr/bin/env bash
# `make bench`: ampd's CPU training step beside PyTorch and beside oneDNN's raw matmul,
# on this machine with one thread count, then the service overhead; prints a table last.
#   bench/cpu/run.sh [BUILD_DIR]       (built targets: ampd_bench ampd ampctl watch_many)
# Env: BENCH_THREADS (default: nproc), BENCH_STEPS (timed steps, default 40),
#      BENCH_REPEATS (interleaved repeats of the batch-256 comparison, default 3),
#      BENCH_SERVICE_ROUNDS (alternating in-process/served pairs of the service test, 5),
#      BENCH_QUICK=1 (fewer steps, for a smoke run), BENCH_OUT (default BUILD_DIR/bench-cpu),
#      BENCH_GPT_STEPS (timed GPT steps per run, default 50, after 10 warm-up),
#      BENCH_GPT_CONVERGENCE (1 = also train the GPT 2000 iterations on both sides, fp32
#      and bf16, for the validation loss: ~8 minutes; default 1, 0 with BENCH_QUICK=1),
#      BENCH_ONLY=gpt (only the GPT part, 6-7 below; default: everything).
# Results: $BENCH_OUT/results.jsonl (one JSON object per measurement) and table.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
THREADS=${BENCH_THREADS:-$(nproc)}
STEPS=${BENCH_STEPS:-40}
SCALE_STEPS=30
SERVICE_STEPS=600
SERVICE_ROUNDS=${BENCH_SERVICE_ROUNDS:-5}
REPEATS=${BENCH_REPEATS:-3}
GPT_STEPS=${BENCH_GPT_STEPS:-50}
GPT_WARMUP=10
GPT_CONVERGENCE=${BENCH_GPT_CONVERGENCE:-1}
ONLY=${BENCH_ONLY:-all}
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
  STEPS=8; SCALE_STEPS=4; SERVICE_STEPS=40; SERVICE_ROUNDS=1; REPEATS=1
  GPT_STEPS=8; GPT_WARMUP=3; GPT_CONVERGENCE=${BENCH_GPT_CONVERGENCE:-0}
fi
OUT=${BENCH_OUT:-$BUILD/bench-cpu}
BIN=$BUILD/bin
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"
export OMP_NUM_THREADS=$THREADS
log() { echo "[bench] $*" >&2; }

# ---- PyTorch: a CPU-usable torch from PyPI alone, else Debian's python3-torch ----------
VENV=$BUILD/bench-venv
TORCH_PY=""
TORCH_HOW=""
try_torch() { "$1" -c 'import torch; torch.ones(2) @ torch.ones(2)' >/dev/null 2>&1; }
if [[ -x $VENV/bin/python ]] && try_torch "$VENV/bin/python"; then
  TORCH_PY=$VENV/bin/python; TORCH_HOW=$(cat "$VENV/how" 2>/dev/null || echo pypi)
else
  log "installing torch into $VENV (PyPI, without the CUDA wheels) ..."
  python3 -m venv "$VENV"
  PIP="$VENV/bin/pip install -q --disable-pip-version-check"
  # PyPI's Linux torch wheel is the CUDA build; its ~3 GB of nvidia-* dependencies are not
  # needed on a CPU. Install it without them, plus the pure-Python dependencies and the few
  # CUDA libraries that libtorch_cuda.so links and this machine's CUDA toolkit lacks.
  if $PIP --no-deps torch && $PIP filelock typing_extensions sympy networkx jinja2 fsspec numpy; then
    extra=$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md
out = []
for r in md.requires("torch") or []:
    name = r.split(";")[0].strip()
    if any(k in name for k in ("cusparselt", "nvshmem", "nccl")):
        out.append(name.replace(" ", ""))
out.append("nvidia-cufile")
print(" ".join(out))
PY
)
    $PIP --no-deps $extra || true
  fi
  if try_torch "$VENV/bin/python"; then
    TORCH_PY=$VENV/bin/python; TORCH_HOW="pypi torch --no-deps (+cusparselt/nvshmem/nccl/cufile)"
  else
    log "PyPI torch did not import here; falling back to Debian's python3-torch"
    if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
      (apt-get install -y -q python3-torch >/dev/null 2>&1 ||
        (apt-get update -q >/dev/null && apt-get install -y -q python3-torch >/dev/null)) || true
    fi
    if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
      TORCH_PY=/usr/bin/python3; TORCH_HOW="debian python3-torch (OPENBLAS_CORETYPE=Cooperlake)"
      export OPENBLAS_CORETYPE=Cooperlake
    fi
  fi
  echo "$TORCH_HOW" >"$VENV/how" 2>/dev/null || true
fi
[[ -n $TORCH_PY ]] || log "no PyTorch available: its columns stay empty"

ampd() { "$BIN/ampd_bench" "$@" threads="$THREADS" | tee -a "$RES"; }
torch_run() {
  [[ -n $TORCH_PY ]] || return 0
  "$TORCH_PY" -W ignore "$ROOT/bench/cpu/torch_mlp.py" "$@" threads="$THREADS" | tee -a "$RES"
}

torch_gpt() {
  [[ -n $TORCH_PY ]] || return 0
  "$TORCH_PY" -W ignore "$ROOT/bench/cpu/torch_gpt.py" "$@" threads="$THREADS" | tee -a "$RES"
}

if [[ $ONLY == all ]]; then
# ---- 1-3: the 784-1024-1024-10 MLP, batch 256 ----------------------------------------
# REPEATS rounds, each running ampd, PyTorch, the raw matmuls and the phases in turn, so
# that each ratio compares runs from the same minute (this VM's speed drifts by up to 25%
# over seconds); the table takes medians. FP16 runs once: PyTorch's CPU fp16 takes ~0.7 s
# a step.
for rep in $(seq "$REPEATS"); do
  for p in fp32 bf16 fp16; do
    [[ $p == fp16 && $rep -gt 1 ]] && continue
    log "training step, $p (repeat $rep of $REPEATS)"
    ampd steps precision=$p width=1024 batch=256 steps="$STEPS" warmup=5
    torch_run precision=$p width=1024 batch=256 steps="$STEPS" warmup=5
    ampd matmul precision=$p width=1024 batch=256 reps="$STEPS"
    ampd paired precision=$p width=1024 batch=256 steps="$STEPS" warmup=5
    ampd phases precision=$p width=1024 batch=256 steps="$STEPS"
  done
done

# ---- 5: scaling with width and batch ----------------------------------------------------
for p in fp32 bf16; do
  for w in 256 512 2048; do
    log "scaling $p width=$w"
    ampd paired precision=$p width=$w batch=256 steps=$SCALE_STEPS warmup=3
  done
  for b in 64 128 512 1024; do
    log "scaling $p batch=$b"
    ampd paired precision=$p width=1024 batch=$b steps=$SCALE_STEPS warmup=3
  done
done

# ---- 4: the same job in-process and through `ampd serve` with 50 watchers ------------
ROUNDS=$SERVICE_ROUNDS "$ROOT/bench/cpu/service.sh" "$BUILD" "$OUT" "$THREADS" "$SERVICE_STEPS" | tee -a "$RES"
fi

# ---- 6: the character-level GPT (examples/shakespeare-char-{fp32,bf16}.yaml) ------------
# nanoGPT's shakespeare_char CPU configuration: ampd's Trainer step beside PyTorch eager
# running the same model (bench/cpu/torch_gpt.py), then the step's matrix products alone
# on oneDNN (`gpt_paired`: right after every step; `gpt_matmul`: on their own), REPEATS
# interleaved rounds; then once per precision the per-op breakdown (`gpt_ops`).
GPT_SPEC() { echo "$ROOT/examples/shakespeare-char-$1.yaml"; }
for rep in $(seq "$REPEATS"); do
  for p in fp32 bf16; do
    log "GPT training step, $p (repeat $rep of $REPEATS)"
    ampd gpt_steps spec="$(GPT_SPEC $p)" steps="$GPT_STEPS" warmup="$GPT_WARMUP"
    torch_gpt mode=steps precision=$p steps="$GPT_STEPS" warmup="$GPT_WARMUP"
    ampd gpt_paired spec="$(GPT_SPEC $p)" steps="$GPT_STEPS" warmup="$GPT_WARMUP"
    ampd gpt_matmul spec="$(GPT_SPEC $p)" reps="$GPT_STEPS"
  done
done
for p in fp32 bf16; do
  log "GPT per-op breakdown, $p"
  ampd gpt_ops spec="$(GPT_SPEC $p)" steps="$GPT_STEPS" warmup="$GPT_WARMUP" | cut -c1-200 >&2
done

# ---- 7: the GPT trained 2000 iterations on both sides: validation loss ------------------
# (mean over 200 validation batches; BENCH_GPT_CONVERGENCE=0 skips it)
if [[ $GPT_CONVERGENCE == 1 ]]; then
  for p in fp32 bf16; do
    log "GPT convergence, $p: ampd (2000 iterations)"
    ampd gpt_train spec="$(GPT_SPEC $p)" eval_batches=200
    log "GPT convergence, $p: PyTorch (2000 iterations)"
    torch_gpt mode=train precision=$p iters=2000 eval_batches=200
  done
fi

echo "{\"mode\":\"env\",\"torch_how\":\"${TORCH_HOW:-none}\",\"threads\":$THREADS,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\"}" >>"$RES"
python3 "$ROOT/bench/cpu/report.py" "$RES" | tee "$OUT/table.md"
