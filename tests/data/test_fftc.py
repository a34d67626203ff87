import numpy as np
import pytest
import torch

import fastmri
from dnirecon.fftc import fft2c, ifft2c, rss


@pytest.mark.parametrize("shape", [(2, 16, 12), (3, 15, 9)])
def test_fft2c_matches_fastmri_on_even_and_odd_sizes(shape, rng):
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    ref = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(torch.from_numpy(x)))).numpy()
    np.testing.assert_allclose(fft2c(x), ref, atol=1e-5)
    ref_inv = torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(torch.from_numpy(x)))).numpy()
    np.testing.assert_allclose(ifft2c(x), ref_inv, atol=1e-5)


def test_fft2c_is_orthonormal_and_inverted_by_ifft2c(rng):
    x = rng.standard_normal((4, 11, 10)) + 1j * rng.standard_normal((4, 11, 10))
    k = fft2c(x)
    assert np.linalg.norm(k) == pytest.approx(np.linalg.norm(x), rel=1e-10)
    np.testing.assert_allclose(ifft2c(k), x, atol=1e-12)


def test_centre_pixel_maps_to_constant_kspace():
    x = np.zeros((8, 6), complex)
    x[4, 3] = 1.0  # image centre is at n // 2
    np.testing.assert_allclose(fft2c(x), np.full((8, 6), 1 / np.sqrt(48)), atol=1e-12)


def test_complex64_stays_complex64(rng):
    assert fft2c(np.ones((4, 4), np.complex64)).dtype == np.complex64


def test_rss_of_coils():
    x = np.array([[3.0 + 0j], [4j]])
    assert rss(x, 0)[0] == pytest.approx(5.0)
