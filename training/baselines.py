"""Classical baselines: zero-filled root-sum-of-squares and Tikhonov-regularised CG-SENSE."""

from __future__ import annotations

import torch
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
