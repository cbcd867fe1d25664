#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium (and its driver) for the browser tests; browsers are
# never downloaded by Playwright here, the tests point it at /usr/bin/chromium.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium: $(chromium --version 2>/dev/null || echo present)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
echo "chromium: $(chromium --version)"
