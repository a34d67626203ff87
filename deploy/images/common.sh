# shellcheck shell=bash
# Shared by build.sh and check.sh (sourced): podman invocation, image names, containers.conf.
# Every setting is an environment variable with a default that works on a Debian bookworm host.

# runc and cgroupfs: crun and systemd cgroups are refused inside some sandboxed kernels; both work everywhere.
PODMAN_FLAGS=${PODMAN_FLAGS---runtime runc --cgroup-manager cgroupfs}
IMAGE_TAG=${IMAGE_TAG:-0.1.0}
MLFLOW_TAG=${MLFLOW_TAG:-3.17.2}
IMAGE_PREFIX=${IMAGE_PREFIX:-localhost/}
SERVICE_IMAGE=${SERVICE_IMAGE:-${IMAGE_PREFIX}dnirecon-service:${IMAGE_TAG}}
TRAIN_IMAGE=${TRAIN_IMAGE:-${IMAGE_PREFIX}dnirecon-train:${IMAGE_TAG}}
MLFLOW_IMAGE=${MLFLOW_IMAGE:-${IMAGE_PREFIX}dnirecon-mlflow:${MLFLOW_TAG}}
# Where the build writes what it measured (pip freeze per image, the summary).
IMAGES_OUT=${IMAGES_OUT:-build/images}

if [ -z "${CONTAINERS_CONF:-}" ]; then
  # Default ulimits (nofile, nproc) that the sandbox cannot grant make every container fail to start.
  CONTAINERS_CONF=$(mktemp -t dnirecon-containers.XXXXXX.conf)
  printf '[containers]\ndefault_ulimits = []\n' >"$CONTAINERS_CONF"
  export CONTAINERS_CONF
  _dnirecon_conf_tmp=$CONTAINERS_CONF
fi

podman_() {
  # shellcheck disable=SC2086  # PODMAN_FLAGS is a list of flags
  podman $PODMAN_FLAGS "$@"
}

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
