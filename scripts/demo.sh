#!/usr/bin/env bash
# The main job: compile the packaged MiniLM sentence encoder to ONNX, verify it, and profile
# it against torch eager in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
layerwise inspect zoo:minilm-l6 --depth 4
layerwise compile zoo:minilm-l6 --target onnx --out out/minilm-l6 --force
layerwise profile out/minilm-l6 --baseline eager --runs 200
