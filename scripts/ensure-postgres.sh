#!/usr/bin/env bash
# Make sure Debian's PostgreSQL server binaries exist under /usr/lib/postgresql/*/bin.
#
# propensity.services.PostgresServer runs its own throw-away cluster from these binaries,
# so this script only installs the package; whether Debian also creates and starts its
# default cluster does not matter (the harness never uses it).
#
# Idempotent: does nothing when initdb is already there. Never fails the caller: when
# the package cannot be installed (no apt, not root, no network) it explains why and
# exits 0, and the tests that need PostgreSQL skip with postgres_available()'s reason.
set -u

have_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

skip() {
    echo "ensure-postgres: $*" >&2
    echo "ensure-postgres: PostgreSQL not installed; tests that need it will be skipped." >&2
    exit 0
}

if have_initdb; then
    echo "ensure-postgres: found $(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || skip "apt-get not available (not a Debian/Ubuntu system?)"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        skip "not root and no password-less sudo; install it yourself: apt-get install postgresql"
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "ensure-postgres: installing Debian's postgresql package ..."
$SUDO apt-get update -qq || skip "apt-get update failed (offline or no package mirror reachable?)"
$SUDO apt-get install -y -qq --no-install-recommends postgresql \
    || skip "apt-get install postgresql failed"

have_initdb || skip "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
echo "ensure-postgres: installed $(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
