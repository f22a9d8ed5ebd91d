#!/usr/bin/env bash
# The real engine and service on the CUDA backend, for a GPU machine without Debian dev
# packages: runs the binaries that bench/gpu/bundle.sh packed (.gpubundle/ampd.tar.xz),
# after check.sh's kernel-level tests.
#
#   1. `ampd train --backend cuda` on the digits examples (fp32, fp16, bf16) and on
#      bench/gpu/jobs/every-layer-bf16.yaml (every layer kind) in all three precisions,
#      each beside the same job on `--backend cpu`: final loss and validation accuracy.
#   2. `ampd serve --backend cuda` + `ampctl submit --watch` + `ampctl download`: the service
#      path on the GPU, stopped by PID.
#   3. `ampd_bench backend=cuda` (the engine's Trainer, step by step) against PyTorch AMP
#      on the GPU (bench/cpu/torch_mlp.py device=cuda), same MLP 784-W-W-10.
#   4. The GPU GPT example (examples/shakespeare-char-gpu.yaml, GPT_STEPS iterations) and
#      the same model in PyTorch AMP: ms per iteration and val loss.
# Prints a short table last; logs under $OUT. Exit status non-zero if any part failed.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/ampd-engine-check}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[engine_check +$(( $(date +%s) - T0 ))s] $*"; }
declare -a ROWS=()
overall=0
fail() { overall=1; ROWS+=("FAILED: $*"); }

B=/tmp/ampd-gpu-bundle
rm -rf "$B" && mkdir -p "$B"
tar -xJf "$ROOT/.gpubundle/ampd.tar.xz" -C "$B" || { echo "no bundle: run bench/gpu/bundle.sh"; exit 2; }
# The bundled libraries for ampd's binaries only (not exported: PyTorch below must keep the
# machine's own libstdc++ and friends).
LDP=$B/deps:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
AMPD="env LD_LIBRARY_PATH=$LDP $B/bin/ampd"
AMPCTL="env LD_LIBRARY_PATH=$LDP $B/bin/ampctl"
AMPD_BENCH="env LD_LIBRARY_PATH=$LDP $B/bin/ampd_bench"
$AMPD --help > /dev/null || { echo "ampd does not start here:"; LD_LIBRARY_PATH=$LDP ldd "$B/bin/ampd" | grep 'not found'; exit 2; }
NCPU=$(nproc)

# ---- 1. training jobs, cuda beside cpu ---------------------------------------------------------
JOBS=/tmp/ampd-jobs
rm -rf "$JOBS"
mkdir -p "$JOBS"
for p in fp32 fp16 bf16; do
  cp "$ROOT/examples/digits-$p.yaml" "$JOBS/digits-$p.yaml"
  sed "s/^precision: bf16/precision: $p/; s/^name: every-layer/name: every-layer-$p/" \
    "$ROOT/bench/gpu/jobs/every-layer-bf16.yaml" > "$JOBS/every-layer-$p.yaml"
