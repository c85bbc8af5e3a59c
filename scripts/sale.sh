#!/usr/bin/env bash
# The engine's main job, start to finish: a private Redis and the engine (flashsale serve,
# with an SQLite ledger of its own) are started, a flash sale is replayed against the API
# open loop, and the sale is checked: no oversell, no undersell, per-user limits, every
# confirmed sale in the ledger exactly once, conservation, ledger equal to Redis. Writes
# loadtest-out/report.json, report.html and chart.svg. Extra arguments go to
# `flashsale-loadtest run` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sale
scripts/build.sh
exec target/debug/flashsale-loadtest run --spawn --config loadtest/scenarios/flash.toml "$@"
