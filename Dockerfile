# syntax=docker/dockerfile:1
# Two images from this file (README, "Container images"):
#   docker build --target compile -t layerwise:compile .   the whole toolchain and the team hub
#   docker build --target runtime -t layerwise:runtime .   the torch-free device runtime + agent
# Their pip steps are scripts/image_install.sh, which tests/test_container.py runs in a fresh
# venv (no container engine needed). BuildKit (the default builder since Docker 23) is needed
# for the RUN --mount lines.
# hadolint global ignore=DL3008
# (apt packages unpinned: the base image's tag pins the Debian release, whose security updates
# replace exact versions)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the layerwise wheel (C++ extension: scikit-build-core + nanobind) ----------------
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --disable-pip-version-check --no-deps --wheel-dir dist .

# ---- base: what both images share ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
# The results history, the trusted native libraries, the latency calibration and the hub's
# folder live in /data (the volume, the working folder: a relative --out lands there too).
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LAYERWISE_HOME=/data \
    LAYERWISE_DB=/data/runs.db \
    LAYERWISE_TRUST=/data/trusted-native
# libgomp1: the OpenMP runtime the C++ extension links (the wheel does not carry it)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 layerwise \
    && useradd --create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin layerwise \
    && install -d -o layerwise -g layerwise /data
WORKDIR /data
VOLUME /data

# ---- runtime: runs and profiles bundles on a device, serves the agent; no torch ---------------
FROM base AS runtime
RUN --mount=type=bind,from=builder,source=/src,target=/src \
    --mount=type=cache,target=/root/.cache/pip \
    bash /src/scripts/image_install.sh runtime /src/dist/layerwise-*.whl
USER 1000:1000
EXPOSE 8700
# The token file: one word of 32+ characters, mode 600, readable by this user (uid 1000, the
# user `layerwise`, or the one `docker run --user` names); mounted at
# /run/secrets/layerwise-token.
CMD ["layerwise", "agent", "--host", "0.0.0.0", "--port", "8700", \
     "--token-file", "/run/secrets/layerwise-token"]

# ---- compile: every frontend, backend and the team hub (the default target) -------------------
FROM base AS compile
# the hub's users, jobs, uploads and device tokens (layerwise serve --data-dir)
ENV LAYERWISE_HUB_DIR=/data/hub
# g++ links the TVM target's model libraries; on x86-64 the aarch64 cross g++ links them for
# ARM boards (on an ARM host g++ itself is aarch64-linux-gnu-g++).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && if [ "$(dpkg --print-architecture)" = amd64 ]; then \
         apt-get install -y --no-install-recommends g++-aarch64-linux-gnu; fi \
    && rm -rf /var/lib/apt/lists/*
# torch comes from PyTorch's CPU index (no CUDA libraries); empty: from PyPI
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,from=builder,source=/src,target=/src \
    --mount=type=cache,target=/root/.cache/pip \
    bash /src/scripts/image_install.sh compile /src/dist/layerwise-*.whl
USER 1000:1000
EXPOSE 8600
CMD ["layerwise", "serve", "--host", "0.0.0.0", "--port", "8600"]
