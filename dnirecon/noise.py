"""Receiver noise: covariance from a noise measurement, the prewhitening matrix and its application.

A scanner's coil noise is correlated across channels and unequal in level. With Psi the channel
covariance of the noise-only samples and L its Cholesky factor (Psi = L L^H), the coil data y becomes
L^-1 y, whose noise is white with unit variance per channel: the ESPIRiT/ACS coil combination then
weights channels by their SNR (Roemer's combination) and data consistency treats every channel alike.
The whitened data are in units of the noise sd, so images reconstructed from them are in SNR units.

numpy only: the service imports this module.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dnirecon.errors import DataError

SAMPLES_PER_COVARIANCE_CHANNEL = 16  # N >= 16 C keeps the whitened noise's error, about sqrt(C / N), under 25 %
MIN_NOISE_SAMPLES = 64
MIN_PIVOT = 1e-6  # a Cholesky pivot below this fraction of the largest marks a (numerically) singular Psi


def min_noise_samples(channels: int) -> int:
    """The fewest noise samples per channel, N, that give a usable covariance of `channels` channels."""
    return max(MIN_NOISE_SAMPLES, SAMPLES_PER_COVARIANCE_CHANNEL * channels)


def _parts(noise) -> list[np.ndarray]:
    return [np.asarray(noise)] if isinstance(noise, np.ndarray) else [np.asarray(p) for p in noise]


def noise_channels(noise, where: str = "noise") -> int:
    """The channel count C of noise samples (C, N), or of readouts [(C, n_i), ...]; DataError when they differ."""
    parts = _parts(noise)
    if not parts or any(p.ndim != 2 or p.shape[0] < 1 for p in parts):
        raise DataError(f"{where} has shape {[p.shape for p in parts][:4]}, expected (channels, samples)")
    channels = {p.shape[0] for p in parts}
    if len(channels) > 1:
        raise DataError(f"{where} have {sorted(channels)} channels, expected one count")
    return parts[0].shape[0]


def noise_covariance(noise, where: str = "noise") -> np.ndarray:
    """Psi (C, C) complex128 = n n^H / N over noise samples n (C, N), given whole or as readouts
    [(C, n_i), ...] (summed readout by readout: no copy of them all); receiver noise has zero mean.

    DataError naming `where` for a shape other than (C, N), non-finite samples or fewer than
    min_noise_samples(C) samples per channel."""
    parts = _parts(noise)
    c = noise_channels(parts, where)
    n = sum(p.shape[1] for p in parts)
    if n < min_noise_samples(c):
        raise DataError(f"{where} has {n} samples per channel, expected at least {min_noise_samples(c)} for "
                        f"{c} channels")
    psi = np.zeros((c, c), np.complex128)
    for p in parts:
        if not np.isfinite(p).all():
            raise DataError(f"{where} holds NaN or Inf")
        x = p.astype(np.complex128, copy=False)
        psi += x @ x.conj().T
    return psi / n


def whitening_matrix(psi: np.ndarray, where: str = "noise covariance", scale: float = 1.0) -> np.ndarray:
    """W = scale * L^-1 (C, C) complex64 with Psi = L L^H, so W y has covariance scale^2 * L^-1 Psi L^-H = scale^2 I.

    DataError naming `where` for a non-square, non-finite, non-Hermitian or singular Psi."""
    psi = np.asarray(psi, np.complex128)
    if psi.ndim != 2 or psi.shape[0] != psi.shape[1] or psi.shape[0] < 1:
        raise DataError(f"{where} has shape {psi.shape}, expected (channels, channels)")
    if not np.isfinite(psi).all():
        raise DataError(f"{where} holds NaN or Inf")
    top = float(np.max(np.abs(np.diag(psi))))
    if top <= 0 or not np.allclose(psi, psi.conj().T, rtol=0, atol=1e-6 * top):
        raise DataError(f"{where} is not a Hermitian positive definite matrix")
    try:
        L = np.linalg.cholesky(psi)
    except np.linalg.LinAlgError:
        raise DataError(f"{where} is singular (not positive definite): a channel is silent or a copy of "
                        "others") from None
    pivots = np.abs(np.diag(L))
    if pivots.min() <= MIN_PIVOT * pivots.max():
        worst = int(np.argmin(pivots))
        raise DataError(f"{where} is singular: channel {worst} is a combination of the others "
                        f"(Cholesky pivot {pivots.min():.3g}, largest {pivots.max():.3g})")
    if not (np.isfinite(scale) and scale > 0):
        raise DataError(f"noise bandwidth scale {scale!r}, expected a finite number > 0")
    inv = np.linalg.solve(L, np.eye(len(L)))  # triangular: L^-1 exactly as accurate as a triangular solve
    return (scale * inv).astype(np.complex64)


def bandwidth_scale(noise_dwell_us: float, acquisition_dwell_us: float, relative_bandwidth: float = 1.0) -> float:
    """Factor on W for noise sampled at another dwell time than the image readouts: the noise variance per
    sample goes as 1 / dwell, and relativeReceiverNoiseBandwidth (the receiver filter's noise bandwidth
    over the sampling bandwidth) corrects the measured level. 1 when either dwell time is unknown (0)."""
    if not (noise_dwell_us > 0 and acquisition_dwell_us > 0):
        return 1.0
    rb = relative_bandwidth if np.isfinite(relative_bandwidth) and relative_bandwidth > 0 else 1.0
    return float(np.sqrt(acquisition_dwell_us / noise_dwell_us * rb))


def prewhiten(kspace: np.ndarray, W: np.ndarray, *, out: np.ndarray | None = None,
              coil_axis: int = -3) -> np.ndarray:
    """W applied across the coils of kspace (..., C, H, W_) complex64: one output array (`out` may be
    kspace itself, then only a (C, H*W_) buffer per leading index is made). DataError when W is not (C, C)."""
    c = kspace.shape[coil_axis]
    if W.shape != (c, c):
        raise DataError(f"kspace has {c} coils, the noise whitening matrix is for {W.shape[0]} channels")
    moved = np.moveaxis(kspace, coil_axis, -3)
    lead, rest = moved.shape[:-3], moved.shape[-2:]
    if out is None:
        out = np.empty_like(kspace)
    dst = np.moveaxis(out, coil_axis, -3)
    Wc = W.astype(kspace.dtype, copy=False)
    for idx in np.ndindex(*lead):
        src = moved[idx].reshape(c, -1)  # a view when the slice's coils are contiguous
        dst[idx] = (Wc @ src).reshape(c, *rest)
    return out


class NoiseSummary(NamedTuple):
    """What a log line or a metric needs of Psi: channels, the per-channel noise sd range and the
    largest correlation coefficient between two channels (0 for uncorrelated noise)."""

    channels: int
    samples: int
    sd_min: float
    sd_max: float
    max_correlation: float

    def __str__(self) -> str:
        return (f"{self.channels} channels, noise sd {self.sd_min:.3g}..{self.sd_max:.3g}, largest correlation "
                f"{self.max_correlation:.3f} ({self.samples} samples per channel)")


def summarize(psi: np.ndarray, samples: int) -> NoiseSummary:
    sd = np.sqrt(np.maximum(np.real(np.diag(psi)), 0.0))
    denom = np.outer(sd, sd)
    corr = np.abs(psi) / np.where(denom > 0, denom, 1.0)
    np.fill_diagonal(corr, 0.0)
    return NoiseSummary(len(sd), int(samples), float(sd.min()), float(sd.max()),
                        float(corr.max()) if len(sd) > 1 else 0.0)


class Whitener(NamedTuple):
    """A noise measurement turned into its prewhitening matrix W (C, C) and its summary."""

    matrix: np.ndarray
    summary: NoiseSummary

    @property
    def channels(self) -> int:
        return self.matrix.shape[0]


def whitener(noise, *, coils: int | None = None, where: str = "noise", scale: float = 1.0) -> Whitener:
    """Whitener from noise samples (C, N) or readouts [(C, n_i), ...]; coils: the channels the data will
    have (DataError naming `where` when C differs)."""
    parts = _parts(noise)
    c = noise_channels(parts, where)
    if coils is not None and c != coils:
        raise DataError(f"{where} has {c} channels, expected {coils} (the k-space coils)")
    psi = noise_covariance(parts, where)
    return Whitener(whitening_matrix(psi, f"{where} covariance", scale), summarize(psi, sum(p.shape[1] for p in parts)))


def read_noise_dataset(h5, where: str, coils: int) -> np.ndarray | None:
    """The optional `noise` dataset of a fastMRI-layout file (an open h5py.File): complex64 (C, N) noise
    samples of the same receiver as `kspace`, or None. DataError naming the file for another dtype or shape."""
    if "noise" not in h5:
        return None
    ds = h5["noise"]
    if ds.dtype != np.complex64 or ds.ndim != 2:
        raise DataError(f"noise in {where} is {ds.dtype} of shape {ds.shape}, expected complex64 (coils, samples)")
    if ds.shape[0] != coils:
        raise DataError(f"noise in {where} has {ds.shape[0]} channels, expected {coils} (kspace coils)")
    return ds[()]
