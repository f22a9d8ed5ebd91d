#!/usr/bin/env bash
# ctest deploy_k8s_schemas: deploy/k8s validated against the Kubernetes API schemas,
# offline, with PyPI's kubernetes-validate (installed into a venv under the build tree the
# first time; exits 77, skipped, when PyPI cannot be reached). No cluster needed.
#
#   tests/deploy/check_k8s.sh SOURCE_DIR VENV_DIR
set -euo pipefail
ROOT=${1:?usage: check_k8s.sh SOURCE_DIR VENV_DIR}
VENV=${2:?usage: check_k8s.sh SOURCE_DIR VENV_DIR}

ready() { [[ -x "$VENV/bin/kubernetes-validate" ]] && "$VENV/bin/python" -c "import jsonschema, yaml" 2>/dev/null; }
if ! ready; then
  mkdir -p "$VENV"
  exec 9>"$VENV.lock"
  flock 9
  if ! ready; then
    /usr/bin/python3 -m venv "$VENV"
    if ! timeout 120 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        kubernetes-validate; then
      echo "deploy_k8s_schemas: SKIPPED: cannot install kubernetes-validate from PyPI"
      exit 77
    fi
  fi
fi
exec "$VENV/bin/python" "$ROOT/tests/deploy/check_k8s.py" "$ROOT" "$VENV/bin/kubernetes-validate"
