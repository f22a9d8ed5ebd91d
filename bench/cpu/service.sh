#!/usr/bin/env bash
# Service overhead: one job in-process (`ampd train --json`) and the same job through
# `ampd serve` with 50 WatchJob streams and /metrics scraped every second (both from
# bench/cpu/watch_many: one process, async streams on one connection). Both sides run the identical job file,
# checkpoint interval included (a job that leaves it 0 would get the server's
# --checkpoint-every default and do more work than `ampd train`).
# Prints one JSON line: samples/s of each (from the progress events, first window
# excluded), their ratio, and the CPU seconds the watchers and the scraper took on the
# same cores. ROUNDS (default 3) alternating pairs; the median pair ratio is reported.
# The ratio of two 5-second runs on a shared 2-core VM moves by +-10% with the neighbours'
# load, so each round also accounts the CPU seconds behind the served job, which noise
# does not move: the server's training threads (named ampd-train: the job thread and its
# OpenMP workers), the server's other threads (gRPC, the event hub, SQLite, /metrics), and
# the watchers with the scraper (watch_many: one process, async streams, an in-process
# HTTP scraper; watcher_cpu_s). With training on every core, each CPU second spent
# elsewhere is one taken from training, so train / (train + everything else) is the
# ratio the service can reach; "cpu_bound_ratio" reports it.
# Usage: [ROUNDS=3] [STREAMS=50] [SCRAPE=1] service.sh BUILD_DIR OUT_DIR THREADS STEPS
set -uo pipefail
BUILD=$1 OUT=$2 THREADS=$3 STEPS=$4
BIN=$BUILD/bin
WORK=$OUT/service
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "{\"mode\":\"service\",\"error\":\"$*\"}"; exit 0; }
[[ -x $BIN/ampd && -x $BIN/ampctl && -x $BIN/watch_many ]] || fail "ampd, ampctl or watch_many not built"
cat >"$WORK/job.json" <<JOB
{"name":"bench-service","precision":"fp32",
 "model":{"layers":[{"linear":{"outFeatures":1024}},{"relu":{}},{"linear":{"outFeatures":1024}},
          {"relu":{}},{"linear":{"outFeatures":10}}],"loss":"cross_entropy"},
 "data":{"synthetic":{"kind":"blobs","samples":2048,"features":784,"classes":10},
         "batchSize":256,"validationFraction":0,"standardize":false},
 "optimizer":{"adamw":{"lr":0.001,"weightDecay":0.01}},
 "training":{"maxSteps":$STEPS,"reportEvery":10,"checkpointEvery":100,"seed":1}}
JOB
sps() {  # samples/s over the progress events of a JSON-lines event stream, first excluded
  python3 - "$1" <<'PY'
import json, sys
rates = []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    p = e.get("progress") or (e.get("event") or {}).get("progress")
    rate = p and (p.get("samples_per_second") or p.get("samplesPerSecond"))
    if rate:
        rates.append(float(rate))
rates = rates[1:]
print(len(rates) / sum(1.0 / r for r in rates) if rates else 0.0)
PY
}
TCK=$(getconf CLK_TCK)
server_cpu() {  # "<training ticks> <all ticks>" of the server, dead threads included in all
  local train=0 t
  for t in /proc/$SERVER/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == ampd-train ]] && train=$((train + $(awk '{print $14 + $15}' "$t/stat")))
  done
  echo "$train $(awk '{print $14 + $15}' /proc/$SERVER/stat)"
}
PORT=$((20000 + RANDOM % 20000)) MPORT=$((PORT + 1))
export AMPD_SERVER=127.0.0.1:$PORT
"$BIN/ampd" serve --grpc-addr "127.0.0.1:$PORT" --metrics-addr "127.0.0.1:$MPORT" \
  --state-dir "$WORK/state" --backend cpu --threads "$THREADS" >"$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do "$BIN/ampctl" info >/dev/null 2>&1 && break; sleep 0.2; done

