#!/usr/bin/env bash
# A sale in-process, without HTTP: thousands of buyers against the store and a private
# Redis, checked at the end. Extra arguments go to `flashsale-loadtest demo` (see its
# --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sale
scripts/build.sh
exec target/debug/flashsale-loadtest demo "$@"
