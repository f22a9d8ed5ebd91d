#!/usr/bin/env bash
# ctest python_conversion_reference: ampd's FP16 / BF16 conversions against numpy and
# ml_dtypes. Creates the Python environment when missing (scripts/python-venv.sh); exits
# 77, which ctest reports as skipped, when it cannot be made (no network to PyPI).
#
#   tests/python/conversion_reference.sh PATH/TO/conversion_dump
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${AMPD_VENV:-$ROOT/.venv}
DUMP=${1:?usage: conversion_reference.sh PATH/TO/conversion_dump}

if ! "$ROOT/scripts/python-venv.sh"; then
  echo "conversion_reference: SKIPPED: could not create the Python environment $VENV"
  exit 77
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$DUMP" "$WORK"
"$VENV/bin/python" "$ROOT/tests/python/check_conversions.py" "$WORK"
