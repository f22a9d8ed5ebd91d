#!/usr/bin/env bash
# Creates the Python virtual environment used by the numerics reference checks, with
# numpy and ml_dtypes from PyPI. Idempotent: an environment that already imports them is
# left alone, a half-made one is completed. Concurrent callers (ctest -j) wait on a lock.
#
#   scripts/python-venv.sh     create or complete ${AMPD_VENV:-<project>/.venv}
#
# Uses Debian's /usr/bin/python3 (python3-venv), not whatever python3 is first on PATH.
# Exits non-zero when the environment cannot be made (e.g. PyPI is unreachable).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${AMPD_VENV:-$ROOT/.venv}
BASE_PYTHON=/usr/bin/python3
PACKAGES=(numpy ml_dtypes)
IMPORTS="import numpy, ml_dtypes"

ready() { [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$IMPORTS" 2>/dev/null; }

if ready; then
  echo "python-venv: $VENV ready"
  exit 0
fi

mkdir -p "$VENV"
exec 9>"$VENV/.ampd-venv.lock"
flock 9
if ready; then  # made by another caller while this one waited
  echo "python-venv: $VENV ready"
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "python-venv: creating $VENV"
  "$BASE_PYTHON" -m venv "$VENV"
fi
echo "python-venv: installing ${PACKAGES[*]}"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/python" -c "$IMPORTS"
echo "python-venv: $VENV ready"
