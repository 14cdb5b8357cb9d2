#!/usr/bin/env bash
# Installs what tests/test_serve_browser.py needs: Debian's Chromium and playwright-core (no browser download:
# the test points playwright-core at /usr/bin/chromium). Safe to run again; each step is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install_browser.sh: node/npm not found; the browser test will be skipped" >&2
  exit 0
fi

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  # playwright-core never downloads browsers; the env var also stops any postinstall from trying.
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
echo "browser test ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium missing)"
