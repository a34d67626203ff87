"""Fixtures for the registry tests: a real MLflow sqlite store in a temporary directory."""

from __future__ import annotations

import itertools
import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

_names = itertools.count()


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One sqlite store per session (its schema migration takes seconds); tests use distinct model names."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_REGISTRY_URI"] = uri
    old_cwd = os.getcwd()
    os.chdir(root)  # artifacts of experiments created here go under root/mlartifacts
    yield root
    os.chdir(old_cwd)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def client(mlflow_store):
    from registry.store import get_client

    return get_client()


@pytest.fixture
def model_name():
    return f"interpsn-t{next(_names)}"
