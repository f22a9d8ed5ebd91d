#!/usr/bin/env bash
# The main job (make demo): train the example FP16 MLP on the real digits data with the
# CPU backend, streaming progress, then show where the model is.
set -euo pipefail
BUILD_DIR=${1:-build}
cd "$(dirname "$0")/.."
OUT=${AMPD_DEMO_OUT:-ampd-out/demo}
echo "== ampd demo: examples/digits-fp16.yaml on the CPU backend"
"$BUILD_DIR/bin/ampd" train -f examples/digits-fp16.yaml --backend cpu --out "$OUT"
echo
echo "The trained model (FP32 master weights + optimizer state, safetensors) is in $OUT/."
echo "Load it in Python: safetensors.numpy.load_file('$(ls -t "$OUT"/*.safetensors | head -1)')"
