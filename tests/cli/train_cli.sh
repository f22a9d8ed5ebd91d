#!/usr/bin/env bash
# `ampd train` as a user meets it: --json events and summary, exit codes, error messages,
# and a checkpoint that numpy can load and use.
#   train_cli.sh AMPD_BINARY SOURCE_DIR
set -euo pipefail
AMPD=$1
SRC=$2
PY=/usr/bin/python3
$PY -c 'import numpy' 2>/dev/null || { echo "SKIP: /usr/bin/python3 has no numpy"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() { echo "FAIL: $*"; exit 1; }

# 1. --json: one JSON object per line, the summary last with the documented fields.
"$AMPD" train -f "$SRC/examples/digits-bf16.yaml" --backend cpu --out "$work/bf16" --json > "$work/events.jsonl"
$PY - "$work/events.jsonl" <<'PYEOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
summary = lines[-1]
for key in ("id", "state", "step", "metrics", "loss_scale", "overflow_skipped_steps",
            "checkpoint", "failure_reason", "precision"):
    assert key in summary, f"summary lacks {key}: {sorted(summary)}"
assert summary["state"] == "SUCCEEDED", summary["state"]
assert summary["metrics"]["val_accuracy"] >= 0.95, summary["metrics"]
events = lines[:-1]
seqs = [int(e["seq"]) for e in events]
assert seqs == list(range(1, len(seqs) + 1)), "event seq must count 1, 2, 3, ..."
kinds = {k for e in events for k in ("progress", "evaluation", "checkpoint", "state_change") if k in e}
assert kinds == {"progress", "evaluation", "checkpoint", "state_change"}, kinds
print("json ok:", summary["metrics"])
PYEOF

# 2. The FP16 summary shows the loss scale and the skipped-step count.
"$AMPD" train -f "$SRC/examples/digits-fp16.yaml" --backend cpu --out "$work/fp16" -q > "$work/fp16.txt"
grep -q "loss_scale:" "$work/fp16.txt" || fail "fp16 summary lacks loss_scale"
grep -q "skipped steps:" "$work/fp16.txt" || fail "fp16 summary lacks skipped steps"

# 3. The checkpoint loads in numpy and classifies digits.
ckpt=$(ls "$work"/fp16/step-*.safetensors | head -1)
$PY "$SRC/tests/python/check_checkpoint.py" "$ckpt" "$SRC/examples/data/digits.csv.gz" 0.95

# 4. Bad input: exit 2 and a message naming the field.
sed 's/lr: 0.002/lr: -1/' "$SRC/examples/digits-fp32.yaml" > "$work/bad.yaml"
set +e
"$AMPD" train -f "$work/bad.yaml" --backend cpu > "$work/bad.out" 2> "$work/bad.err"
code=$?
set -e
[ "$code" -eq 2 ] || fail "bad spec exit code $code, want 2"
grep -q "optimizer.adamw.lr" "$work/bad.err" || fail "error does not name optimizer.adamw.lr: $(cat "$work/bad.err")"

# 5. --backend cuda without a GPU/plugin fails at once with a reason (exit 3). When the
# plugin was built (it sits next to ampd), the reason comes from its entry point
# ("no CUDA GPU: cudaGetDeviceCount returned ..."); otherwise from the loader ("not built").
plugin="$(dirname "$AMPD")/libampd_backend_cuda.so"
set +e
start=$(date +%s)
"$AMPD" train -f "$SRC/examples/digits-fp32.yaml" --backend cuda --out "$work/cuda" > /dev/null 2> "$work/cuda.err"
code=$?
elapsed=$(( $(date +%s) - start ))
set -e
if [ "$code" -ne 0 ]; then
  [ "$code" -eq 3 ] || fail "--backend cuda exit code $code, want 3"
  grep -qi "cuda" "$work/cuda.err" || fail "no reason given for the CUDA failure"
  [ "$elapsed" -le 20 ] || fail "--backend cuda took ${elapsed}s to fail"
  if [ -f "$plugin" ]; then
    grep -qE "no CUDA GPU|compute capability|could not start" "$work/cuda.err" ||
      fail "the reason does not come from the plugin's entry point: $(cat "$work/cuda.err")"
  else
    grep -q "not built" "$work/cuda.err" || fail "unexpected reason: $(cat "$work/cuda.err")"
  fi
  echo "--backend cuda: $(cat "$work/cuda.err")"

  # 5b. --backend auto: one line saying why CUDA was not used, then the job runs on the CPU.
  "$AMPD" train -f "$SRC/examples/digits-fp32.yaml" --backend auto --out "$work/auto" --json \
    > "$work/auto.jsonl" 2> "$work/auto.err"
  [ "$(grep -c "CUDA backend not used" "$work/auto.err")" -eq 1 ] ||
    fail "--backend auto should log one line about CUDA: $(cat "$work/auto.err")"
  [ "$(wc -l < "$work/auto.err")" -eq 1 ] || fail "--backend auto logged more: $(cat "$work/auto.err")"
  tail -1 "$work/auto.jsonl" | grep -q '"backend": *"cpu"' || fail "--backend auto did not use the CPU"
fi

# 6. --help teaches.
"$AMPD" train --help | grep -q "Examples:" || fail "train --help has no examples"
echo "train_cli: all checks passed"
