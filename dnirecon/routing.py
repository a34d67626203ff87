"""Which set of cascades a slice runs: the one routing rule, shared by the SN in torch and the service.

A model with one set of cascades per acceleration (`SNConfig.accel_branches`, e.g. 4x and 8x) runs,
for each slice, the set whose acceleration is nearest, on a log scale, to 1 / the slice's sampled
fraction (the mean of its phase-encode mask). 4x and 8x split at 1 / fraction = sqrt(32) = 5.66.
Every mask has a nearest set; an empty mask (fraction 0) goes to the highest acceleration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sampled_fraction(mask) -> np.ndarray:
    """The fraction of phase-encode columns sampled, float64 (...,), from masks (..., W)."""
    return np.asarray(mask, dtype=np.float64).mean(axis=-1)


def nearest_set(fraction, accels: Sequence[float]) -> np.ndarray:
    """The index (int64, shape of `fraction`) of the entry of `accels` nearest, on a log scale, to
    1 / fraction; all zeros when there is at most one set."""
    fraction = np.asarray(fraction, dtype=np.float64)
    if len(accels) <= 1:
        return np.zeros(fraction.shape, np.int64)
    with np.errstate(divide="ignore"):
        log_accel = -np.log(fraction)  # +inf for an empty mask: the highest acceleration is nearest
    table = np.log(np.asarray(accels, dtype=np.float64))
    nearest = np.argmin(np.abs(log_accel[..., None] - table), axis=-1)
    return np.where(fraction > 0, nearest, len(accels) - 1).astype(np.int64)


def served_range(accels: Sequence[float], index: int) -> tuple[float, float | None]:
    """The accelerations 1 / fraction that set `index` serves, [low, high) (high None: no bound):
    the geometric midpoints between neighbouring sets' accelerations."""
    if len(accels) <= 1:
        return 1.0, None
    low = 1.0 if index == 0 else float(np.sqrt(accels[index - 1] * accels[index]))
    high = None if index == len(accels) - 1 else float(np.sqrt(accels[index] * accels[index + 1]))
    return low, high
