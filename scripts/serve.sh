#!/usr/bin/env bash
# The engine's main job: the HTTP API on http://127.0.0.1:8080 over a private Redis started
# for this run (on a free port, in a temporary directory), with a ledger of its own beside
# it: both are gone when the server stops, so every try-out starts clean.
# Admin token: $FLASHSALE_ADMIN_TOKEN, or "local-admin". Arguments: first, optionally,
# `--cluster-masters N [--replicas R]` for a private Redis Cluster instead; the rest go to
# `flashsale serve` (see its --help), after `--` if you like. Stop with ctrl-c.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sale
scripts/build.sh
export FLASHSALE_ADMIN_TOKEN="${FLASHSALE_ADMIN_TOKEN:-local-admin}"
exec target/debug/flashsale-loadtest serve "$@"
