#!/usr/bin/env bash
# The engine's main job, start to finish: a private Redis and the engine (flashsale serve,
# SQLite ledger) are started, a flash sale is replayed against the API open loop, and the
# sale is checked: no oversell, no undersell, per-user limits, every confirmed sale in the
# ledger exactly once, conservation, ledger equal to Redis. Writes loadtest-out/report.json
# and loadtest-out/chart.svg. Extra arguments go to `flashsale-loadtest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --quiet
exec target/release/flashsale-loadtest run --spawn --config loadtest/scenarios/flash.toml "$@"
