#!/usr/bin/env bash
# The whole test suite. Every test starts the real servers it needs (redis-server on a free
# port in a temporary directory, PostgreSQL with initdb/pg_ctl) and stops them. Then a short
# sale through the load harness, with all its invariant checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace "$@"
cargo build --workspace --quiet
target/debug/flashsale-loadtest run --spawn --quiet --config loadtest/scenarios/ci.toml --out target/loadtest-ci
