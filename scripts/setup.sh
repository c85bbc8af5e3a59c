#!/usr/bin/env bash
# Installs what the demo and the tests need, when it is missing, from Debian's packages.
# Installing never starts a system service: the project starts its own servers, on free
# ports in their own directories, and never touches one it did not start.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
# The clock test runs the engine with its clock shifted (libfaketime).
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || missing+=(faketime)
# The ledger tests start their own PostgreSQL cluster with initdb and pg_ctl.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [[ "$(id -u)" -ne 0 ]]; then
  sudo="sudo"
fi
echo "installing: ${missing[*]}" >&2
# Debian starts a package's service on install unless policy-rc.d says no.
policy=/usr/sbin/policy-rc.d
placed_policy=""
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  placed_policy=1
fi
cleanup() { [[ -n "$placed_policy" ]] && $sudo rm -f "$policy"; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
