#!/usr/bin/env bash
# Installs Debian's PostgreSQL server for the production rehearsal (bqx_assets_tests/e2e/
# test_production.py), which starts its own server on 127.0.0.1; the cluster Debian creates and
# starts with the package is stopped, so nothing else listens.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "postgresql: $(ls /usr/lib/postgresql/*/bin/postgres | head -1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
$SUDO service postgresql stop >/dev/null 2>&1 || true
echo "postgresql: $(ls /usr/lib/postgresql/*/bin/postgres | head -1)"
