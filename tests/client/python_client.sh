#!/usr/bin/env bash
# The Python example client (client/python/ampd_client.py) against a real `ampd serve`:
# stubs generated as client/python/README.md says, a job submitted and watched to the end,
# a rejected spec, and an unreachable server.
#   python_client.sh AMPD_BINARY SOURCE_DIR
set -uo pipefail
AMPD=$1
SRC=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/server_fixture.sh"

$PY -c 'import grpc, yaml, google.protobuf' 2> /dev/null \
  || { echo "SKIP: /usr/bin/python3 lacks grpc (python3-grpcio), yaml or protobuf"; exit 77; }
[[ -x /usr/bin/grpc_python_plugin ]] && command -v protoc > /dev/null \
  || { echo "SKIP: protoc or /usr/bin/grpc_python_plugin (protobuf-compiler-grpc) missing"
       exit 77; }

work=$(mktemp -d)
trap 'stop_server KILL; rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*"
  [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]] && { echo "--- server log"; tail -30 "$SERVER_LOG"; }
  exit 1
}
CLIENT="$SRC/client/python/ampd_client.py"

# The documented generation step (README.md), into a directory the client then reuses.
mkdir -p "$work/stubs"
protoc --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin \
  --python_out="$work/stubs" --grpc_python_out="$work/stubs" \
  -I "$SRC/proto" "$SRC"/proto/ampd/v1/*.proto || fail "protoc failed"

start_server "$AMPD" "$work" || fail "could not start ampd serve"
echo "server: $SERVER_ADDR (pid $SERVER_PID)"

# 1. Submit and watch to the end with pre-generated stubs.
$PY "$CLIENT" --server "$SERVER_ADDR" --gen-dir "$work/stubs" "$SRC/examples/digits-fp16.yaml" \
  > "$work/out" 2> "$work/err"
code=$?
[[ $code -eq 0 ]] || fail "client exited $code: $(cat "$work/out" "$work/err")"
for want in "submitted job" "step 690/690" "eval at step" "checkpoint at step" "SUCCEEDED" \
            "loss_scale:" "skipped steps:" "checkpoint:    /"; do
  grep -q -- "$want" "$work/out" || fail "output lacks '$want': $(cat "$work/out")"
done

# 2. Stubs generated at run time (no --gen-dir), a JSON job file, AMPD_SERVER.
$PY - "$SRC/examples/digits-bf16.yaml" "$work/job.json" <<'PYEOF' || fail "yaml -> json"
import json, sys, yaml
json.dump(yaml.safe_load(open(sys.argv[1])), open(sys.argv[2], "w"))
PYEOF
AMPD_SERVER=$SERVER_ADDR $PY "$CLIENT" "$work/job.json" > "$work/out" 2> "$work/err"
code=$?
[[ $code -eq 0 ]] \
  || fail "client (JSON job, temp stubs) exited $code: $(cat "$work/out" "$work/err")"
grep -q "SUCCEEDED.*bf16 on cpu" "$work/out" || fail "bf16 job: $(cat "$work/out")"

# 3. A spec the server rejects: 2, the field named.
sed 's/lr: 0.002/lr: -1/' "$SRC/examples/digits-fp32.yaml" > "$work/bad.yaml"
$PY "$CLIENT" --server "$SERVER_ADDR" --gen-dir "$work/stubs" "$work/bad.yaml" \
  > "$work/out" 2> "$work/err"
code=$?
[[ $code -eq 2 ]] || fail "bad spec exited $code, want 2"
grep -q "optimizer.adamw.lr" "$work/err" || fail "error lacks the field: $(cat "$work/err")"
# An unknown field is caught by ParseDict before anything is sent.
printf 'name: x\nmodle: {}\n' > "$work/typo.yaml"
$PY "$CLIENT" --server "$SERVER_ADDR" --gen-dir "$work/stubs" "$work/typo.yaml" \
  > "$work/out" 2> "$work/err"
code=$?
[[ $code -eq 2 ]] || fail "unknown field exited $code, want 2"
grep -q "modle" "$work/err" || fail "error lacks the unknown field: $(cat "$work/err")"

# 4. Server down: 3 and a hint.
addr=$SERVER_ADDR
stop_server TERM
$PY "$CLIENT" --server "$addr" --gen-dir "$work/stubs" "$SRC/examples/digits-fp16.yaml" \
  > "$work/out" 2> "$work/err"
code=$?
[[ $code -eq 3 ]] || fail "server down exited $code, want 3: $(cat "$work/err")"
grep -q "ampd serve" "$work/err" || fail "no hint when the server is down: $(cat "$work/err")"
echo "python_client: all checks passed"
