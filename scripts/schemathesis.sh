#!/usr/bin/env bash
# Fuzzes a running server against its own OpenAPI document with schemathesis, every check
# on: every answer must be a non-5xx status the spec documents for the operation, with a
# documented content type, documented headers and a body that matches the schema; requests
# the schema allows must be accepted, the others refused; the stateful phase follows the
# document's links (a reserve to its read, confirm and cancel; a SKU's PUT to its GET) with
# the ids the server returned. The two rules a JSON Schema cannot state are excluded, each
# by exactly its own refusal, in tests/schemathesis_hooks.py.
#
# Usage: scripts/schemathesis.sh <base-url> <admin-token>
#   e.g. scripts/schemathesis.sh http://127.0.0.1:8080 local-admin
#
# schemathesis comes from PyPI, pinned, into target/schemathesis-venv (made on first use,
# reused after), so the global Python stays untouched. Exits non-zero on any failure.
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 <base-url> <admin-token>" >&2
  exit 2
fi
base="${1%/}"
token="$2"

cd "$(dirname "$0")/.."
version="4.32.5"
venv="target/schemathesis-venv"
if [[ "$("$venv/bin/python" -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]]; then
  echo "installing schemathesis $version into $venv" >&2
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
fi

# schemathesis and hypothesis keep caches in the working directory (`st replay` reads the
# failures from there): keep them out of the source tree.
root=$(pwd)
mkdir -p target/schemathesis
cd target/schemathesis
# Fixed seed and example count: the same requests on every run, in well under a minute.
# No example database, so that an earlier run's failures do not change what this one sends.
export SCHEMATHESIS_HOOKS="$root/tests/schemathesis_hooks.py"
# Python would cache the hooks' bytecode next to them, in the checkout.
export PYTHONDONTWRITEBYTECODE=1
exec "../../$venv/bin/st" run "$base/openapi.json" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --header "Authorization: Bearer $token" \
  --max-examples 100 \
  --seed 20240601 \
  --generation-database none \
  --workers 1 \
  --request-timeout 10 \
  --no-color
