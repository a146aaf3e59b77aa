#!/usr/bin/env bash
# Second quick-start command: set up (or reuse) .venv and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ice -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
