"""Tiny synthetic fastMRI-layout data (train/ and val/, 32x32, 4 coils) and a throwaway MLflow store."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from training.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("data")
    common = dict(volumes_per_contrast=1, slices=2, coils=4, recon_size=(32, 32))
    synthesize(root / "train", SynthConfig(seed=0, **common))
    synthesize(root / "val", SynthConfig(seed=1, **common))
    return root


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-train")
    return tmp_path


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
