#!/usr/bin/env bash
# Creates or reuses .venv and installs the project with what the demo world and the tests need.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it only installs what is missing or changed).
#
# torch is installed FIRST and pinned, because a package that depends on torch would otherwise pull the newest
# (CUDA) build. GPU hosts: set ERASURE_TORCH_SPEC (e.g. "torch==2.13.0") and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
# to your CUDA wheel index before running, or use the Docker image (docker/Dockerfile).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="${ERASURE_VENV:-$ROOT/.venv}"
TORCH_SPEC="${ERASURE_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.erasure-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing $TORCH_SPEC, then the project"
  python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
  python -m pip install --quiet --disable-pip-version-check -e "$ROOT[demo,test]"
  echo "$want" > "$stamp"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
