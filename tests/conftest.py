"""Settings shared by every test: no telemetry, few threads (CI has 2 cores), no outside hosts."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "2")
