"""Tiny held-out set and cheap stand-in methods for the report tests (data collected once per session)."""

import numpy as np
import pytest
import torch

from training.baselines import cg_sense, zero_filled_rss
from training.report import collect_report_data, interp_name, write_report
from training.synth import SynthConfig, synthesize

TINY = SynthConfig(volumes_per_contrast=2, slices=2, coils=4, recon_size=(32, 32), seed=3)
ACCELS = (4.0, 8.0)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def zero_filled(kspace, mask):
    """Magnitude only, no residual: the report computes it."""
    with torch.no_grad():
        return zero_filled_rss(torch.from_numpy(kspace), torch.from_numpy(mask)).numpy(), None


def cg(iters):
    def recon(kspace, mask):
        with torch.no_grad():
            return cg_sense(torch.from_numpy(kspace), torch.from_numpy(mask), iters=iters).numpy(), None
    return recon


def blend(alpha):
    """A fake interpSN: (1 - alpha) |CG-SENSE| + alpha zero-filled, with a residual of its own."""
    def recon(kspace, mask):
        sharp, _ = cg(8)(kspace, mask)
        zf, _ = zero_filled(kspace, mask)
        return (1 - alpha) * np.abs(sharp) + alpha * zf, np.full(kspace.shape[0], 0.1 + alpha, np.float32)
    return recon


def stand_in_methods():
    methods = {"Zero-filled": zero_filled, "CG-SENSE": cg(2), "U-Net": cg(1), "SN": cg(8), "SN-GAN": blend(1.0)}
    methods.update({interp_name(a): blend(a) for a in ALPHAS})
    return methods


@pytest.fixture(scope="session")
def val_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("val")
    synthesize(out, TINY)
    return out


@pytest.fixture(scope="session")
def report_data(val_dir):
    return collect_report_data(val_dir, ACCELS, stand_in_methods(), ALPHAS, progress=False)


RUN_INFO = {"preset": "cpu", "data": {"val_volumes": 4, "coils": 4}, "models": {"sn": "3", "sn-gan": "2"},
            "timings": {"train_s": 61.25}, "machine": "test box"}


@pytest.fixture(scope="session")
def written_report(report_data, tmp_path_factory):
    """The report written once with MLflow logging into a throwaway sqlite store."""
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    try:
        path = write_report(report_data, root / "docs", RUN_INFO)
    finally:
        mp.undo()
    return path, root
