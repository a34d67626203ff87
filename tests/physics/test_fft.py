"""The two centred FFTs agree with each other, with numpy's dnirecon.fftc, and are unitary."""

import numpy as np
import pytest
import torch

from physics_helpers import random_kspace, rel_err
from training.physics.fft import MATMUL_FFT, TORCH_FFT

SIZES = [(8, 6), (7, 5), (9, 12), (64, 37)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matmul_fft_matches_torch_fft_within_1e5(h, w):
    x = random_kspace(2, 3, h, w)
    assert rel_err(MATMUL_FFT.fft(x), TORCH_FFT.fft(x)) < 1e-5
    assert rel_err(MATMUL_FFT.ifft(x), TORCH_FFT.ifft(x)) < 1e-5


def test_matmul_fft_matches_at_fastmri_size():
    x = random_kspace(1, 1, 640, 368)
    assert rel_err(MATMUL_FFT.fft(x), TORCH_FFT.fft(x)) < 1e-5


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
@pytest.mark.parametrize("h,w", SIZES)
def test_fft_matches_numpy_fftc(fourier, h, w):
    fftc = pytest.importorskip("dnirecon.fftc")
    x = random_kspace(1, 2, h, w)
    ref = fftc.fft2c(x.numpy().astype(np.complex128))
    assert np.abs(fourier.fft(x).numpy() - ref).max() / np.abs(ref).max() < 1e-5
    ref_inv = fftc.ifft2c(x.numpy().astype(np.complex128))
    assert np.abs(fourier.ifft(x).numpy() - ref_inv).max() / np.abs(ref_inv).max() < 1e-5


def test_fft_matches_fastmri_oracle():
    fastmri = pytest.importorskip("fastmri")
    x = random_kspace(1, 2, 10, 8)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x)).contiguous())
    assert rel_err(TORCH_FFT.fft(x), ref) < 1e-6
    assert rel_err(MATMUL_FFT.fft(x), ref) < 1e-5


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
def test_fft_is_unitary_and_inverted_by_ifft(fourier):
    x = random_kspace(1, 1, 9, 7)
    k = fourier.fft(x)
    assert torch.allclose(k.abs().square().sum(), x.abs().square().sum(), rtol=1e-5)
    assert rel_err(fourier.ifft(k), x) < 1e-5


def test_image_centre_maps_to_flat_kspace():
    # A delta at index n // 2 is the image origin in the centred convention: flat, zero-phase k-space.
    x = torch.zeros(1, 1, 7, 6, dtype=torch.complex64)
    x[..., 3, 3] = 1.0
    k = MATMUL_FFT.fft(x)
    assert torch.allclose(k, torch.full_like(k, 1 / np.sqrt(42)), atol=1e-6)
