#!/usr/bin/env bash
# Installs, from Debian's packages, what one of the project's commands needs and this
# machine lacks; does nothing when everything is there.
#
#   scripts/setup.sh sale    redis-server (scripts/sale.sh, serve.sh, demo.sh)
#   scripts/setup.sh test    that, plus redis-cli, libfaketime, PostgreSQL, Python's venv,
#                            Chromium and its WebDriver, and Prometheus (scripts/test.sh)
#   scripts/setup.sh lint    shellcheck (.ci/run)
#
# Works as root or through sudo, with or without /usr/sbin/policy-rc.d. Installing never
# starts a system service: the project starts its own servers, on free ports in their own
# directories, and never touches one it did not start.
set -euo pipefail

usage() {
  echo "usage: $0 sale|test|lint" >&2
  exit 2
}
(($# == 1)) || usage

# Each need is a package and the test that tells whether this machine already has it.
missing=()
need() { # <package> <command that succeeds when it is there>
  local package=$1
  shift
  "$@" >/dev/null 2>&1 || missing+=("$package")
}
has_faketime() { compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1"; }
has_initdb() { compgen -G "/usr/lib/postgresql/*/bin/initdb"; }
# Debian's python3 has no ensurepip (so no `python3 -m venv`) without python3-venv.
has_venv() { python3 -c 'import ensurepip, venv'; }

case "$1" in
  sale)
    need redis-server command -v redis-server
    ;;
  test)
    need redis-server command -v redis-server
    # The cluster tests join their servers with redis-cli --cluster create.
    need redis-tools command -v redis-cli
    # The clock fault test runs the engine with its clock shifted (libfaketime).
    need faketime has_faketime
    # The ledger tests start their own PostgreSQL cluster with initdb and pg_ctl.
    need postgresql has_initdb
    # The contract test installs schemathesis from PyPI into a venv under target/.
    need python3-venv has_venv
    # The sale page's test drives a headless Chromium through its WebDriver.
    need chromium command -v chromium
    need chromium-driver command -v chromedriver
    # The rules' tests run promtool; the dashboard's test scrapes with a real Prometheus.
    need prometheus command -v promtool
    ;;
  lint)
    need shellcheck command -v shellcheck
    ;;
  *) usage ;;
esac

if ((${#missing[@]} == 0)); then
  exit 0
fi

as_root=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$0: ${missing[*]} must be installed, which needs root: run this as root," \
      "install sudo, or install them yourself (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  as_root=(sudo)
fi

echo "installing from Debian's packages: ${missing[*]}" >&2
# Debian starts a package's service on install unless policy-rc.d says no. A policy file
# already there is left as it is; one placed here is removed again, whatever happens.
policy=/usr/sbin/policy-rc.d
placed_policy=false
cleanup() {
  if [[ "$placed_policy" == true ]]; then
    "${as_root[@]}" rm -f "$policy"
  fi
}
trap cleanup EXIT
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod +x "$policy"
  placed_policy=true
fi
# apt's own chatter goes to a log, shown only if something fails.
log=$(mktemp)
if ! "${as_root[@]}" apt-get update -qq >"$log" 2>&1 \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  cat "$log" >&2
  echo "$0: installing ${missing[*]} failed (apt's output above)" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
