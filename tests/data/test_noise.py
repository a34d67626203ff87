"""Noise covariance, prewhitening matrix and its application (dnirecon/noise.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dnirecon.errors import DataError
from dnirecon.noise import (bandwidth_scale, min_noise_samples, noise_covariance, prewhiten, summarize, whitener,
                            whitening_matrix)


def correlated_mixing(coils: int, seed: int) -> np.ndarray:
    """A (C, C) mixing with unequal gains (0.5..2) and neighbour coupling: noise A @ white."""
    rng = np.random.default_rng(seed)
    A = np.eye(coils, dtype=np.complex128)
    for i in range(coils - 1):
        A[i, i + 1] = A[i + 1, i] = 0.45 * np.exp(1j * rng.uniform(0, 2 * np.pi))
    return np.diag(np.linspace(0.5, 2.0, coils)) @ A


def white(coils: int, n: int, rng) -> np.ndarray:
    return (rng.standard_normal((coils, n)) + 1j * rng.standard_normal((coils, n))) / np.sqrt(2)


def test_whitened_noise_covariance_is_within_5_percent_of_identity_on_8_correlated_channels():
    rng = np.random.default_rng(0)
    A = correlated_mixing(8, seed=1)
    w = whitener((A @ white(8, 20000, rng)).astype(np.complex64))
    assert w.summary.max_correlation > 0.3  # the draw really is correlated
    fresh = (A @ white(8, 20000, rng)).astype(np.complex64)  # another draw of the same process
    out = w.matrix @ fresh
    cov = out @ out.conj().T / out.shape[1]
    assert np.abs(cov - np.eye(8)).max() < 0.05


def test_whitening_matrix_equals_the_dense_inverse_cholesky_factor():
    rng = np.random.default_rng(2)
    A = correlated_mixing(6, seed=3)
    noise = A @ white(6, 4000, rng)
    psi = noise_covariance(noise)
    np.testing.assert_allclose(psi, noise @ noise.conj().T / 4000, rtol=1e-12, atol=0)
    W = whitening_matrix(psi)
    L = np.linalg.cholesky(psi)
    np.testing.assert_allclose(W, np.linalg.inv(L), rtol=0, atol=1e-5 * np.abs(np.linalg.inv(L)).max())
    np.testing.assert_allclose(W @ psi @ W.conj().T, np.eye(6), atol=1e-5)
    assert np.allclose(np.triu(W, 1), 0)  # lower triangular, as L^-1 is


def test_prewhiten_applies_the_matrix_across_coils_of_a_batch_and_in_place():
    rng = np.random.default_rng(4)
    W = whitening_matrix(noise_covariance(correlated_mixing(4, 5) @ white(4, 1000, rng)))
    k = (rng.standard_normal((2, 4, 6, 5)) + 1j * rng.standard_normal((2, 4, 6, 5))).astype(np.complex64)
    expected = np.einsum("ij,sjhw->sihw", W.astype(np.complex128), k.astype(np.complex128))
    np.testing.assert_allclose(prewhiten(k, W), expected, rtol=0, atol=1e-5)
    same = k.copy()
    assert prewhiten(same, W, out=same) is same
    np.testing.assert_allclose(same, expected, rtol=0, atol=1e-5)
    assert same.dtype == np.complex64


def test_prewhiten_keeps_unacquired_columns_zero():
    rng = np.random.default_rng(6)
    W = whitening_matrix(noise_covariance(correlated_mixing(3, 7) @ white(3, 500, rng)))
    k = np.zeros((3, 4, 8), np.complex64)
    k[:, :, ::2] = 1 + 1j
    assert not prewhiten(k, W)[:, :, 1::2].any()


def test_summary_gives_channel_sd_range_and_largest_correlation():
    psi = np.array([[4.0, 0.6 * 2 * 1], [0.6 * 2 * 1, 1.0]], np.complex128)
    s = summarize(psi, samples=100)
    assert (s.channels, s.samples) == (2, 100)
    assert s.sd_min == pytest.approx(1.0) and s.sd_max == pytest.approx(2.0)
    assert s.max_correlation == pytest.approx(0.6)


def test_bandwidth_scale_follows_dwell_times_and_relative_bandwidth():
    assert bandwidth_scale(0, 5.0) == 1.0
    assert bandwidth_scale(5.0, 5.0, 1.0) == 1.0
    assert bandwidth_scale(2.0, 8.0, 0.79) == pytest.approx(np.sqrt(4 * 0.79))


def test_a_channel_count_mismatch_names_the_field_and_both_counts():
    noise = white(4, 1000, np.random.default_rng(0))
    with pytest.raises(DataError, match=r"noise readouts has 4 channels, expected 8 \(the k-space coils\)"):
        whitener(noise, coils=8, where="noise readouts")


def test_too_few_samples_per_channel_are_refused():
    c = 8
    noise = white(c, min_noise_samples(c) - 1, np.random.default_rng(0))
    with pytest.raises(DataError, match=rf"has {min_noise_samples(c) - 1} samples per channel, expected at least "
                                        rf"{min_noise_samples(c)}"):
        whitener(noise)


def test_a_silent_channel_makes_the_covariance_singular():
    noise = white(4, 1000, np.random.default_rng(0))
    noise[2] = 0
    with pytest.raises(DataError, match="singular"):
        whitener(noise)


def test_a_copied_channel_makes_the_covariance_singular():
    noise = white(4, 1000, np.random.default_rng(0))
    noise[3] = noise[1]
    with pytest.raises(DataError, match="singular"):
        whitener(noise)


def test_non_finite_noise_is_refused():
    noise = white(2, 1000, np.random.default_rng(0))
    noise[0, 5] = np.nan
    with pytest.raises(DataError, match="noise holds NaN or Inf"):
        whitener(noise)
    with pytest.raises(DataError, match="holds NaN or Inf"):
        whitening_matrix(np.array([[1.0, 0], [0, np.inf]]))


def test_prewhiten_refuses_a_matrix_for_other_coils():
    W = np.eye(3, dtype=np.complex64)
    with pytest.raises(DataError, match="kspace has 4 coils, the noise whitening matrix is for 3 channels"):
        prewhiten(np.zeros((4, 2, 2), np.complex64), W)


def test_covariance_of_readouts_equals_that_of_their_samples_end_to_end():
    rng = np.random.default_rng(8)
    noise = correlated_mixing(4, 9) @ white(4, 700, rng)
    parts = [noise[:, :256], noise[:, 256:512], noise[:, 512:]]
    np.testing.assert_allclose(noise_covariance(parts), noise_covariance(noise), rtol=1e-12, atol=1e-15)
    assert whitener(parts).summary.samples == 700


def test_readouts_with_different_channel_counts_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=r"noise readouts have \[3, 4\] channels, expected one count"):
        whitener([white(4, 300, rng), white(3, 300, rng)], where="noise readouts")
