#!/usr/bin/env bash
# ampctl (and the Python client) against a real `ampd serve` with TLS and a bearer token:
# every command end to end with --ca-cert and --token-file, the environment variables,
# exit 7 and its message without or with a wrong token, exit 3 and a hint when TLS is on
# one side only or the CA is wrong, exit 2 for unreadable token and CA files, the
# server's startup errors for bad files, and the token never printed by ampctl or logged
# by the server. Certificates are made at test time with the openssl CLI.
#   cli_tls.sh AMPD_BINARY AMPCTL_BINARY SOURCE_DIR
set -uo pipefail
AMPD=$1
AMPCTL=$2
SRC=$3
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/server_fixture.sh"

work=$(mktemp -d)
plain_pid=""
cleanup() {
  stop_server KILL
  [[ -n "$plain_pid" ]] && kill -KILL "$plain_pid" 2> /dev/null
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]] && { echo "--- server log"; tail -30 "$SERVER_LOG"; }
  exit 1
}

"$SRC/tests/server/make_test_certs.sh" "$work/certs" || fail "could not make test certificates"
CA=$work/certs/ca.crt
token="tls-test-token-$(openssl rand -hex 16)"
wrong="tls-wrong-token-$(openssl rand -hex 16)"
printf '%s\n' "$token" > "$work/token"
printf '%s\n' "$wrong" > "$work/wrong-token"
chmod 600 "$work/token" "$work/wrong-token"
: > "$work/all-output"  # everything ampctl printed, checked for the token at the end

# run CODE ARGS...: ampctl against the TLS server; stdout in $work/out, stderr in $work/err.
run() {
  local want=$1
  shift
  "$AMPCTL" --server "$SERVER_ADDR" "$@" > "$work/out" 2> "$work/err" < /dev/null
  local got=$?
  cat "$work/out" "$work/err" >> "$work/all-output"
  if [[ "$got" -ne "$want" ]]; then
    echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"
    fail "ampctl $* exited $got, want $want"
  fi
}
has() {
  grep -qF -- "$1" "$work/${2:-out}" || fail "expected '$1' in ${2:-out}: $(cat "$work/${2:-out}")"
}

# --- help teaches ---
"$AMPD" serve --help > "$work/out" 2>&1 || fail "ampd serve --help"
for want in --tls-cert --tls-key --tls-client-ca --token-file AMPD_TOKEN "authorization: Bearer" \
            /metrics; do
  has "$want"
done
"$AMPCTL" --help > "$work/out" 2>&1 || fail "ampctl --help"
for want in --tls --ca-cert --tls-server-name --token-file AMPD_TOKEN_FILE AMPD_CA_CERT \
            --client-cert "not authenticated"; do
  has "$want"
done

# --- the server refuses bad files at startup: exit 2, flag and file named ---
serve_fails() {  # WANT_IN_OUTPUT ARGS...
  local want=$1
  shift
  "$AMPD" serve --grpc-addr 127.0.0.1:0 --state-dir "$work/bad-state" --backend cpu \
    --metrics-addr off "$@" > "$work/out" 2>&1
  local code=$?
  [[ $code -eq 2 ]] || fail "ampd serve $* exited $code, want 2: $(cat "$work/out")"
  has "$want"
}
serve_fails "--tls-cert $work/nope.crt: cannot read: No such file or directory" \
  --tls-cert "$work/nope.crt" --tls-key "$work/certs/server.key"
serve_fails "--tls-key $work/certs/client.key does not belong to the certificate" \
  --tls-cert "$work/certs/server.crt" --tls-key "$work/certs/client.key"
serve_fails "--token-file $work/nope: cannot read" --token-file "$work/nope"
AMPD_TOKEN=$token serve_fails "both --token-file" --token-file "$work/token"
grep -qF "$token" "$work/out" && fail "the token is in the startup error"

# --- a server with TLS and a token ---
SERVER_READY_ARGS=(--ca-cert "$CA" --token-file "$work/token")
start_server "$AMPD" "$work" --tls-cert "$work/certs/server.crt" \
  --tls-key "$work/certs/server.key" --token-file "$work/token" \
  || fail "could not start ampd serve with TLS"
echo "server: $SERVER_ADDR (pid $SERVER_PID)"
grep -q "security: TLS, bearer token from --token-file" "$SERVER_LOG" \
  || fail "no security line in the log: $(cat "$SERVER_LOG")"
