#!/usr/bin/env bash
# The whole test suite. Every test starts the real servers it needs (redis-server on a free
# port in a temporary directory, a Redis Cluster of such servers, PostgreSQL with
# initdb/pg_ctl, schemathesis and grpcio from PyPI, a headless Chromium behind chromedriver, a
# Prometheus) and stops them. Then a short sale through the load
# harness, with all its invariant checks, on one Redis and again on a Redis Cluster through
# two engines.
# It reuses the build of scripts/sale.sh (one profile for both) and compiles only the tests.
#
# The tests' temporary files go to a directory of this run, which must be empty at the end
# (every test removes what it made), and the tests must write nothing into the checkout.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

scratch=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-tests.XXXXXX")
# Anything in the checkout newer than this, outside target/ and .git/, a test wrote.
stamp=$(mktemp "${TMPDIR:-/tmp}/flashsale-tests-start.XXXXXX")
trap 'rm -rf "$scratch" "$stamp"' EXIT
# PostgreSQL runs as its own user when the tests run as root: it must reach its directory.
chmod 755 "$scratch"
export TMPDIR="$scratch"

cargo test --workspace "$@"
# The monitoring under deploy/: promtool checks the rules and runs their unit tests, and the
# dashboard's queries are checked against the metrics the engine exports (the Prometheus
# test above ran them against a real engine).
scripts/check-deploy.sh
# The store's contract tests again, on a 3-master Redis Cluster.
FLASHSALE_TEST_TOPOLOGY=cluster cargo test --test core "$@"
target/debug/flashsale-loadtest run --spawn --quiet --config loadtest/scenarios/ci.toml \
  --out target/loadtest-ci
# The same sale with the buyers on the gRPC face: the same outcomes, every invariant checked.
target/debug/flashsale-loadtest run --spawn --quiet --config loadtest/scenarios/ci.toml \
  --protocol grpc --out target/loadtest-ci-grpc
# The same sale on a 3-master Redis Cluster through two engines sharing it and the ledger:
# ci-sale's 4 shards land on every master (1, 2 and 1 of them), every invariant checked.
target/debug/flashsale-loadtest run --spawn --cluster-masters 3 --engines 2 --quiet \
  --config loadtest/scenarios/ci.toml --out target/loadtest-ci-cluster
# Bundles: three buyers in ten take two SKUs in one cart, on one Redis and on the cluster
# through two engines (a cart's lines on different masters); no cart ever partial.
target/debug/flashsale-loadtest run --spawn --quiet --config loadtest/scenarios/bundle.toml \
  --out target/loadtest-bundle
target/debug/flashsale-loadtest run --spawn --cluster-masters 3 --engines 2 --quiet \
  --config loadtest/scenarios/bundle.toml --out target/loadtest-bundle-cluster

left=$(ls -A "$scratch")
if [[ -n "$left" ]]; then
  echo "the tests left temporary files behind in $scratch:" >&2
  echo "$left" >&2
  exit 1
fi
written=$(find . -mindepth 1 \( -path ./target -o -path ./.git \) -prune -o -newer "$stamp" -print)
if [[ -n "$written" ]]; then
  echo "the tests wrote into the checkout:" >&2
  echo "$written" >&2
  exit 1
fi
