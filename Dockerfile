# syntax=docker/dockerfile:1
# metaserve: the HTTP service with the shipped models, as a non-root user, its data in a volume.
#
#   docker build -t metaserve .                                    # CPU (the CPU build of torch)
#   docker build -t metaserve --build-arg EXTRAS=postgres .        # with the PostgreSQL driver
#   docker build -t metaserve:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#   docker run --init -p 8000:8000 -v metaserve-data:/var/lib/metaserve metaserve
#
# Both stages start from BASE_IMAGE, so the virtual environment built in the first runs on the same Python
# in the second; a base without Python (the CUDA images) gets its distribution's python3. The CUDA torch
# wheels bring their own CUDA libraries, so the CUDA image's `base` flavour (the driver hooks) is enough.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
SHELL ["/bin/sh", "-eu", "-c"]
# python3 is whatever the base's distribution ships (DL3008 would pin a version that changes with BASE_IMAGE).
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# PyPI's plain torch is a multi-GB CUDA build: torch comes first from TORCH_INDEX_URL, so that installing
# metaserve finds its torch requirement met. TORCH_SPEC is the pin (DL3013 cannot see through the variable).
# hadolint ignore=DL3013
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
WORKDIR /src
COPY pyproject.toml README.md ./
# app/db/migrations is a link to alembic/: the wheel carries the scripts as package data.
COPY alembic/ alembic/
COPY app/ app/
# The wheel just built pins itself; its dependencies are pyproject.toml's ranges, as for `make serve`.
# hadolint ignore=DL3013
RUN pip wheel --no-deps --wheel-dir /tmp/wheels . && \
    wheel=$(ls /tmp/wheels/metaserve-*.whl) && \
    pip install "$wheel${EXTRAS:+[$EXTRAS]}"

FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/sh", "-eu", "-c"]
# As in the builder: python3 only where the base has none.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 && \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 metaserve && \
    useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/metaserve metaserve && \
    mkdir -p /var/lib/metaserve && chown metaserve:metaserve /var/lib/metaserve
COPY --from=builder /opt/venv /opt/venv
COPY models/ /opt/metaserve/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    METASERVE_DATA_DIR=/var/lib/metaserve \
    METASERVE_MODELS_DIR=/opt/metaserve/models \
    METASERVE_HOST=0.0.0.0 \
    METASERVE_PORT=8000
VOLUME ["/var/lib/metaserve"]
# Numeric, so that a runtime enforcing a non-root user (runAsNonRoot) can check it.
USER 10001:10001
WORKDIR /home/metaserve
EXPOSE 8000
# No curl in a slim image: Python asks, and urlopen raises (exit 1) on anything but a 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['METASERVE_PORT'] + '/health/ready', timeout=4)"]
CMD ["metaserve", "serve"]
