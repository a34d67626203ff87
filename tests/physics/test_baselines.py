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


# --- compressed sensing (l1-wavelet SENSE on ESPIRiT maps, sigpy) ---------------------------------

def _dense_fista_l1_wavelet(y, mask, maps, weight, iters):
    """argmin_x 1/2 ||M F S x - y||^2 + weight ||W x||_1 with explicit matrices: W the full-depth Haar
    transform (pywt, orthogonal for power-of-two sizes), x = W^T z, FISTA on z."""
    import numpy as np
    import pywt

    from dnirecon.fftc import fft2c

    c, h, w = maps.shape
    basis = np.eye(h * w).reshape(h * w, h, w)
    wav = np.stack([pywt.coeffs_to_array(pywt.wavedecn(e, "haar", mode="zero"))[0].ravel() for e in basis], 1)
    cols = np.stack([(mask[None, None, :] * fft2c((maps * e[None]).astype(np.complex128))).ravel() for e in basis], 1)
    a = cols @ wav.T  # acts on wavelet coefficients z
    yv = (mask[None, None, :] * y).ravel()
    step = 1.0 / np.linalg.norm(a, 2) ** 2
    z = v = np.zeros(h * w, np.complex128)
    t = 1.0
    for _ in range(iters):
        g = v - step * (a.conj().T @ (a @ v - yv))
        z_new = np.maximum(np.abs(g) - step * weight, 0) * np.exp(1j * np.angle(g))
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        v = z_new + (t - 1) / t_new * (z_new - z)
        z, t = z_new, t_new
    return (wav.T @ z).reshape(h, w)


def test_cs_l1_wavelet_matches_a_dense_fista_solution_of_the_same_problem():
    import numpy as np

    from training.baselines import cs_l1_wavelet, sense_adjoint_peak

    maps, x, mask, y = _problem(b=1, c=3, h=16, w=16, seed=2)
    noise = 0.02 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.complex64)
    y = (y + noise) * mask[:, None, None, :]
    lam = 0.02
    k, m, s = y[0].numpy(), mask[0].numpy(), maps[0].numpy()
    weight = lam * sense_adjoint_peak(k, m, s)  # lam is relative to the zero-filled SENSE image's peak
    dense = _dense_fista_l1_wavelet(k.astype(np.complex128), m, s.astype(np.complex128), weight, 3000)
    cs = cs_l1_wavelet(y, mask, lam=lam, iters=3000, maps=maps, wavelet="haar")[0].numpy()
    assert np.abs(cs - dense).max() / np.abs(dense).max() < 1e-3  # both converged: the same minimiser
    assert np.abs(cs - x[0].numpy()).max() > 1e-3  # and not the unregularised solution: lam acts


def test_cs_l1_wavelet_with_espirit_maps_beats_zero_filled_on_a_noisy_phantom():
    from training.baselines import cs_l1_wavelet

    h = w = 48
    maps = smooth_maps(1, 8, h, w, seed=1, width=0.7)
    truth = phantom(h, w)[None]
    mask = torch.zeros(1, w)
    mask[:, ::3] = 1.0
    mask[:, w // 2 - 6: w // 2 + 6] = 1.0  # ~3.4x with a 12-column ACS block
    clean = SenseOp(maps, mask).forward(truth)
    # orthonormal FFT: sd 0.03 per sample is 0.03 per coil pixel, 2 % of the phantom's peak of 1.5
    noise = 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1), dtype=torch.complex64)
    y = (clean + noise) * mask[:, None, None, :]
    cs = cs_l1_wavelet(y, mask).abs()
    zf = zero_filled_rss(y, mask)
    assert cs.shape == zf.shape == (1, h, w)
    assert (cs - truth.abs()).norm() < 0.6 * (zf - truth.abs()).norm()


def test_cs_l1_wavelet_takes_numpy_or_torch_and_returns_the_same_kind():
    import numpy as np

    from training.baselines import cs_l1_wavelet

    maps, _, mask, y = _problem(b=2, c=4, h=16, w=16, seed=6)
    from_torch = cs_l1_wavelet(y, mask, iters=5, maps=maps)
    from_numpy = cs_l1_wavelet(y.numpy(), mask.numpy(), iters=5, maps=maps.numpy())
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.complex64
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (2, 16, 16)
    assert np.abs(from_torch.numpy() - from_numpy).max() == 0


def test_espirit_maps_have_unit_root_sum_of_squares():
    from training.baselines import espirit_maps

    maps, x, mask, y = _problem(b=1, c=6, h=32, w=32, seed=7)
    mask[:, 10:22] = 1.0
    s = espirit_maps((y * mask[:, None, None, :])[0].numpy(), mask[0].numpy())
    assert s.shape == (6, 32, 32)
    assert abs(float((abs(s) ** 2).sum(0).mean()) - 1.0) < 1e-4
