#!/usr/bin/env bash
# First quick-start command: set up (or reuse) .venv and run the main job on embedded defaults
# (the bundled Flux demo world, CPU, no Redis needed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
mkdir -p out
erasure generate --prompt "a red circle" --seed 0 -o out/red-circle.png
erasure erase --concept circle --synonym disk -o out/circle.erasure
erasure generate --prompt "a red circle" --seed 0 --erasure out/circle.erasure -o out/red-circle-erased.png
echo "wrote out/red-circle.png (base) and out/red-circle-erased.png (circle erased)"
