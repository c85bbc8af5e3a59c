#!/usr/bin/env bash
# Uses the gRPC face from outside the project: Python's grpcio, with the health-checking
# and reflection packages, and no code generated from proto/. tests/grpc/python_client.py
# lists the services by reflection, checks health, builds the reserve messages from the
# reflected descriptors, reserves one unit of <sku> for <user_id> under <idempotency-key>,
# reserves again with the same key (a replay), reserves a SKU that does not exist and
# decodes the google.rpc.Status it is refused with. It prints one JSON object with what
# it saw (tests/grpc/python.rs checks it).
#
# Usage: scripts/grpc-python-client.sh <host:port> <sku> <user_id> <idempotency-key>
#   e.g. scripts/grpc-python-client.sh 127.0.0.1:50051 phone-1 user-1 key-1
#
# The packages come from PyPI, pinned, into target/grpc-python-venv (made on first use,
# reused after), so the global Python stays untouched. Exits non-zero on any failure.
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 <host:port> <sku> <user_id> <idempotency-key>" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
# The health-checking, reflection and status packages are released with grpcio, and each
# requires the grpcio of its own version; pip picks the protobuf they require.
version="1.85.1"
packages=(grpcio grpcio-health-checking grpcio-reflection grpcio-status)
venv="target/grpc-python-venv"
requirements=("${packages[@]/%/==$version}")
installed=$("$venv/bin/python" -c '
import sys, importlib.metadata as m
print(" ".join(p + "==" + m.version(p) for p in sys.argv[1:]))
' "${packages[@]}" 2>/dev/null || true)
if [[ "$installed" != "${requirements[*]}" ]]; then
  echo "installing ${packages[*]} $version into $venv" >&2
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary :all: "${requirements[@]}"
fi

# Python would cache the client's bytecode next to it, in the checkout.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" tests/grpc/python_client.py "$@"
