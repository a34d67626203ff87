"""Coil sensitivity maps from the autocalibration (ACS) lines, estimated inside the graph."""

from __future__ import annotations

import torch
from torch import Tensor

from training.physics.coil import rss
from training.physics.complex_ops import mul_real
from training.physics.fft import TORCH_FFT, FourierPair
from training.physics.sense import expand_mask


def acs_columns(mask: Tensor) -> Tensor:
    """The central contiguous run of sampled columns: float (B, W), 1 inside the run.

    Column j belongs to the run when no column between j and the centre W // 2 (both included) is
    missing. With Z the cumulative count of missing columns, that count is |Z[j] - Z[c]| plus the
    missing flag of the lower end. One cumsum, no cumprod or flip: both export to ONNX cleanly.
    Returns all zeros when the centre column itself is not sampled.
    """
    missing = 1.0 - mask
    z = torch.cumsum(missing, dim=1)
    cols = torch.arange(mask.shape[1], device=mask.device)
    c = mask.shape[1] // 2
    # Values at the centre column via a one-hot sum: slicing at a symbolic index trips torch.export.
    centre = (cols == c).to(mask.dtype)
    z_c = (z * centre).sum(dim=1, keepdim=True)
    miss_c = (missing * centre).sum(dim=1, keepdim=True)
    right = cols >= c
    between = torch.where(right, z - z_c + miss_c, z_c - z + missing)
    return (between < 0.5).to(mask.dtype)


def acs_maps(kspace: Tensor, mask: Tensor, fourier: FourierPair = TORCH_FFT, eps: float = 1e-6,
             support: float = 0.0) -> Tensor:
    """Sensitivity maps (B, C, H, W) complex, sum_c |S_c|^2 ~ 1 wherever the low-res images have signal.

    kspace: complex (B, C, H, W) (zero-filled); mask: float (B, W). Low-resolution coil images from the
    ACS columns only, divided by their RSS. eps is relative to each sample's largest RSS value so the maps
    do not depend on the k-space scale.
    """
    low_res = fourier.ifft(mul_real(kspace, expand_mask(acs_columns(mask)).to(kspace.real.dtype)))
    return maps_from_low_res(low_res, eps, support)


def maps_from_low_res(low_res: Tensor, eps: float = 1e-6, support: float = 0.0) -> Tensor:
    """The low-resolution coil images (B, C, H, W) divided by their RSS: acs_maps' second half.

    support > 0 tapers the maps towards zero where the low-resolution RSS falls below `support` times
    its peak (weight n^2 / (n^2 + (support peak)^2)): maps confined to the object, as ESPIRiT's crop."""
    norm = rss(low_res, dim=1)
    peak = torch.amax(norm, dim=(-2, -1), keepdim=True)
    weight = 1.0
    if support > 0:
        n2 = norm * norm
        weight = n2 / (n2 + (support * peak) ** 2 + torch.finfo(norm.dtype).tiny)
    norm = norm + eps * peak + torch.finfo(norm.dtype).tiny
    return mul_real(low_res, (weight / norm)[:, None])
