#!/usr/bin/env bash
# Installs Debian's chromium for the Web UI tests (tests/test_ui_browser.py) when it is missing.
# Safe to run again: does nothing when chromium is already on PATH.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(chromium --version 2>/dev/null || command -v chromium)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: chromium is missing and apt-get is not available; install chromium by hand" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y chromium
echo "chromium installed: $(chromium --version 2>/dev/null || command -v chromium)"
