#!/usr/bin/env bash
# First quick-start command: set up (or reuse) .venv and run the main job on embedded defaults —
# the HTTP service on the bundled Flux demo world (CPU, in-process job runner, no Redis needed).
# Auth is on by default and the service refuses to start without API keys; this local quick start serves open
# (ERASURE_AUTH=off, explicitly) on 127.0.0.1 only, unless ERASURE_API_KEYS / ERASURE_API_KEYS_FILE give keys.
# Arguments go to `erasure serve` (e.g. --port 8080). The README shows the curl calls to try it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
if [[ -z "${ERASURE_API_KEYS:-}${ERASURE_API_KEYS_FILE:-}" ]]; then
    export ERASURE_AUTH="${ERASURE_AUTH:-off}"
fi
exec erasure serve --host 127.0.0.1 "$@"
