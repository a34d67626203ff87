"""Classical baselines: zero-filled root-sum-of-squares, Tikhonov-regularised CG-SENSE and compressed
sensing (l1-wavelet regularised SENSE on ESPIRiT maps, solved by sigpy)."""

from __future__ import annotations

import torch
import numpy as np
from torch import Tensor

from training.physics.coil import rss
from training.physics.complex_ops import mul_real
from training.physics.fft import TORCH_FFT, FourierPair
from training.physics.sense import SenseOp, expand_mask
from training.physics.sensitivity import acs_maps

# Defaults tuned on the synthetic set (docs/baselines.md): the operator norm of A^H A is 1 (RSS-normalised
# maps, orthonormal FFT, 0/1 mask), so lam is dimensionless and the solution scales linearly with the data.
CG_LAMBDA = 0.005
CG_ITERS = 20


def zero_filled_rss(kspace: Tensor, mask: Tensor, fourier: FourierPair = TORCH_FFT) -> Tensor:
    """kspace complex (B, C, H, W), mask float (B, W) -> RSS magnitude (B, H, W) of the masked data."""
    return rss(fourier.ifft(mul_real(kspace, expand_mask(mask).to(kspace.real.dtype))), dim=1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the per-sample inner product <a, b> over (H, W): (B,)."""
    return (a.conj() * b).real.sum(dim=(-2, -1))


def cg_sense(kspace: Tensor, mask: Tensor, lam: float = CG_LAMBDA, iters: int = CG_ITERS,
             fourier: FourierPair = TORCH_FFT, maps: Tensor | None = None) -> Tensor:
    """Regularised SENSE: argmin_x ||M F S x - y||^2 + lam ||x||^2 by conjugate gradients.

    kspace complex (B, C, H, W) (zero-filled), mask float (B, W) -> complex image (B, H, W). CG runs on
    the normal equations (A^H A + lam I) x = A^H y for every sample of the batch at once, from x = 0,
    for `iters` iterations (fewer iterations also regularise). Maps: ACS maps unless given.
    """
    mask = mask.to(kspace.real.dtype)
    if maps is None:
        maps = acs_maps(mul_real(kspace, expand_mask(mask)), mask, fourier)
    op = SenseOp(maps, mask, fourier)
    rhs = op.adjoint(kspace)
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    tiny = torch.finfo(rr.dtype).tiny
    for _ in range(iters):
        ap = op.normal(p) + lam * p
        step = rr / (_dot(p, ap) + tiny)
        x = x + step[:, None, None] * p
        r = r - step[:, None, None] * ap
        rr_new = _dot(r, r)
        p = r + (rr_new / (rr + tiny))[:, None, None] * p
        rr = rr_new
    return x


# Compressed sensing: chosen by experiments/cs_tuning.py on tuning data only (synthetic seed 100 and the
# outside sources' tuning items, never a reported volume; docs/baselines.md has the sweep); lam is
# relative to the peak of |S^H F^H M y|.
CS_LAMBDA = 0.003
CS_ITERS = 30
CS_WAVELET = "db4"
# ESPIRiT (Uecker et al. 2014) on the ACS lines: keeping kernels above 5 % (sigpy: 2 %) of the largest
# singular value keeps ~54 instead of ~74 on the demo's slices at the same CS PSNR on the tuning slices.
ESPIRIT_CALIB = 20
ESPIRIT_KERNEL = 5
ESPIRIT_THRESH = 0.05
ESPIRIT_POWER_ITERS = 30


def acs_columns_np(mask: np.ndarray) -> np.ndarray:
    """float (W,): 1 on the central contiguous run of sampled columns (training.physics.sensitivity's rule)."""
    mask = np.asarray(mask) > 0.5
    out = np.zeros(mask.shape, np.float32)
    c = mask.shape[0] // 2
    if not mask[c]:
        return out
    lo, hi = c, c
    while lo > 0 and mask[lo - 1]:
        lo -= 1
    while hi < mask.shape[0] - 1 and mask[hi + 1]:
        hi += 1
    out[lo:hi + 1] = 1.0
    return out


def espirit_maps(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ESPIRiT maps (C, H, W) complex64 from the ACS columns of one slice.

    kspace complex (C, H, W) zero-filled, mask float (W,). sigpy's `EspiritCalib` (one set of maps, no
    eigenvalue crop, so sum_c |S_c|^2 = 1 everywhere and ||A^H A|| <= 1).
    """
    import sigpy.mri as mr

    k = np.ascontiguousarray(kspace, dtype=np.complex64) * acs_columns_np(mask)[None, None, :]
    calib = min(ESPIRIT_CALIB, *k.shape[1:])
    return mr.app.EspiritCalib(k, calib_width=calib, kernel_width=min(ESPIRIT_KERNEL, calib), thresh=ESPIRIT_THRESH, crop=0.0,
                               max_iter=ESPIRIT_POWER_ITERS, show_pbar=False).run().astype(np.complex64)


def sense_adjoint_peak(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray) -> float:
    """max |S^H F^H M y| of one slice: the scale that makes CS_LAMBDA dimensionless."""
    from dnirecon.fftc import ifft2c

    coils = ifft2c(np.asarray(kspace, np.complex64) * np.asarray(mask, np.float32)[None, None, :])
    return float(np.abs(np.sum(np.conj(maps) * coils, axis=0)).max())


def cs_l1_wavelet(kspace, mask, lam: float = CS_LAMBDA, iters: int = CS_ITERS, maps=None,
                  wavelet: str = CS_WAVELET):
    """Compressed sensing: argmin_x 1/2 ||M F S x - y||^2 + lam * s * ||W x||_1 (sigpy's L1WaveletRecon).

    kspace complex (B, C, H, W) (zero-filled), mask float (B, W) -> complex image (B, H, W), torch in
    -> torch out, numpy in -> numpy out. S: ESPIRiT maps from the ACS lines unless `maps` (B, C, H, W) is
    given; W: an orthogonal wavelet (`wavelet`, pywt name); s = max |S^H F^H M y| per slice, so lam is
    relative to the image scale. FISTA from x = 0 with step 1 (||A^H A|| <= 1 for unit-RSS maps), `iters`
    iterations.
    """
    import sigpy.mri as mr

    as_torch = isinstance(kspace, Tensor)
    k_all = kspace.detach().cpu().numpy() if as_torch else np.asarray(kspace)
    m_all = (mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)).astype(np.float32)
    s_all = None if maps is None else (maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps))
    out = np.zeros((k_all.shape[0],) + k_all.shape[2:], np.complex64)
    for b in range(k_all.shape[0]):
        weights = np.broadcast_to(m_all[b][None, :], k_all.shape[2:]).astype(np.float32)
        k = k_all[b].astype(np.complex64) * weights[None]
        s = espirit_maps(k, m_all[b]) if s_all is None else s_all[b].astype(np.complex64)
        scale = sense_adjoint_peak(k, m_all[b], s)
        if not scale > 0:
            continue  # no signal: the zero image is the solution
        x = mr.app.L1WaveletRecon(k / scale, s, lam, weights=weights, wave_name=wavelet, max_iter=iters,
                                  alpha=1.0, show_pbar=False).run()
        out[b] = np.asarray(x, np.complex64) * scale
    return torch.from_numpy(out) if as_torch else out
