#!/usr/bin/env bash
# Installs Debian's headless Chromium for the browser test, where this machine allows it (root with
# apt-get, as in CI). Elsewhere it says so and the browser test skips with the same advice.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the browser test will be skipped"
else
  echo "chromium not found and cannot be installed here (needs root and apt-get);"
  echo "the browser test will be skipped: install Debian's 'chromium' package to enable it"
fi
