#!/usr/bin/env bash
# The main job: compile the packaged MiniLM sentence encoder to ONNX, verify it and profile it
# against torch eager in the same run; then let the plan search make it smaller and faster
# within one point of a real labelled task (which man-page section a sentence comes from,
# judged on sentences the search never saw), profile the chosen plan the same way, and show
# block by block where it departs from the original.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
layerwise inspect zoo:minilm-l6 --depth 4
layerwise compile zoo:minilm-l6 --target onnx --out out/minilm-l6 --force
layerwise profile out/minilm-l6 --baseline eager --runs 200
python bench/man_sections.py out/task --per-class 60
layerwise compile zoo:minilm-l6 --target onnx --data out/task/data.txt --eval out/task/eval.tsv \
  --max-drop 1% --search-budget 3m --out out/minilm-l6-plan --force
layerwise profile out/minilm-l6-plan --baseline eager --runs 200
layerwise diff out/minilm-l6-plan --depth blocks   # where the chosen plan departs from FP32
