#!/usr/bin/env bash
# Set up a virtual environment in .venv with torchlean and the given extras.
#   bash scripts/setup.sh            # the package with torch, jax, matplotlib
#   bash scripts/setup.sh test       # ... and everything the tests need
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
if [ "${extras}" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
    # The browser test renders a context's HTML view in headless Chromium.
    if [ "$(id -u)" = "0" ]; then
        apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
    else
        sudo apt-get update -q >/dev/null && sudo apt-get install -y -q chromium >/dev/null
    fi
fi
