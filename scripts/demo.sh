#!/usr/bin/env bash
# The main job (make demo): start the ampd service on the CPU backend, submit the example
# FP16 MLP on the real digits data with ampctl, stream its progress, then download the
# trained model. The server runs in the background on a free loopback port with its state
# under BUILD_DIR/demo-state, and is stopped by PID when the script ends, also on failure.
#
#   scripts/demo.sh [BUILD_DIR]     (make demo builds first)
set -euo pipefail
BUILD_DIR=${1:-build}
cd "$(dirname "$0")/.."
AMPD="$BUILD_DIR/bin/ampd"
AMPCTL="$BUILD_DIR/bin/ampctl"
STATE="$BUILD_DIR/demo-state"
OUT_DIR="$BUILD_DIR/demo"
MODEL="$OUT_DIR/digits-fp16.safetensors"
for bin in "$AMPD" "$AMPCTL"; do
  [[ -x "$bin" ]] || { echo "demo: $bin not found; run 'make build' first" >&2; exit 2; }
done

server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2> /dev/null; then
    echo "== stopping ampd serve (pid $server_pid)"
    kill -TERM "$server_pid" 2> /dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2> /dev/null || true
    wait "$server_pid" 2> /dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

free_port() {
  if command -v python3 > /dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
  else
    echo $((20000 + RANDOM % 20000))
  fi
}

# A fresh state dir each time: the demo's job is the only one.
rm -rf "$STATE"
mkdir -p "$STATE" "$OUT_DIR"
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  export AMPD_SERVER="127.0.0.1:$port"
  echo "== starting ampd serve on $AMPD_SERVER (CPU backend, state in $STATE)"
  "$AMPD" serve --grpc-addr "$AMPD_SERVER" --state-dir "$STATE" --backend cpu \
    --metrics-addr "${AMPD_METRICS_ADDR:-127.0.0.1:0}" > "$STATE/serve.log" 2>&1 &
  server_pid=$!
  ready=0
  for _ in $(seq 1 150); do  # up to 30 s
    kill -0 "$server_pid" 2> /dev/null || break
    if "$AMPCTL" --timeout 1 info > /dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  [[ $ready -eq 1 ]] && break
  echo "demo: the server did not come up (attempt $attempt):" >&2
  cat "$STATE/serve.log" >&2
  stop_server
  [[ $attempt -eq 5 ]] && exit 3
done
"$AMPCTL" info
echo

echo "== ampctl submit -f examples/digits-fp16.yaml --watch"
set +e
"$AMPCTL" submit -f examples/digits-fp16.yaml --watch
status=$?
set -e
echo
if [[ $status -ne 0 ]]; then
  echo "demo: the job did not succeed (ampctl exit $status); server log: $STATE/serve.log" >&2
  exit "$status"
fi

job=$("$AMPCTL" list -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)[-1]["id"])')
echo "== ampctl list"
"$AMPCTL" list
echo
echo "== ampctl download $job -o $MODEL"
"$AMPCTL" download "$job" -o "$MODEL"
echo
echo "The trained model (FP32 master weights + optimizer state, safetensors) is $MODEL"
server_copy=$("$AMPCTL" get "$job" -o json \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["checkpoint"])')
echo "(the server's own copy: $server_copy)."
echo "Load it in Python: safetensors.numpy.load_file('$MODEL')"
