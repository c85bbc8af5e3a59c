#!/usr/bin/env bash
# The whole test suite. Every test starts the real servers it needs (redis-server on a free
# port in a temporary directory) and stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace "$@"
