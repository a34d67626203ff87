"""A tiny synthetic dataset shared by the data tests (generated once per session)."""

import numpy as np
import pytest

from training.synth import SynthConfig, synthesize

TINY = SynthConfig(volumes_per_contrast=1, slices=3, coils=4, recon_size=(64, 64), seed=7)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, TINY)
    return out


@pytest.fixture(scope="session")
def pd_file(tiny_dir):
    return tiny_dir / "synth_pd_000.h5"


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
