#!/usr/bin/env bash
# The engine's main job for now: a whole sale against a private Redis, checked at the end.
# Extra arguments go to `flashsale demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release --quiet -- demo "$@"
