#!/usr/bin/env bash
# Runs the built images the way a platform team would, on loopback ports of this machine:
#  1. the service image serving a baked set from a mounted directory: uid 10001, read-only root
#     filesystem, only its cache writable (a write to / fails, one to the cache works);
#  2. the MLflow image serving a registry, into which this host registers, bakes and promotes
#     (the project's own code, deploy/images/imagecheck.py);
#  3. the service image resolving models:/interpsn@production from the MLflow container.
# For each service container: start-up to SERVING (gRPC health), one volume reconstructed by
# `dnirecon client reconstruct` from the host and compared with onnxruntime in this process, SIGTERM
# and the exit status of the drain. Every container and volume it made is removed on exit.
#
# Settings (environment): PYTHON (the project's venv Python, default .venv/bin/python), image names
# and PODMAN_FLAGS as in common.sh, CHECK_TIMEOUT (seconds to SERVING, default 300).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/images/common.sh
. deploy/images/common.sh

need podman "install it (Debian: apt-get install podman runc)"
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DNIRECON=${DNIRECON:-$(dirname "$PYTHON")/dnirecon}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-300}
[ -x "$PYTHON" ] || die "PYTHON=$PYTHON is not an executable (the project's venv: make venv)"
[ -x "$DNIRECON" ] || die "DNIRECON=$DNIRECON is not an executable (the project's console script)"
for image in "$SERVICE_IMAGE" "$MLFLOW_IMAGE" "$TRAIN_IMAGE"; do
  podman_ image exists "$image" || die "image $image not found: run make images (deploy/images/build.sh) first"
done
# The host side runs this checkout's code, the same the images were built from.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MLFLOW_DISABLE_TELEMETRY=true

