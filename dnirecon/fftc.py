"""Centred orthonormal 2-D FFT over the last two axes: the one numpy definition of the convention.

fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho")); image centre and k-space centre both sit at
index n // 2, as in fastMRI. training/physics/fft.py holds the torch twins and a test checks agreement.
"""

from __future__ import annotations

import numpy as np

_AXES = (-2, -1)


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal FFT of `x (..., H, W)` (complex) over its last two axes."""
    x = np.fft.ifftshift(x, axes=_AXES)
    return np.fft.fftshift(np.fft.fft2(x, axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT of `k (..., H, W)` over its last two axes."""
    k = np.fft.ifftshift(k, axes=_AXES)
    return np.fft.fftshift(np.fft.ifft2(k, axes=_AXES, norm="ortho"), axes=_AXES)


def rss(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Root-sum-of-squares coil combination of complex coil images along `axis`."""
    return np.sqrt(np.sum(np.abs(x) ** 2, axis=axis))
