#!/usr/bin/env bash
# Installs Debian's headless Chromium for the browser test, where this machine allows it (root with
# apt-get, as in CI). A Chromium or Chrome already there is used as it is (GitHub's runners have
# google-chrome; tests/browser.py looks for the same names). Elsewhere it says so and the browser test
# skips with the same advice.
for browser in chromium chromium-browser google-chrome google-chrome-stable chrome; do
  if command -v "$browser" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium; the browser test will be skipped"
else
  echo "chromium not found and cannot be installed here (needs root and apt-get);"
  echo "the browser test will be skipped: install Debian's 'chromium' package to enable it"
fi
