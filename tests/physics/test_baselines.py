"""Classical baselines: zero-filled RSS and CG-SENSE."""

import pytest
import torch

from physics_helpers import phantom, random_kspace, random_mask, rel_err, smooth_maps
from training.baselines import cg_sense, zero_filled_rss
from training.physics.coil import rss
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import SenseOp


def _problem(b=2, c=8, h=24, w=20, seed=0):
    maps = smooth_maps(b, c, h, w, seed=seed, width=0.7)
    x = phantom(h, w).expand(b, h, w) * (1 + 0.1 * seed)
    mask = torch.zeros(b, w)
    mask[:, ::2] = 1.0  # 2x equispaced plus a 4-column ACS block: well posed with 8 coils
    mask[:, w // 2 - 2 : w // 2 + 2] = 1.0
    return maps, x, mask, SenseOp(maps, mask).forward(x)


def test_zero_filled_rss_of_fully_sampled_data_is_the_rss_image():
    k = random_kspace(1, 3, 8, 6)
    assert rel_err(zero_filled_rss(k, torch.ones(1, 6)), rss(TORCH_FFT.ifft(k), dim=1)) < 1e-6


def test_zero_filled_rss_ignores_unsampled_columns():
    k, mask = random_kspace(1, 3, 8, 6), random_mask(1, 6)
    assert torch.equal(zero_filled_rss(k, mask), zero_filled_rss(k * mask[:, None, None, :], mask))


def test_cg_sense_recovers_the_image_from_consistent_data_with_known_maps():
    maps, x, mask, y = _problem()
    zero_filled_error = rel_err(SenseOp(maps, mask).adjoint(y), x)
    recon = cg_sense(y, mask, lam=0.0, iters=100, maps=maps)
    assert rel_err(recon, x) < 1e-3
    assert zero_filled_error > 0.1


def test_cg_sense_solves_the_tikhonov_normal_equations():
    maps, _, mask, y = _problem(seed=3)
    lam = 0.1
    recon = cg_sense(y, mask, lam=lam, iters=60, maps=maps)
    op = SenseOp(maps, mask)
    assert rel_err(op.normal(recon) + lam * recon, op.adjoint(y)) < 1e-4


def test_cg_sense_runs_each_batch_sample_on_its_own():
    maps, _, mask, y = _problem(b=2, seed=4)
    both = cg_sense(y, mask, lam=0.01, iters=8)
    first = cg_sense(y[:1], mask[:1], lam=0.01, iters=8)
    assert rel_err(both[:1], first) < 1e-5


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
def test_cg_sense_with_acs_maps_beats_zero_filled_on_undersampled_data(fourier):
    maps, x, mask, y = _problem(seed=5)
    truth = x.abs()
    cg = cg_sense(y, mask, lam=0.01, iters=20, fourier=fourier).abs()
    zf = zero_filled_rss(y, mask, fourier)
    assert cg.shape == zf.shape == truth.shape
    assert (cg - truth).norm() < 0.6 * (zf - truth).norm()
