# syntax=docker/dockerfile:1.7
# MLflow 3.17.2 tracking server: PostgreSQL backend, S3/MinIO artifacts, basic auth.
# Build from the repository root:
#   docker build -f deploy/docker/mlflow.Dockerfile --build-arg GIT_REVISION=$(git rev-parse HEAD) \
#     -t REGISTRY/dnirecon-mlflow:3.17.2 .
# Behind a registry mirror: --build-arg PYTHON_IMAGE=MIRROR/library/python:3.11.14-slim-bookworm.
# Behind a package-index mirror or a TLS-inspecting proxy: --secret id=pip.conf,src=FILE (index-url,
# cert = /run/secrets/ca-bundle) and --secret id=ca-bundle,src=PEM; secrets never enter a layer.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY deploy/docker/mlflow-requirements.txt /tmp/mlflow-requirements.txt
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=ca-bundle \
    python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/mlflow-requirements.txt

FROM ${PYTHON_IMAGE}
ARG GIT_REVISION=unknown
LABEL org.opencontainers.image.title="dnirecon-mlflow" \
      org.opencontainers.image.description="MLflow 3.17.2 tracking server for dnirecon (PostgreSQL, S3, basic auth)" \
      org.opencontainers.image.source="https://example.invalid/dnirecon" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="3.17.2" \
      org.opencontainers.image.revision="${GIT_REVISION}"
RUN groupadd --gid 10001 mlflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
