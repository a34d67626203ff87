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


# ---------------------------------------------------------------- tiny registered SN / SN-GAN and data
TINY_SN = dict(cascades=1, width=4, blocks=1, dc_weight_init=1.0)
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def register_tiny(name: str, state_dict, model_config: dict, kind: str, champion: bool = True) -> str:
    """A registered version in training.tracking's artifact format (model/weights.pt + config.json)."""
    from training.models.signature import arch_signature
    from training.tracking import client, experiment_id, log_model_artifact, model_config_document, \
        register_version

    c = client()
    run = c.create_run(experiment_id())
    doc = model_config_document(kind, "cpu", model_config, arch_signature(state_dict))
    source = log_model_artifact(run.info.run_id, state_dict, doc)
    c.set_terminated(run.info.run_id)
    return register_version(name, source, run.info.run_id, {"preset": "cpu"}, champion=champion)


@pytest.fixture(scope="session")
def tiny_pair(mlflow_store):
    """SN (random init, seeded) and an 'SN-GAN' = SN plus a perturbation of every float weight."""
    import torch

    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig

    torch.manual_seed(0)
    sn = SensitivityNetwork(SNConfig(**TINY_SN)).eval()
    g = torch.Generator().manual_seed(1)
    gan_state = {k: (v + 0.1 * v.abs().mean() * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
                 for k, v in sn.state_dict().items()}
    for k in gan_state:
        if k.startswith("dc.") and k.endswith("weight"):
            gan_state[k] = torch.tensor(0.7)  # a soft DC weight at the SN-GAN end
    gan = SensitivityNetwork(SNConfig(**TINY_SN)).eval()
    gan.load_state_dict(gan_state)
    v_sn = register_tiny("sn", sn.state_dict(), TINY_SN, "sn")
    v_gan = register_tiny("sn-gan", gan.state_dict(), TINY_SN, "sn-gan")
    return sn, gan, v_sn, v_gan


@pytest.fixture(scope="session")
def held_out_dir(tmp_path_factory):
    from training.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("heldout")
    synthesize(out, SynthConfig(volumes_per_contrast=1, slices=2, coils=3, recon_size=(16, 16), seed=3,
                                contrasts=("pd",)))
    return out


@pytest.fixture(scope="session")
def baked(tiny_pair, held_out_dir, tmp_path_factory):
    """One real bake (5 alphas + continuous) registered as an interpsn version: shared by the tests."""
    import torch

    from registry.bake import bake

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("baked") / "set"
    return bake("sn@champion", "sn-gan@champion", ALPHAS, held_out_dir, slices=1, accels=(4.0, 8.0),
                continuous=True, out_dir=out, threads=1)