done
for job in digits-fp32 digits-fp16 digits-bf16 every-layer-fp32 every-layer-fp16 every-layer-bf16; do
  for be in cuda cpu; do
    log="$JOBS/$job.$be.log"
    s=$(date +%s.%N)
    timeout 240 $AMPD train -f "$JOBS/$job.yaml" --backend "$be" --threads "$NCPU" \
      --out "$JOBS/out-$job-$be" --quiet > "$log" 2>&1
    rc=$?
    t=$(python3 -c "import time; print(f'{time.time()-$s:.1f}')")
    line=$(awk '/^(SUCCEEDED|FAILED|CANCELLED)/{st=$1} /train_loss:/{tl=$2} /val_loss:/{vl=$2}
      /val_accuracy:/{va=$2} /skipped steps:/{sk=$3}
      END{printf "%s train_loss %s val_loss %s val_acc %s skipped %s", st, tl, vl, va, sk}' "$log")
    ROWS+=("$(printf '%-18s %-5s rc=%d %6ss  %s' "$job" "$be" "$rc" "$t" "$line")")
    [ "$rc" -ne 0 ] && { fail "$job on $be (rc=$rc)"; tail -5 "$log"; }
  done
done

for f in "$JOBS"/*.log; do echo "==== $f"; cat "$f"; done > "$OUT/train.log"

# ---- 2. the service on the GPU ----------------------------------------------------------------
ST=/tmp/ampd-state
rm -rf "$ST"
$AMPD serve --backend cuda --grpc-addr 127.0.0.1:50551 --metrics-addr 127.0.0.1:9151 \
  --state-dir "$ST" > "$OUT/serve.log" 2>&1 &
SPID=$!
ready=0
for _ in $(seq 1 100); do
  if $AMPCTL --server 127.0.0.1:50551 info > "$JOBS/info.txt" 2>&1; then ready=1; break; fi
  sleep 0.2
done
if [ "$ready" -eq 1 ]; then
  cat "$JOBS/info.txt" | head -12
  timeout 180 $AMPCTL --server 127.0.0.1:50551 submit -f "$JOBS/digits-bf16.yaml" --watch \
    > "$OUT/submit.log" 2>&1
  rc=$?
  tail -4 "$OUT/submit.log"
  id=$($AMPCTL --server 127.0.0.1:50551 list -o json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[-1]["id"])' 2>/dev/null)
  ROWS+=("service: ampctl submit --watch digits-bf16 on cuda: rc=$rc job ${id:-?}")
  [ "$rc" -ne 0 ] && fail "service submit (rc=$rc)"
  if [ -n "$id" ]; then
    $AMPCTL --server 127.0.0.1:50551 download "$id" -o "$JOBS/served.safetensors" > "$JOBS/download.log" 2>&1
    rc=$?
    ROWS+=("service: ampctl download: rc=$rc, $(stat -c %s "$JOBS/served.safetensors" 2>/dev/null || echo 0) bytes")
    [ "$rc" -ne 0 ] && fail "download (rc=$rc): $(tail -2 "$JOBS/download.log")"
  fi
  python3 -c "
import urllib.request
t = urllib.request.urlopen('http://127.0.0.1:9151/metrics', timeout=5).read().decode()
print('\n'.join(l for l in t.splitlines() if l.startswith(('ampd_jobs', 'ampd_train_steps', 'ampd_overflow')))[:1200])
" > "$JOBS/metrics.txt" 2>&1 || fail "metrics scrape"
  head -8 "$JOBS/metrics.txt"
else
  fail "ampd serve --backend cuda did not answer: $(tail -3 "$OUT/serve.log")"
fi
kill -TERM "$SPID" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.2; done
kill -KILL "$SPID" 2>/dev/null
wait "$SPID" 2>/dev/null

# ---- 3. engine step vs PyTorch on the GPU ------------------------------------------------------
BENCH=$OUT/bench.jsonl
: > "$BENCH"
for w in 1024 4096; do
  for b in 256 4096; do
    for p in fp32 fp16 bf16; do
      timeout 120 $AMPD_BENCH steps backend=cuda precision=$p width=$w batch=$b \
        steps=40 warmup=5 >> "$BENCH" 2> "$OUT/bench.err" || fail "ampd_bench $p $w $b: $(tail -1 "$OUT/bench.err")"
    done
  done
done
PYTHONUNBUFFERED=1 timeout 240 python3 "$ROOT/bench/cpu/torch_mlp.py" device=cuda \
  precision=fp32,fp16,bf16 width=1024,4096 batch=256,4096 steps=40 warmup=5 >> "$BENCH" \
  2>> "$OUT/bench.err" || fail "torch_mlp.py device=cuda"
for p in fp32 bf16; do
  timeout 120 $AMPD_BENCH phases backend=cuda precision=$p width=4096 batch=4096 \
    steps=20 >> "$BENCH" 2>> "$OUT/bench.err" || true
done

# ---- 4. the GPU GPT example against PyTorch AMP --------------------------------------------------
# examples/shakespeare-char-gpu.yaml (6 layers, 384 wide, context 256, batch 64, bf16) for
# GPT_STEPS iterations (default 500; 5000 is the full example), then the same model in
# PyTorch (bench/cpu/torch_gpt.py device=cuda, bf16 autocast): ms per iteration and val loss.
GPT_STEPS=${GPT_STEPS:-500}
sed "s/max_steps: 5000/max_steps: $GPT_STEPS/; s/eval_every: 250/eval_every: $GPT_STEPS/; s/checkpoint_every: 1000/checkpoint_every: 0/" \
  "$ROOT/examples/shakespeare-char-gpu.yaml" > "$JOBS/gpt-gpu.yaml"
s=$(date +%s.%N)
timeout 480 $AMPD train -f "$JOBS/gpt-gpu.yaml" --backend cuda --out "$JOBS/out-gpt" --json \
  > "$JOBS/gpt-gpu.jsonl" 2> "$OUT/gpt-gpu.err"
rc=$?
t=$(python3 -c "import time; print(f'{time.time()-$s:.1f}')")
gpt_line=$(python3 - "$JOBS/gpt-gpu.jsonl" <<'PY'
import json, sys
rates, val, state = [], None, "?"
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if "progress" in e and e["progress"].get("samples_per_second"):
        rates.append(64.0 / e["progress"]["samples_per_second"] * 1000.0)  # ms per iteration
    if "evaluation" in e:
        val = e["evaluation"].get("val_loss")
    if "state" in e and "metrics" in e:
        state = e["state"]
rates = sorted(rates[1:] or rates)
med = rates[len(rates) // 2] if rates else float("nan")
print(f"{state} ms/iter {med:.1f} val_loss {val}")
PY
)
ROWS+=("GPT gpu example ($GPT_STEPS iters, bf16, cuda): rc=$rc ${t}s  $gpt_line")
[ "$rc" -ne 0 ] && { fail "GPT gpu example (rc=$rc)"; tail -5 "$OUT/gpt-gpu.err"; }
if [ -f "$ROOT/bench/cpu/torch_gpt.py" ]; then
  PYTHONUNBUFFERED=1 timeout 480 python3 "$ROOT/bench/cpu/torch_gpt.py" mode=train device=cuda \
    precision=bf16 n_layer=6 n_head=6 n_embd=384 block_size=256 batch=64 dropout=0.2 \
    iters=$GPT_STEPS eval_batches=200 > "$OUT/torch-gpt.jsonl" 2> "$OUT/torch-gpt.err" ||
    fail "torch_gpt.py device=cuda: $(tail -2 "$OUT/torch-gpt.err")"
  torch_line=$(python3 - "$OUT/torch-gpt.jsonl" 2>&1 <<'PY'
import json, sys
e = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
if "val_loss" in e:
    print(f"ms/iter {1000 * e['train_s'] / e['iters']:.1f} val_loss {e['val_loss']:.4f}")
else:
    print(e)
PY
)
  ROWS+=("GPT gpu example, PyTorch AMP bf16 ($GPT_STEPS iters): $torch_line")
fi

echo "================================================================================"
echo "ampd engine + service on the CUDA backend ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)), $(( $(date +%s) - T0 )) s"
printf '%s\n' "${ROWS[@]}"
python3 - "$BENCH" <<'PY'
import json, sys
ampd, torch, phases = {}, {}, []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    key = (e.get("width"), e.get("batch"), e.get("precision"))
    if e.get("mode") == "steps":
        ampd[key] = e
    elif e.get("mode") == "torch":
        torch[key] = e
    elif e.get("mode") == "phases":
        phases.append(e)
print("MLP 784-W-W-10, AdamW; engine Trainer (report_every=1) vs PyTorch AMP, median step ms")
print(f"{'W':>5} {'batch':>5} {'prec':>5} {'ampd ms':>8} {'torch ms':>8} {'ampd/torch':>10} {'ampd GF/s':>9}")
for key in sorted(ampd, key=lambda k: (k[0], k[1], ["fp32", "fp16", "bf16"].index(k[2]))):
    a, t = ampd[key], torch.get(key, {})
    tm = t.get("step_ms_median")
    r = f"{a['step_ms_median'] / tm:.2f}x" if tm else t.get("error", "-")[:20]
    print(f"{key[0]:>5} {key[1]:>5} {key[2]:>5} {a['step_ms_median']:>8.3f} "
          f"{(f'{tm:.3f}' if tm else '-'):>8} {r:>10} {a['gflops']:>9.0f}")
for e in phases:
    print(f"phases W={e['width']} B={e['batch']} {e['precision']}: " +
          ", ".join(f"{k} {v:.3f}" for k, v in e["phase_ms"].items()))
PY
exit "$overall"