S=(--ca-cert "$CA" --token-file "$work/token")

# --- every command, end to end ---
run 0 "${S[@]}" info
has "backend:"
cat > "$work/tiny.yaml" <<'EOF'
name: tls-tiny
precision: fp32
model: {layers: [{linear: {out_features: 16}}, {relu: {}}, {linear: {out_features: 3}}]}
data: {synthetic: {kind: blobs, samples: 256, features: 8, classes: 3}, batch_size: 32}
optimizer: {sgd: {lr: 0.1}}
training: {max_steps: 30, seed: 3, checkpoint_every: 10}
EOF
run 0 "${S[@]}" submit -f "$work/tiny.yaml" --watch
has "SUCCEEDED"
run 0 "${S[@]}" list -o json
job=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["id"])' "$work/out") \
  || fail "no job in list: $(cat "$work/out")"
run 0 "${S[@]}" get "$job"
has "$job"
run 0 "${S[@]}" watch "$job"
has "SUCCEEDED"
run 0 "${S[@]}" download "$job" -o "$work/model.safetensors"
[[ -s "$work/model.safetensors" ]] || fail "empty download"
printf 'a,b,label\n1,2,0\n3,4,1\n' > "$work/small.csv"
run 0 "${S[@]}" datasets upload small.csv "$work/small.csv"
run 0 "${S[@]}" datasets list
has "small.csv"
sed -e 's/max_steps: 30/max_steps: 1000000/' -e 's/tls-tiny/tls-long/' "$work/tiny.yaml" \
  > "$work/long.yaml"
run 0 "${S[@]}" submit -f "$work/long.yaml" -o json
long=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/out")
run 0 "${S[@]}" cancel "$long"
# Global options after the subcommand, a name given for the certificate.
run 0 info --ca-cert "$CA" --tls-server-name localhost --token-file "$work/token"

# --- the same from the environment ---
AMPD_CA_CERT=$CA AMPD_TOKEN_FILE=$work/token run 0 info
AMPD_CA_CERT=$CA AMPD_TOKEN=$token run 0 list
AMPD_CA_CERT=$CA AMPD_TOKEN=$wrong run 0 --token-file "$work/token" info  # the flag wins
AMPD_CA_CERT=$CA AMPD_TOKEN=$token AMPD_TOKEN_FILE=$work/token run 2 info
has "both AMPD_TOKEN and AMPD_TOKEN_FILE are set" err

# --- not authenticated: exit 7, a message that says what to do, never the token ---
run 7 --ca-cert "$CA" info
has "this server requires a bearer token" err
has "authorization: Bearer <token>" err
has "ampctl sent no token" err
run 7 --ca-cert "$CA" --token-file "$work/wrong-token" list
has "the bearer token is not valid" err
has "ampctl sent the token from --token-file $work/wrong-token" err
run 7 --ca-cert "$CA" --token "$wrong" get "$job"
has "ampctl sent the token from --token:" err
AMPD_CA_CERT=$CA AMPD_TOKEN=$wrong run 7 watch "$job"
has "ampctl sent the token from AMPD_TOKEN:" err
run 7 --ca-cert "$CA" submit -f "$work/tiny.yaml"
run 7 --ca-cert "$CA" cancel "$job"
run 7 --ca-cert "$CA" download "$job" -o "$work/x.safetensors"
[[ ! -e "$work/x.safetensors" ]] || fail "a refused download left its file"
run 7 --ca-cert "$CA" datasets upload other.csv "$work/small.csv"
run 7 --ca-cert "$CA" datasets list

# --- bad local files: exit 2, the flag and the file named ---
run 2 --ca-cert "$CA" --token-file "$work/nope" info
has "--token-file $work/nope: cannot read: No such file or directory" err
: > "$work/empty-token"
run 2 --ca-cert "$CA" --token-file "$work/empty-token" info
has "the token is empty" err
run 2 --ca-cert "$work/nope.crt" --token-file "$work/token" info
has "--ca-cert $work/nope.crt: cannot read" err
run 2 --ca-cert "$work/certs/server.key" --token-file "$work/token" info
has "--ca-cert $work/certs/server.key: not a PEM file" err
run 2 --token "$token" --token-file "$work/token" info
run 2 --client-cert "$work/certs/client.crt" --ca-cert "$CA" info
has "--client-cert needs --client-key" err

