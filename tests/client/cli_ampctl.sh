#!/usr/bin/env bash
# ampctl against a real `ampd serve` on loopback: every subcommand, -o json fields, exit
# codes, Ctrl-C during watch, reconnection across a server restart, text generation from a
# tiny GPT job, and the message when the server is down.
#   cli_ampctl.sh AMPD_BINARY AMPCTL_BINARY SOURCE_DIR
set -uo pipefail
AMPD=$1
AMPCTL=$2
SRC=$3
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/server_fixture.sh"

work=$(mktemp -d)
cleanup() {
  stop_server KILL
  [[ -n "${watch_pid:-}" ]] && kill -KILL "$watch_pid" 2> /dev/null
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]] && { echo "--- server log"; tail -30 "$SERVER_LOG"; }
  exit 1
}

# run CODE ARGS...: runs ampctl, output in $work/out and $work/err; the exit code must be CODE.
run() {
  local want=$1
  shift
  "$AMPCTL" --server "$SERVER_ADDR" "$@" > "$work/out" 2> "$work/err" < /dev/null
  local got=$?
  if [[ "$got" -ne "$want" ]]; then
    echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"
    fail "ampctl $* exited $got, want $want"
  fi
}
has() {
  grep -q -- "$1" "$work/${2:-out}" || fail "expected '$1' in ${2:-out}: $(cat "$work/${2:-out}")"
}
# pyjson 'python expression over j' : evaluated with j = the JSON in $work/out; must be true.
pyjson() {
  $PY - "$work/out" "$1" <<'PYEOF' || fail "json check failed: $1 on $(head -c 2000 "$work/out")"
import json, sys
j = json.load(open(sys.argv[1]))
ok = eval("(" + sys.argv[2] + ")")
sys.exit(0 if ok else 1)
PYEOF
}
json_field() {
  $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/out" "$1"
}
# only_file DIR NAME: DIR holds NAME and nothing else (no temporary files left behind).
only_file() {
  local extra
  extra=$(ls -A "$1" | grep -v "^$2\$")
  [[ -z "$extra" ]] || fail "left in $1: $extra"
}

# A job that runs until cancelled (a million steps of the digits MLP).
sed -e 's/epochs: 30/epochs: 100000\n  max_steps: 1000000/' \
  -e 's/name: digits-fp16/name: long-run/' "$SRC/examples/digits-fp16.yaml" > "$work/long.yaml"

start_server "$AMPD" "$work" || fail "could not start ampd serve"
echo "server: $SERVER_ADDR (pid $SERVER_PID)"

# --- help teaches ---
run 0 --help
has "Examples:"; has "Exit status"; has "AMPD_SERVER"
for cmd in submit watch get list cancel download info generate; do
  run 0 "$cmd" --help
  has "Example"
done
run 0 datasets upload --help
has "Example"
run 2 frobnicate
run 2 get  # missing JOB

# --- info ---
run 0 info
has "backend:"; has "cpu"
run 0 info -o json
pyjson 'j["backend"] == "cpu" and "fp16" in j["precisions"]'

# --- submit --watch: progress lines, then the summary; exit 0 ---
run 0 submit -f "$SRC/examples/digits-fp16.yaml" --watch
has "submitted job"; has "step 690/690"; has "SUCCEEDED"; has "loss_scale:"; has "skipped steps:"
job=$(sed -n 's/^submitted job \([^ ]*\).*/\1/p' "$work/out" | head -1)
[[ -n "$job" ]] || fail "no job id in submit output"
echo "fp16 job: $job"

# --- get (text and JSON) ---
run 0 get "$job"
has "state:          SUCCEEDED"; has "loss_scale:"; has "checkpoint:"
run 0 get "$job" -o json
pyjson 'all(k in j for k in ("id", "state", "step", "metrics", "loss_scale",
                             "overflow_skipped_steps", "checkpoint", "failure_reason"))'
pyjson 'j["state"] == "SUCCEEDED" and int(j["step"]) == 690 and j["metrics"]["val_accuracy"] >= 0.9'
pyjson 'j["precision"] == "fp16" and j["loss_scale"] > 0
        and j["checkpoint"].endswith(".safetensors")'
run 4 get no-such-job
has "not found" err

# --- list (table and JSON, state filter) ---
run 0 list
for col in "ID  " STATE NAME PRECISION STEP/TOTAL VAL_ACC LOSS_SCALE SKIPPED AGE; do
  has "$col"
done
grep -q "^$job  *SUCCEEDED  *digits-fp16  *fp16  *690/690 " "$work/out" \
  || fail "list row: $(cat "$work/out")"
run 0 list -o json
pyjson 'isinstance(j, list) and any(x["id"] == "'"$job"'" and "metrics" in x for x in j)'
run 0 list --state succeeded -o json
pyjson 'all(x["state"] == "SUCCEEDED" for x in j) and len(j) >= 1'
run 0 list --state RUNNING,QUEUED
has "no jobs"
run 2 list --state bogus
has "QUEUED, RUNNING" err

