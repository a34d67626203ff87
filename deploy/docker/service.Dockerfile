# syntax=docker/dockerfile:1.7
# dnirecon gRPC service: onnxruntime-gpu on CUDA 13 / cuDNN 9, no torch, no training code.
# Build from the repository root (docs/deploy.md; deploy/images/build.sh builds all three images with podman):
#   docker build -f deploy/docker/service.Dockerfile --build-arg GIT_REVISION=$(git rev-parse HEAD) \
#     -t REGISTRY/dnirecon-service:VERSION .
# Behind a registry mirror: --build-arg CUDA_IMAGE=MIRROR/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04.
# Behind a package-index mirror or a TLS-inspecting proxy: --secret id=pip.conf,src=FILE (index-url,
# cert = /run/secrets/ca-bundle) and --secret id=ca-bundle,src=PEM; secrets never enter a layer.
# Any Debian or Ubuntu base with apt and python3 >= 3.11 works (CPU-only without the CUDA libraries).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the pinned base tag's Ubuntu snapshot; apt pins would break on every security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The build backend lives in its own venv so it never reaches the runtime image.
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir setuptools==84.2.1
WORKDIR /src
COPY requirements/service.txt requirements/service.txt
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements/service.txt
# Only what the service needs: the shared package, the service and the protos (no training/, no registry/).
COPY pyproject.toml README.md ./
COPY dnirecon/ dnirecon/
COPY commands/ commands/
COPY service/ service/
COPY protos/ protos/
# pip and setuptools leave the runtime venv: nothing in the service image installs packages.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/dnirecon-*.whl \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools

FROM ${CUDA_IMAGE}
ARG GIT_REVISION=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dnirecon-service" \
      org.opencontainers.image.description="dnirecon gRPC reconstruction service (onnxruntime, CUDA 13, cuDNN 9)" \
      org.opencontainers.image.source="https://example.invalid/dnirecon" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 dnirecon \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin dnirecon \
 && install -d -o 10001 -g 10001 /var/cache/dnirecon
COPY --from=build /opt/venv /opt/venv
# Read-only root filesystem in Kubernetes: no .pyc writes, model cache on a mounted volume.
# One setting per line, so that new ones merge cleanly.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DNIRECON_CACHE_DIR=/var/cache/dnirecon \
    DNIRECON_GRPC_PORT=50051 \
    DNIRECON_METRICS_PORT=9090
USER 10001:10001
# gRPC
EXPOSE 50051
# Prometheus metrics
EXPOSE 9090
# MRD (ISMRMRD streaming) for scanners
EXPOSE 9002
ENTRYPOINT ["dnirecon"]
CMD ["serve"]