prefix=dnirecon-check-$$
work=$(mktemp -d -t dnirecon-check.XXXXXX)
containers=()
volumes=()
cleanup() {
  local c v
  for c in "${containers[@]}"; do podman_ rm --force --time 0 "$c" >/dev/null 2>&1 || true; done
  for v in "${volumes[@]}"; do podman_ volume rm --force "$v" >/dev/null 2>&1 || true; done
  rm -rf "$work" "${_dnirecon_conf_tmp:-}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check() { "$PYTHON" "$ROOT/deploy/images/imagecheck.py" "$@"; }
logs() { echo "--- logs of $1 (last 30 lines)"; podman_ logs --tail 30 "$1" 2>&1 || true; }

read -r MLFLOW_PORT GRPC_PORT METRICS_PORT <<<"$(check ports 3)"
declare -A figures

# A service container as the Deployment runs it: image user, read-only root, a cache volume.
run_service() {  # NAME then -e/-v flags
  local name=$1 cache=$1-cache
  shift
  podman_ volume create "$cache" >/dev/null
  volumes+=("$cache")
  containers+=("$name")
  podman_ run -d --name "$name" --network host --read-only --read-only-tmpfs=false \
    -v "$cache:/var/cache/dnirecon:U" \
    -e DNIRECON_GRPC_HOST=127.0.0.1 -e DNIRECON_GRPC_PORT="$GRPC_PORT" \
    -e DNIRECON_METRICS_HOST=127.0.0.1 -e DNIRECON_METRICS_PORT="$METRICS_PORT" \
    -e DNIRECON_PROVIDERS=cpu -e DNIRECON_INTRA_OP_THREADS=1 -e DNIRECON_DRAIN_SECONDS=5 \
    "$@" "$SERVICE_IMAGE" >/dev/null
}

serve_and_check() {  # LABEL NAME ONNX CONTROL_ONNX then run_service flags: health, user, writes, reconstruction, drain
  local label=$1 name=$2 onnx=$3 control=$4 since seconds status out
  shift 4
  since=$(date +%s.%N)
  run_service "$name" "$@"
  seconds=$(check wait-serving "127.0.0.1:$GRPC_PORT" --since "$since" --timeout "$CHECK_TIMEOUT") || { logs "$name"; exit 1; }
  figures[$label.startup]=$seconds
  echo "[$label] start-up to SERVING (grpc.health.v1 Check dnirecon.v1.Reconstruction from the host): $seconds s"

  figures[$label.uid]=$(podman_ exec "$name" sh -c 'id -u')
  echo "[$label] uid $(podman_ exec "$name" sh -c 'id'); server process: $(podman_ exec "$name" sh -c 'grep ^Uid: /proc/1/status')"
  [ "${figures[$label.uid]}" = 10001 ] || die "[$label] runs as uid ${figures[$label.uid]}, expected 10001"
  for path in / /tmp /opt/venv; do
    if out=$(podman_ exec "$name" sh -c "echo probe > $path/dnirecon-write-probe" 2>&1); then
      die "[$label] writing $path/dnirecon-write-probe succeeded: the root filesystem must be read-only"
    fi
    echo "[$label] write to $path refused: $out"
  done
  figures[$label.write]=$(podman_ exec "$name" sh -c 'echo probe > /dnirecon-write-probe' 2>&1 || true)
  podman_ exec "$name" sh -c 'echo probe > /var/cache/dnirecon/write-probe && rm /var/cache/dnirecon/write-probe' \
    || die "[$label] the cache /var/cache/dnirecon is not writable"
  echo "[$label] write to /var/cache/dnirecon: ok"

  "$DNIRECON" client info --server "127.0.0.1:$GRPC_PORT" --timeout 30 | sed "s/^/[$label] client info: /"
  "$DNIRECON" client reconstruct "$VOLUME" --server "127.0.0.1:$GRPC_PORT" --alpha 1.0 --accel 4 \
    --out "$work/out-$label" --timeout 120 >"$work/client-$label.log" 2>&1 \
    || { cat "$work/client-$label.log"; die "[$label] dnirecon client reconstruct failed"; }
  tr '\r' '\n' <"$work/client-$label.log" | grep -v '%|' | sed "s/^/[$label] client: /" || true
  out=$(check compare --volume "$VOLUME" --recon "$work/out-$label/$(basename "$VOLUME" .h5).recon.h5" --onnx "$onnx" \
    --control "$control") \
    || die "[$label] served images differ from in-process onnxruntime: $out"
  figures[$label.diff]=$out
  echo "[$label] $out"

  podman_ kill --signal TERM "$name" >/dev/null
  status=$(podman_ wait "$name")
  figures[$label.exit]=$status
  echo "[$label] SIGTERM: exit status $status; last log lines:"
  podman_ logs --tail 3 "$name" 2>&1 | sed "s/^/[$label]   /"
  [ "$status" = 0 ] || { logs "$name"; die "[$label] exit status $status after SIGTERM, expected 0"; }
}

# ---------------------------------------------------------------- MLflow container, staged from the host
echo "== MLflow image serving a registry on 127.0.0.1:$MLFLOW_PORT"
mkdir -p "$work/mlflow"
containers+=("$prefix-mlflow")
podman_ run -d --name "$prefix-mlflow" --network host --read-only --tmpfs /tmp -v "$work/mlflow:/srv/mlflow:U" \
  "$MLFLOW_IMAGE" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  --backend-store-uri sqlite:////srv/mlflow/mlflow.db --artifacts-destination /srv/mlflow/artifacts --serve-artifacts >/dev/null
check wait-http "http://127.0.0.1:$MLFLOW_PORT/health" --timeout 120 || { logs "$prefix-mlflow"; exit 1; }
echo "== registering, baking and promoting from the host (project code) into the MLflow container"
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
(cd "$work" && check stage --out "$work/stage" 2>"$work/stage.log") || { tail -30 "$work/stage.log"; logs "$prefix-mlflow"; exit 1; }
VOLUME=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["volume"])' "$work/stage/stage.json")
BAKED=$work/stage/baked

# ---------------------------------------------------------------- the service image, two ways
echo "== service image serving the baked set mounted read-only at /models"
serve_and_check directory "$prefix-svc-dir" "$BAKED/alpha_1.00.onnx" "$BAKED/alpha_0.00.onnx" -v "$BAKED:/models:ro" -e DNIRECON_MODEL_DIR=/models
echo "== service image resolving models:/interpsn@production from the MLflow container"
serve_and_check registry "$prefix-svc-registry" "$BAKED/alpha_1.00.onnx" "$BAKED/alpha_0.00.onnx" \
  -e DNIRECON_MODEL_URI=models:/interpsn@production -e MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI"

# ---------------------------------------------------------------- the training image starts
echo "== training image"
podman_ run --rm --network none --read-only --tmpfs /tmp --entrypoint python3 "$TRAIN_IMAGE" -c \
  'import torch, onnx, mlflow, registry.bake, training.train; print(f"torch {torch.__version__}, onnx {onnx.__version__}, mlflow {mlflow.__version__}: imports ok")'

# ---------------------------------------------------------------- figures
echo "== image check passed"
for image in "$SERVICE_IMAGE" "$TRAIN_IMAGE" "$MLFLOW_IMAGE"; do
  printf '  %-44s %6.0f MB\n' "$image" "$(podman_ image inspect --format '{{.Size}}' "$image")e-6"
done
for label in directory registry; do
  echo "  [$label] SERVING after ${figures[$label.startup]} s; uid ${figures[$label.uid]}; write to /: ${figures[$label.write]}"
  echo "  [$label] ${figures[$label.diff]}; exit status after SIGTERM ${figures[$label.exit]}"
done
