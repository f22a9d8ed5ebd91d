# Sourced by the client tests: a real `ampd serve` on a free loopback port, with its own
# state dir, stopped by PID when the test exits (also on failure).
#
#   source server_fixture.sh
#   start_server AMPD_BINARY WORK_DIR [extra serve args...]   # sets SERVER_PID, SERVER_ADDR
#   stop_server [SIGNAL]                                      # default TERM; waits for exit
#
# SERVER_READY_ARGS (an array) is passed to `ampctl info` when probing readiness, e.g.
# (--ca-cert ca.crt --token-file token) for a server with TLS and a token.
#
# A port is picked free by binding port 0 in Python; if another process takes it before
# the server binds, the server exits (3) and start_server retries with a new port.

SERVER_PID=""
SERVER_ADDR=""
SERVER_LOG=""
SERVER_READY_ARGS=()

free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# ready ADDR: a gRPC round trip answers (ampctl info, or the Python stub when no ampctl).
_server_ready() {
  if [[ -n "${AMPCTL:-}" ]]; then
    "$AMPCTL" --server "$1" --timeout 1 "${SERVER_READY_ARGS[@]}" info > /dev/null 2>&1
  else
    /usr/bin/python3 - "$1" <<'PYEOF' > /dev/null 2>&1
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(ch).result(timeout=1)
PYEOF
  fi
}

start_server() {
  local ampd=$1 work=$2
  shift 2
  local attempt port
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    SERVER_ADDR="127.0.0.1:$port"
    SERVER_LOG="$work/serve-$port.log"
    "$ampd" serve --grpc-addr "$SERVER_ADDR" --state-dir "$work/state" --backend cpu \
      --threads 1 --metrics-addr 127.0.0.1:0 "$@" > "$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 1 300); do  # up to 60 s
      if ! kill -0 "$SERVER_PID" 2> /dev/null; then break; fi
      if _server_ready "$SERVER_ADDR"; then return 0; fi
      sleep 0.2
    done
    if kill -0 "$SERVER_PID" 2> /dev/null; then
      echo "server at $SERVER_ADDR did not answer within 60 s:"; cat "$SERVER_LOG"
      kill -KILL "$SERVER_PID"; SERVER_PID=""
      return 1
    fi
    wait "$SERVER_PID" || true
    SERVER_PID=""
    echo "server exited before answering (attempt $attempt):"; cat "$SERVER_LOG"
  done
  return 1
}

stop_server() {
  local sig=${1:-TERM}
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2> /dev/null; then
    kill "-$sig" "$SERVER_PID"
    local i
    for i in $(seq 1 150); do  # up to 30 s, then KILL
      kill -0 "$SERVER_PID" 2> /dev/null || break
      sleep 0.2
    done
    kill -0 "$SERVER_PID" 2> /dev/null && kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2> /dev/null || true
  fi
  SERVER_PID=""
}
