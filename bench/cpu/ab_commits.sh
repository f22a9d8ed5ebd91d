#!/bin/bash
# A/B of two builds in one run, beside PyTorch, interleaved (3 repeats x fp32/bf16 of the
# 784-1024-1024-10 MLP at batch 256): tells whether a change moved ampd's step or its ratio
# to PyTorch, on a VM whose speed drifts between runs.
#   bench/cpu/ab_commits.sh OLD_BUILD_DIR NEW_BUILD_DIR > ab.jsonl
# OLD/NEW: build directories with bin/ampd_bench (e.g. a `git worktree` of the old commit
# built with `cmake --build build --target ampd_bench`); PyTorch from NEW's bench-venv
# (make bench creates it). One JSON line per run: {"rep", "side": old|new|torch, "r"}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OLD=$1/bin/ampd_bench; NEW=$2/bin/ampd_bench
PY=$2/bench-venv/bin/python; T=$ROOT/bench/cpu/torch_mlp.py
export OMP_NUM_THREADS=2
for rep in 1 2 3; do
  for p in fp32 bf16; do
    echo "{\"rep\":$rep,\"side\":\"old\",\"r\":$($OLD steps precision=$p width=1024 batch=256 steps=40 warmup=5 threads=2)}"
    echo "{\"rep\":$rep,\"side\":\"new\",\"r\":$($NEW steps precision=$p width=1024 batch=256 steps=40 warmup=5 threads=2)}"
    echo "{\"rep\":$rep,\"side\":\"torch\",\"r\":$($PY -W ignore $T precision=$p width=1024 batch=256 steps=40 warmup=5 threads=2)}"
  done
done
