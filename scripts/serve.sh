#!/usr/bin/env bash
# The engine's main job: the HTTP API on http://127.0.0.1:8080 over a private Redis started
# for this run (on a free port, in a temporary directory), with a ledger of its own beside
# it: both are gone when the server stops, so every try-out starts clean.
# Admin token: $FLASHSALE_ADMIN_TOKEN, or "local-admin". Extra arguments go to
# `flashsale serve` (see its --help). Stop with ctrl-c. Over a private Redis Cluster
# instead: target/debug/flashsale-loadtest serve --cluster-masters 3 [--replicas 1] -- ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sale
scripts/build.sh
export FLASHSALE_ADMIN_TOKEN="${FLASHSALE_ADMIN_TOKEN:-local-admin}"
exec target/debug/flashsale-loadtest serve -- "$@"
