# syntax=docker/dockerfile:1.7
# dnirecon training, evaluation and registry (bake/export/promote): torch 2.13 with its bundled CUDA
# libraries (the wheel's nvidia-* dependencies); only the host driver comes from the node.
# Build from the repository root:
#   docker build -f deploy/docker/train.Dockerfile --build-arg GIT_REVISION=$(git rev-parse HEAD) \
#     -t REGISTRY/dnirecon-train:VERSION .
# Behind a registry mirror: --build-arg PYTHON_IMAGE=MIRROR/library/python:3.11.14-slim-bookworm.
# Behind a package-index mirror or a TLS-inspecting proxy: --secret id=pip.conf,src=FILE (index-url,
# cert = /run/secrets/ca-bundle) and --secret id=ca-bundle,src=PEM; secrets never enter a layer.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir setuptools==84.2.1
WORKDIR /src
COPY requirements/service.txt requirements/train.txt requirements/
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements/train.txt
COPY pyproject.toml README.md ./
COPY dnirecon/ dnirecon/
COPY commands/ commands/
COPY service/ service/
COPY training/ training/
COPY registry/ registry/
COPY protos/ protos/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels . \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/dnirecon-*.whl

FROM ${PYTHON_IMAGE}
ARG GIT_REVISION=unknown
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="dnirecon-train" \
      org.opencontainers.image.description="dnirecon training (torchrun/DDP), evaluation and model registry tools" \
      org.opencontainers.image.source="https://example.invalid/dnirecon" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}"
RUN groupadd --gid 10001 dnirecon \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin dnirecon
COPY --from=build /opt/venv /opt/venv
# HOME on /tmp: torch, matplotlib and MLflow write caches there (an emptyDir in Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["dnirecon"]
CMD ["--help"]