# --- watch a finished job: the whole history replays; JSON lines; --since ---
run 0 watch "$job" -o json
$PY - "$work/out" <<'PYEOF' || fail "watch -o json"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
events, job = lines[:-1], lines[-1]
assert job["state"] == "SUCCEEDED" and "metrics" in job, job
seqs = [int(e["seq"]) for e in events]
assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 1, seqs[:5]
assert any("progress" in e for e in events) and any("evaluation" in e for e in events)
PYEOF
run 0 watch "$job" --since 5 -o json
head -1 "$work/out" > "$work/first"
$PY -c 'import json, sys; sys.exit(int(json.load(open(sys.argv[1]))["seq"]) != 6)' "$work/first" \
  || fail "--since 5 did not start at seq 6: $(cat "$work/first")"
run 0 watch "$job"
has "SUCCEEDED"
run 4 watch no-such-job

# --- cancel a finished job: 5 ---
run 5 cancel "$job"
has "already" err

# --- idempotent submit with --request-id ---
run 0 submit -f "$SRC/examples/digits-bf16.yaml" --request-id cli-test-1 -o json
first=$(json_field id)
run 0 submit -f "$SRC/examples/digits-bf16.yaml" --request-id cli-test-1 -o json
second=$(json_field id)
[[ "$first" == "$second" ]] || fail "same --request-id gave two jobs: $first, $second"
run 0 get "$first" -o json
pyjson 'j["client_request_id"] == "cli-test-1"'
run 0 watch "$first"  # let it finish before the long job

# --- bad job files: 2, with the line or the field ---
sed 's/lr: 0.002/lr: -1/' "$SRC/examples/digits-fp32.yaml" > "$work/bad-lr.yaml"
run 2 submit -f "$work/bad-lr.yaml"
has "optimizer.adamw.lr" err
printf 'name: x\nmodel: [\n' > "$work/bad-syntax.yaml"
run 2 submit -f "$work/bad-syntax.yaml"
has "line" err
run 2 submit -f "$work/missing.yaml"
has "no such file" err
# A job file on standard input.
"$AMPCTL" --server "$SERVER_ADDR" submit -f - -o json < "$SRC/examples/digits-fp32.yaml" \
  > "$work/out" 2> "$work/err" || fail "submit -f - failed: $(cat "$work/err")"
pyjson 'j["spec"]["name"] == "digits-fp32"'
run 0 watch "$(json_field id)"

# --- download: the checkpoint, written atomically, readable ---
mkdir -p "$work/dl"
run 0 download "$job" -o "$work/dl/digits.safetensors"
has "step 690"
[[ -s "$work/dl/digits.safetensors" ]] || fail "no downloaded file"
only_file "$work/dl" digits.safetensors
$PY - "$work/dl/digits.safetensors" <<'PYEOF' || fail "downloaded file is not safetensors"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
assert "0.weight" in header and header["__metadata__"]["ampd.step"] == "690", list(header)[:5]
PYEOF
if $PY -c 'import numpy' 2> /dev/null; then
  $PY "$SRC/tests/python/check_checkpoint.py" "$work/dl/digits.safetensors" \
    "$SRC/examples/data/digits.csv.gz" 0.9 || fail "downloaded checkpoint does not classify digits"
fi
run 4 download no-such-job -o "$work/dl/x.safetensors"
[[ ! -e "$work/dl/x.safetensors" ]] || fail "a failed download left its file"
only_file "$work/dl" digits.safetensors
run 2 download "$job" -o "$work/no-such-dir/x.safetensors"

# --- generate: a tiny GPT's text, streamed to stdout; the refusals and their exit codes ---
cat > "$work/gpt.yaml" <<'EOF2'
name: tiny-gpt
precision: fp32
model: {gpt: {n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}}
data: {text: {builtin: tinyshakespeare, eval_batches: 2}, batch_size: 4}
optimizer: {adamw: {lr: 0.01}}
training: {max_steps: 20, seed: 1}
EOF2
run 0 submit -f "$work/gpt.yaml" -o json
gpt=$(json_field id)
run 0 watch "$gpt"
run 0 generate "$gpt" --prompt "ROMEO:" --tokens 50 --temperature 0.8 --top-k 200 --seed 1
# The prompt, the 50 characters, and a newline unless the text ended with one.
$PY - "$work/out" <<'PYEOF' || fail "generate output: $(cat "$work/out")"
import sys
t = open(sys.argv[1], "rb").read()
assert t.startswith(b"ROMEO:"), t
body = t[6:]
assert len(body) == (50 if body[49:50] == b"\n" else 51) and body.endswith(b"\n"), body
PYEOF
has "50 tokens in" err; has "step 20 checkpoint of job $gpt" err
cp "$work/out" "$work/gen-seed-1"
run 0 generate "$gpt" --prompt "ROMEO:" --tokens 50 --seed 1
cmp -s "$work/out" "$work/gen-seed-1" || fail "the same seed gave another text"
run 0 generate "$gpt" --tokens 30 --temperature 0 --no-echo --step 20
run 4 generate no-such-job
has "ampctl list" err
run 4 generate "$gpt" --step 7
has "keeps the checkpoint of step 20" err
run 5 generate "$job"  # the digits MLP
has "not a language model" err
run 6 generate "$gpt" --tokens 5000
has "max-generate-tokens" err
run 2 generate "$gpt" --prompt "ROMEO~"
has "'~'" err
run 2 generate "$gpt" --temperature -1

