#!/usr/bin/env bash
# Set up everything that runs on a CPU, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's headless Chromium renders report.html in the report tests.
# The aarch64 cross compiler builds the TVM target's device library (else a .tar of objects).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "chromium could not be installed; the report rendering test will skip"
fi
if ! command -v aarch64-linux-gnu-gcc >/dev/null && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu) >/dev/null 2>&1 \
    || echo "the aarch64 cross compiler could not be installed; its TVM test will skip"
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1
python -m pytest -q -p no:cacheprovider "$@"
