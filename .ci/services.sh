#!/usr/bin/env bash
# Install what the `services` tests need (tests/test_services.py): Debian's PostgreSQL server.
# Idempotent: does nothing when the binaries are already there. The tests start their own
# throwaway cluster (initdb + pg_ctl, 127.0.0.1 only, a free port) and their own `mlflow server`,
# so nothing needs starting here (the package's own default cluster, if any, is not used).
set -euo pipefail

find_pg_ctl() {
    command -v pg_ctl 2>/dev/null && return 0
    ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1
}

if [ -z "$(find_pg_ctl)" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends postgresql
fi

PG_CTL="$(find_pg_ctl)"
if [ -z "$PG_CTL" ]; then
    echo "services.sh: pg_ctl not found after installing postgresql" >&2
    exit 1
fi
BINDIR="$(dirname "$(readlink -f "$PG_CTL")")"
# The tests look on PATH first, then under /usr/lib/postgresql/<version>/bin; report what they get.
echo "PostgreSQL: $("$BINDIR/postgres" --version) in $BINDIR"
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "services.sh: running as root but no 'postgres' user exists to run the server as" >&2
    exit 1
fi
