#!/usr/bin/env bash
# First quick-start command: set up (or reuse) .venv and run the main job on embedded defaults —
# the HTTP service on the bundled Flux demo world (CPU, in-process job runner, no Redis needed).
# Arguments go to `erasure serve` (e.g. --port 8080). The README shows the curl calls to try it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
exec erasure serve "$@"