# --- data sets: upload (SHA-256 checked by the server), list, reuse in a job ---
run 0 datasets upload digits.csv.gz "$SRC/examples/data/digits.csv.gz"
has "uploaded data set digits.csv.gz"
sum=$(sha256sum "$SRC/examples/data/digits.csv.gz" | cut -d' ' -f1)
has "$sum"
run 5 datasets upload digits.csv.gz "$SRC/examples/data/digits.csv.gz"
run 2 datasets upload ../evil "$SRC/examples/data/digits.csv.gz"
run 2 datasets upload ok.csv "$work/missing.csv"
run 0 datasets list
has "digits.csv.gz"; has "$sum"
run 0 datasets list -o json
pyjson 'any(d["name"] == "digits.csv.gz" and d["sha256"] == "'"$sum"'"
            and int(d["size_bytes"]) > 0 for d in j)'
sed -e 's/digits: {}/csv: {path: digits.csv.gz, label_column: -1}/' \
  -e 's/name: digits-fp16/name: csv-upload/' -e 's/epochs: 30/epochs: 3/' \
  "$SRC/examples/digits-fp16.yaml" > "$work/csv.yaml"
run 0 submit -f "$work/csv.yaml" --watch
has "SUCCEEDED"

# --- Ctrl-C during watch: stops watching, the job keeps running ---
run 0 submit -f "$work/long.yaml" -o json
long=$(json_field id)
"$AMPCTL" --server "$SERVER_ADDR" watch "$long" > "$work/w.out" 2> "$work/w.err" &
watch_pid=$!
for i in $(seq 1 150); do grep -q "^step " "$work/w.out" && break; sleep 0.2; done
grep -q "^step " "$work/w.out" \
  || fail "watch printed no progress: $(cat "$work/w.out" "$work/w.err")"
kill -INT "$watch_pid"
wait "$watch_pid"
code=$?
watch_pid=""
[[ "$code" -eq 130 ]] || fail "watch after Ctrl-C exited $code, want 130: $(cat "$work/w.err")"
grep -q "keeps running" "$work/w.err" \
  || fail "no 'keeps running' after Ctrl-C: $(cat "$work/w.err")"
run 0 get "$long" -o json
pyjson 'j["state"] == "RUNNING"'

# --- reconnect: watch across a server restart on the same address ---
since=$(sed -n 's/.*--since \([0-9]*\).*/\1/p' "$work/w.err")
[[ -n "$since" ]] || fail "no --since hint after Ctrl-C: $(cat "$work/w.err")"
"$AMPCTL" --server "$SERVER_ADDR" watch "$long" --since "$since" > "$work/r.out" 2> "$work/r.err" &
watch_pid=$!
for i in $(seq 1 150); do grep -q "^watching job" "$work/r.out" && break; sleep 0.2; done
grep -q "^watching job" "$work/r.out" || fail "watch did not start: $(cat "$work/r.out" "$work/r.err")"
addr=$SERVER_ADDR
stop_server TERM
"$AMPD" serve --grpc-addr "$addr" --state-dir "$work/state" --backend cpu --threads 1 \
  --metrics-addr 127.0.0.1:0 > "$work/serve-restart.log" 2>&1 &
SERVER_PID=$!
SERVER_LOG="$work/serve-restart.log"
for i in $(seq 1 150); do _server_ready "$addr" && break; sleep 0.2; done
_server_ready "$addr" || fail "restarted server does not answer"
for i in $(seq 1 100); do
  grep -q "reconnecting" "$work/r.out" && grep -q "^step " "$work/r.out" && break
  sleep 0.2
done
grep -q "reconnecting" "$work/r.out" \
  || fail "watch did not reconnect: $(cat "$work/r.out" "$work/r.err")"

# --- cancel a running job; the watcher sees it end: exit 1 ---
run 0 cancel "$long"
has "$long"
wait "$watch_pid"
code=$?
watch_pid=""
[[ "$code" -eq 1 ]] \
  || fail "watch of a cancelled job exited $code, want 1: $(tail -5 "$work/r.out" "$work/r.err")"
grep -q "CANCELLED" "$work/r.out" || fail "watch output lacks CANCELLED"
grep -q "^step " "$work/r.out" || fail "watch printed no progress after reconnecting"
run 0 get "$long" -o json
pyjson 'j["state"] == "CANCELLED"'
run 5 cancel "$long"

# --- server down: exit 3 and a message that says what to check ---
stop_server TERM
run 3 info
has "cannot reach ampd at $addr: connection refused" err
has "ampd serve" err; has "AMPD_SERVER" err
run 3 get "$job"
run 3 watch "$job"
run 3 list
AMPD_SERVER=$addr "$AMPCTL" info > /dev/null 2> "$work/err"
[[ $? -eq 3 ]] || fail "AMPD_SERVER not honoured"
has "$addr" err

echo "cli_ampctl: all checks passed"
