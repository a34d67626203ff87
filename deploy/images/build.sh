#!/usr/bin/env bash
# Builds the three dnirecon images with podman: dnirecon-service, dnirecon-train, dnirecon-mlflow.
#
# With no image registry at hand, the base is made from Debian's archive (mmdebstrap, then podman
# import) and all three images build on it; pip inside the builds uses this host's package-index
# settings (index, mirrors, local wheels, constraints, CA bundle) as build secrets and read-only mounts.
# Then it measures each image: size, Python, `pip freeze` (written to $IMAGES_OUT/NAME.freeze.txt),
# compilers and package managers left, build secrets left, the revision label. docs/deploy.md has more.
#
# Settings (environment):
#   BASE_IMAGE      base of all three images (default localhost/dnirecon-base:bookworm, made here
#                   from $DEBIAN_MIRROR when absent); SERVICE_BASE / PYTHON_BASE override it per image,
#                   and the value "upstream" keeps the Dockerfile's default (the real upstream tag)
#   DEBIAN_MIRROR   Debian archive for the base (default http://deb.debian.org/debian)
#   PIP_CONF        pip.conf for the RUN steps instead of this host's pip settings
#   CA_BUNDLE       CA bundle (PEM) for the RUN steps; a PIP_CONF using it says cert = /run/secrets/ca-bundle
#   BUILD_NETWORK   podman build --network (default host); PODMAN_FLAGS, IMAGE_TAG, IMAGES_OUT: common.sh
#   IMAGES          which images to build (default "service train mlflow")
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/images/common.sh
. deploy/images/common.sh

need podman "install it (Debian: apt-get install podman runc)"
BASE_IMAGE=${BASE_IMAGE:-localhost/dnirecon-base:bookworm}
SERVICE_BASE=${SERVICE_BASE:-$BASE_IMAGE}
PYTHON_BASE=${PYTHON_BASE:-$BASE_IMAGE}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILD_NETWORK=${BUILD_NETWORK:-host}
IMAGES=${IMAGES:-service train mlflow}
PYTHON=${PYTHON:-python3}

work=$(mktemp -d -t dnirecon-images.XXXXXX)
cleanup() { rm -rf "$work" "${_dnirecon_conf_tmp:-}"; }
trap cleanup EXIT

REVISION=$(git rev-parse HEAD)
git diff --quiet HEAD -- || REVISION="$REVISION-dirty"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
mkdir -p "$IMAGES_OUT"

# ---------------------------------------------------------------- base image
if [ "$BASE_IMAGE" = localhost/dnirecon-base:bookworm ] && ! podman_ image exists "$BASE_IMAGE"; then
  need mmdebstrap "install it (Debian: apt-get install mmdebstrap), or set BASE_IMAGE to a Debian/Ubuntu image you have"
  echo "== base: mmdebstrap bookworm from $DEBIAN_MIRROR"
  start=$SECONDS
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/base.tar" "$DEBIAN_MIRROR"
  podman_ import --change 'CMD ["/bin/bash"]' "$work/base.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$work/base.tar"
  echo "== base: $BASE_IMAGE built in $((SECONDS - start)) s"
fi

# ---------------------------------------------------------------- package-index settings for RUN steps
build_flags=(--network "$BUILD_NETWORK" --layers)
if [ -n "${PIP_CONF:-}" ]; then
  [ -r "$PIP_CONF" ] || die "PIP_CONF=$PIP_CONF is not a readable file"
  cp "$PIP_CONF" "$work/pip.conf"
  ca=${CA_BUNDLE:-}
else
  ca=
  while read -r kind path; do
    case $kind in
      ca-bundle) ca=$path ;;
      mount) build_flags+=(-v "$path:$path:ro") ;;
    esac
  done < <("$PYTHON" deploy/images/pip_settings.py --out "$work/pip.conf")
  ca=${CA_BUNDLE:-$ca}
