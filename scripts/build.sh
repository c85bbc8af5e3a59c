#!/usr/bin/env bash
# Builds the workspace's binaries (`flashsale`, `flashsale-loadtest`) in the one profile
# that every script and the tests share (`dev`, tuned in Cargo.toml), so that whichever
# command runs first builds for the others. Extra arguments go to `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "$0: cargo is missing: install the Rust toolchain (https://rustup.rs), then run this again" >&2
  exit 1
fi
if [[ ! -x target/debug/flashsale ]]; then
  echo "building the workspace: the first build takes about 3 1/2 minutes on 2 cores;" \
    "every later command reuses it" >&2
fi
exec cargo build --workspace "$@"