# --- TLS on one side only, the wrong CA, the wrong name: exit 3 and what to change ---
run 3 --token-file "$work/token" info
has "cannot reach ampd at $SERVER_ADDR" err
has "if the server uses TLS, add --tls or --ca-cert FILE" err
run 3 --ca-cert "$work/certs/other-ca.crt" --token-file "$work/token" info
has "cannot reach ampd at $SERVER_ADDR securely" err
has "not signed by a CA ampctl trusts (--ca-cert $work/certs/other-ca.crt)" err
run 3 --tls --token-file "$work/token" info  # the system's roots do not know the test CA
has "not signed by a CA ampctl trusts (the system's CA certificates)" err
run 3 --ca-cert "$CA" --tls-server-name gpu-box.example --token-file "$work/token" info
has "not issued for \"gpu-box.example\"" err
has "--tls-server-name" err

# A plaintext server: a TLS client is told it does not speak TLS.
port=$(free_port)
"$AMPD" serve --grpc-addr "127.0.0.1:$port" --state-dir "$work/plain-state" --backend cpu \
  --threads 1 --metrics-addr off > "$work/plain.log" 2>&1 &
plain_pid=$!
for i in $(seq 1 150); do
  "$AMPCTL" --server "127.0.0.1:$port" --timeout 1 info > /dev/null 2>&1 && break
  sleep 0.2
done
"$AMPCTL" --server "127.0.0.1:$port" --ca-cert "$CA" info > "$work/out" 2> "$work/err"
code=$?
cat "$work/out" "$work/err" >> "$work/all-output"
[[ $code -eq 3 ]] || fail "TLS client at a plaintext server exited $code, want 3: $(cat "$work/err")"
has "the server does not speak TLS" err
kill -TERM "$plain_pid"; wait "$plain_pid" 2> /dev/null; plain_pid=""

# --- the Python client, when python3-grpcio is there ---
if $PY -c 'import grpc, yaml, google.protobuf' 2> /dev/null && [[ -x /usr/bin/grpc_python_plugin ]] \
   && command -v protoc > /dev/null; then
  CLIENT="$SRC/client/python/ampd_client.py"
  $PY "$CLIENT" --server "$SERVER_ADDR" --ca-cert "$CA" --token-file "$work/token" \
    "$work/tiny.yaml" > "$work/out" 2> "$work/err"
  code=$?
  cat "$work/out" "$work/err" >> "$work/all-output"
  [[ $code -eq 0 ]] || fail "python client with TLS exited $code: $(cat "$work/out" "$work/err")"
  has "SUCCEEDED"
  AMPD_CA_CERT=$CA AMPD_TOKEN=$wrong $PY "$CLIENT" --server "$SERVER_ADDR" "$work/tiny.yaml" \
    > "$work/out" 2> "$work/err"
  code=$?
  cat "$work/out" "$work/err" >> "$work/all-output"
  [[ $code -eq 7 ]] || fail "python client with a wrong token exited $code, want 7: $(cat "$work/err")"
  has "UNAUTHENTICATED" err
  $PY "$CLIENT" --server "$SERVER_ADDR" --token-file "$work/token" "$work/tiny.yaml" \
    > "$work/out" 2> "$work/err"
  code=$?
  [[ $code -eq 3 ]] || fail "python plaintext client at a TLS server exited $code, want 3"
else
  echo "note: python3-grpcio, protoc or grpc_python_plugin missing; Python client not checked"
fi

# --- neither token was printed by a client or logged by the server ---
[[ -s "$work/all-output" ]] || fail "no client output collected"
grep -qF -- "$token" "$work/all-output" && fail "the token appears in ampctl's output"
grep -qF -- "$wrong" "$work/all-output" && fail "the wrong token appears in ampctl's output"
grep -qF -- "$token" "$SERVER_LOG" && fail "the token appears in the server log"
grep -qF -- "$wrong" "$SERVER_LOG" && fail "the wrong token appears in the server log"
grep -q "UNAUTHENTICATED (" "$SERVER_LOG" || fail "refusals are not logged: $(cat "$SERVER_LOG")"

echo "cli_tls: all checks passed"