fi
build_flags+=(--secret "id=pip.conf,src=$work/pip.conf")
if [ -n "$ca" ]; then
  [ -r "$ca" ] || die "CA bundle $ca is not a readable file"
  build_flags+=(--secret "id=ca-bundle,src=$ca")
fi
echo "== pip settings for the builds (secret pip.conf):"
sed 's/^/   /' "$work/pip.conf"

# ---------------------------------------------------------------- images
base_arg() {  # --build-arg NAME=BASE unless BASE is "upstream"
  [ "$2" = upstream ] || printf -- '--build-arg\n%s=%s\n' "$1" "$2"
}

build() {  # NAME IMAGE BASE_ARG_NAME BASE [VERSION]
  local name=$1 image=$2 dockerfile=deploy/docker/$1.Dockerfile start=$SECONDS version=()
  echo "== build $image ($dockerfile)"
  mapfile -t base < <(base_arg "$3" "$4")
  [ -z "${5:-}" ] || version=(--build-arg "VERSION=$5")
  podman_ build "${build_flags[@]}" "${base[@]}" "${version[@]}" -f "$dockerfile" --ignorefile "$dockerfile.dockerignore" \
    --build-arg "GIT_REVISION=$REVISION" -t "$image" .
  echo "== built $image in $((SECONDS - start)) s"
}

measure() {  # NAME IMAGE: writes NAME.freeze.txt and NAME.json, prints one summary line
  local name=$1 image=$2 size revision
  podman_ run --rm --network none --entrypoint /opt/venv/bin/python "$image" -c "$(cat deploy/images/inspect_image.py)" \
    >"$IMAGES_OUT/$name.json"
  size=$(podman_ image inspect --format '{{.Size}}' "$image")
  revision=$(podman_ image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$image")
  "$PYTHON" - "$IMAGES_OUT/$name.json" "$IMAGES_OUT/$name.freeze.txt" "$name" "$image" "$size" "$revision" <<'PY'
import json, sys
src, freeze, name, image, size, revision = sys.argv[1:]
info = json.load(open(src))
info.update(image=image, size_bytes=int(size), revision=revision)
json.dump(info, open(src, "w"), indent=2)
open(freeze, "w").write("\n".join(info["packages"]) + "\n")
tools = ", ".join(sorted(info["tools"])) or "none"
print(f"{name:8} {image:40} {int(size) / 1e6:7.0f} MB  python {info['python']}  {len(info['packages'])} packages  "
      f"uid {info['user']}  tools: {tools}  leftovers: {', '.join(info['leftovers']) or 'none'}  revision {revision}")
if info["leftovers"]:
    sys.exit(f"{image}: build settings reached the image: {info['leftovers']}")
if name == "service" and any(p.lower().split("==")[0] in ("torch", "onnx", "mlflow") for p in info["packages"]):
    sys.exit(f"{image}: the service image must not hold torch, onnx or the full mlflow")
if name == "service" and {"pip", "setuptools"} & {p.split("==")[0] for p in info["packages"]}:
    sys.exit(f"{image}: pip/setuptools left in the service venv")
PY
}

for name in $IMAGES; do
  case $name in
    service) build service "$SERVICE_IMAGE" CUDA_IMAGE "$SERVICE_BASE" "$VERSION" ;;
    train) build train "$TRAIN_IMAGE" PYTHON_IMAGE "$PYTHON_BASE" "$VERSION" ;;
    mlflow) build mlflow "$MLFLOW_IMAGE" PYTHON_IMAGE "$PYTHON_BASE" ;;  # the label carries mlflow's version
    *) die "IMAGES: unknown image $name, expected service, train or mlflow" ;;
  esac
done

echo "== what the images hold (pip freeze in $IMAGES_OUT/NAME.freeze.txt)"
for name in $IMAGES; do
  case $name in
    service) image=$SERVICE_IMAGE ;; train) image=$TRAIN_IMAGE ;; mlflow) image=$MLFLOW_IMAGE ;;
  esac
  measure "$name" "$image"
done | tee "$IMAGES_OUT/summary.txt"
