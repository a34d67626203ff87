# Two commands set up a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create or refresh .venv from the pinned requirements first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test bench bench-paper proto images image-check clean

$(STAMP): requirements/service.txt requirements/train.txt requirements/test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/test.txt
	$(PIP) install -q --no-deps fastmri==0.3.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/dnirecon demo $(DEMO_ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The cpu preset at full size (15x640x368) and at the demo size, with throughput at 1/4/16 streams and
# server memory after 50 and 1,000 slices. `make bench-paper` appends the paper preset (10 cascades,
# width 128): 3 slices per path at 15x640x368 (about a minute each on 2 CPU cores) and throughput at
# the demo size; no 1,000-slice memory run (hours on a CPU).
bench: venv
	$(BIN)/dnirecon bench --preset cpu --sizes 15x640x368,8x192x110 --slices 10 --streams 1,4,16 \
	  --throughput-slices 48 --rss-slices 50,1000 $(BENCH_ARGS)

bench-paper: venv
	$(BIN)/dnirecon bench --preset paper --sizes 15x640x368,8x192x110 --slices 3 --streams 1,4,16 \
	  --throughput-slices 16 --rss-slices "" --append $(BENCH_ARGS)

# Regenerates the committed gRPC stubs from protos/ (a test checks they are in step).
proto: venv
	$(BIN)/python -m service.protogen

# Container images built with podman: a Debian base from Debian's archive unless BASE_IMAGE names one,
# the three images, and what they hold (build/images/). Needs podman (and mmdebstrap for the base).
images:
	deploy/images/build.sh

# The built images run on loopback: the service read-only as uid 10001 from a mounted baked set and
# from models:/interpsn@production in the MLflow container, compared with in-process onnxruntime.
image-check: venv
	PYTHON=$(CURDIR)/$(BIN)/python deploy/images/check.sh

clean:
	rm -rf $(VENV) .pytest_cache
