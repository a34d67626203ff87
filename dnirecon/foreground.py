"""Foreground (the knee, not the air around it) of a magnitude target image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dnirecon.errors import DataError


def _slice_mask(img: np.ndarray, threshold: float, dilation: int) -> np.ndarray:
    # a little smoothing keeps noise speckle in the air from passing the threshold
    smooth = ndimage.gaussian_filter(img.astype(np.float64), 1.0)
    peak = np.percentile(smooth, 99)
    if not peak > 0:
        return np.zeros(img.shape, bool)
    mask = ndimage.binary_fill_holes(smooth > threshold * peak)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    if dilation:
        mask = ndimage.binary_dilation(mask, iterations=dilation)
    return mask


def foreground_mask(image: np.ndarray, threshold: float = 0.1, dilation: int = 2) -> np.ndarray:
    """Boolean foreground of `image (..., h, w)`, per 2-D slice.

    Pixels above `threshold` x the slice's 99th percentile (after a sigma-1 Gaussian blur), holes
    filled, the largest connected component kept, dilated by `dilation` pixels.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise DataError(f"foreground_mask: image has shape {image.shape}, expected (..., h, w)")
    if np.iscomplexobj(image):
        image = np.abs(image)
    flat = image.reshape((-1,) + image.shape[-2:])
    out = np.stack([_slice_mask(s, threshold, dilation) for s in flat])
    return out.reshape(image.shape)