# ROUNDS pairs, alternating in-process and served runs of the same job, so that load from
# anything else on the machine falls on both sides alike; the median pair ratio is reported.
ROUNDS=${ROUNDS:-3}
# STREAMS=1 (the one stream that measures) / SCRAPE=0 take the 49 other watchers or the
# scraper away, to see what each costs.
NWATCH=${STREAMS:-50} SCRAPE=${SCRAPE:-1}
: >"$WORK/rounds.jsonl"
for r in $(seq "$ROUNDS"); do
  "$BIN/ampd" train -f "$WORK/job.json" --json --backend cpu --threads "$THREADS" \
    --out "$WORK/train-out-$r" >"$WORK/inproc-$r.jsonl" 2>"$WORK/inproc.err" || fail "ampd train failed"
  INPROC=$(sps "$WORK/inproc-$r.jsonl")
  ID=$("$BIN/ampctl" submit -f "$WORK/job.json" -o json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || fail "submit failed"
  read -r TRAIN0 ALL0 < <(server_cpu)
  SCRAPE_ARGS=()
  [[ $SCRAPE == 1 ]] && SCRAPE_ARGS=(--scrape "127.0.0.1:$MPORT")
  # Until the job ends: NWATCH streams, and /metrics once a second from the same process.
  "$BIN/watch_many" --server "127.0.0.1:$PORT" --job "$ID" --watchers "$NWATCH" \
    "${SCRAPE_ARGS[@]}" >"$WORK/watch-$r.json" 2>"$WORK/watch.err"
  sleep 0.5  # the job's last events are written; let the server settle before reading
  read -r TRAIN1 ALL1 < <(server_cpu)
  python3 - "$INPROC" "$WORK/watch-$r.json" "$TCK" $((TRAIN1 - TRAIN0)) \
    $((ALL1 - ALL0 - TRAIN1 + TRAIN0)) >>"$WORK/rounds.jsonl" <<'PY'
import json, sys
w = json.load(open(sys.argv[2]))
tck = float(sys.argv[3])
w.update(inproc_sps=float(sys.argv[1]), server_train_cpu_s=int(sys.argv[4]) / tck,
         server_other_cpu_s=max(0.0, int(sys.argv[5]) / tck))
print(json.dumps(w))
PY
done
python3 - "$WORK/rounds.jsonl" "$STEPS" <<'PY'
import json, statistics, sys
rounds = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ratios = [r["served_sps"] / r["inproc_sps"] if r["inproc_sps"] else 0 for r in rounds]
print(json.dumps({
    "mode": "service", "steps": int(sys.argv[2]), "rounds": len(rounds),
    "watchers": rounds[0].get("watchers") if rounds else 0,
    "watch_events_min": min((r.get("events_min", 0) for r in rounds), default=0),
    "stream_errors": sum(r.get("stream_errors", 0) for r in rounds),
    "final_states": sorted({r.get("final_state") for r in rounds}),
    "watcher_cpu_s": [r.get("watcher_cpu_s") for r in rounds],
    "scrapes": sum(r["scrapes"] for r in rounds), "scrapes_ok": sum(r["scrapes_ok"] for r in rounds),
    "inproc_sps": [round(r["inproc_sps"], 1) for r in rounds],
    "served_sps": [round(r["served_sps"], 1) for r in rounds],
    "ratios": [round(x, 3) for x in ratios],
    "ratio": statistics.median(ratios) if ratios else 0,
    "server_train_cpu_s": [r["server_train_cpu_s"] for r in rounds],
    "server_other_cpu_s": [r["server_other_cpu_s"] for r in rounds],
    "cpu_bound_ratio": statistics.median(
        r["server_train_cpu_s"] / (r["server_train_cpu_s"] + r["server_other_cpu_s"] +
                                   (r.get("watcher_cpu_s") or 0))
        for r in rounds) if rounds else 0}))
PY
