"""The SN's physics as matrix products along the phase-encode axis only, for the ONNX graph.

Cartesian masks act on phase-encode columns (W) and the readout (H) is fully sampled, so with the
centred orthonormal 2-D DFT F = F_H (x) F_W and the column mask M = I (x) diag(m):

    F^H M F = I (x) F_W^H diag(m) F_W,

the H transforms cancel. Data consistency on coil images is then one W x W product per row,
c -> c P with P = F_W diag(m) F_W^H (row-vector convention, the centred DFT matrices are symmetric),
instead of a forward and an inverse 2-D DFT per cascade. Only the input needs a transform along H,
and only the rows the model keeps (the readout-oversampling crop) are computed.

Per coil at 640x368 with a 2x crop and 6 cascades this is about 0.51 G complex multiply-adds
(input 0.08 G, three zero-filled images 0.13 G, six projections and the residual's 0.30 G) instead
of 1.53 G for the 2-D DFT matrices (`docs/architecture.md`). The operators are exact rewrites of the
k-space form in `training.models.sn`; `tests/models/test_columns.py` checks the two agree.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from training.physics.fft import centred_dft_matrix


class _RealPair(NamedTuple):
    re: Tensor
    im: Tensor


def _right(x: _RealPair, a: _RealPair) -> _RealPair:
    """x @ a for complex tensors held as real pairs (the exported graph stays real-valued)."""
    return _RealPair(x.re @ a.re - x.im @ a.im, x.re @ a.im + x.im @ a.re)


def _left(a: _RealPair, x: _RealPair) -> _RealPair:
    """a @ x for complex tensors held as real pairs."""
    return _RealPair(a.re @ x.re - a.im @ x.im, a.re @ x.im + a.im @ x.re)


def _complex(x: _RealPair) -> Tensor:
    return torch.complex(x.re, x.im)


def _scale_columns(x: _RealPair, weights: Tensor) -> _RealPair:
    """x (B, C, h, W) times a real column weight (B, W)."""
    w = weights[:, None, None, :]
    return _RealPair(x.re * w, x.im * w)


class ColumnDomain:
    """The input k-space of one batch brought to the model's grid along H, kept in k-space along W.

    kspace: complex (B, C, H, W); mask: float (B, W); oversampling f: the model keeps the central
    H // f image rows (as `SensitivityNetwork.crop_readout`). `rows` is then the (B, C, H // f, W)
    array that is image along H and k-space along W.
    """

    def __init__(self, kspace: Tensor, mask: Tensor, oversampling: int = 1):
        h_full, w = kspace.shape[-2], kspace.shape[-1]
        device = kspace.device
        x = _RealPair(kspace.real, kspace.imag)
        inv_h = _RealPair(*centred_dft_matrix(h_full, device, inverse=True))
        if oversampling != 1:
            h = h_full // oversampling
            top = (h_full - h) // 2
            inv_h = _RealPair(inv_h.re[top: top + h], inv_h.im[top: top + h])
        self.rows = _left(inv_h, x)
        self.fwd_w = _RealPair(*centred_dft_matrix(w, device))
        self.inv_w = _RealPair(*centred_dft_matrix(w, device, inverse=True))
        self.mask = mask.to(kspace.real.dtype)

    @functools.cached_property
    def zero_filled(self) -> Tensor:
        """Coil images (B, C, h, W) of the measured (masked) k-space."""
        return self.images(self.mask)

    def images(self, column_weight: Tensor) -> Tensor:
        """Coil images (B, C, h, W) of the k-space with its columns weighted (a mask: zero-filled)."""
        return _complex(_right(_scale_columns(self.rows, column_weight), self.inv_w))

    @functools.cached_property
    def projector(self) -> Tensor:
        """P = F_W diag(m) F_W^H as one real (B, 1, 2W, 2W) block matrix [[Re P, Im P], [-Im P, Re P]]:
        [Re c, Im c] @ it = [Re, Im] of c @ P = F^H M F c for coil images c on this grid (their
        measured part). One GEMM per cascade instead of four; built once per batch (W^3 per slice)."""
        m = self.mask[:, None, None, :]
        p = _right(_RealPair(self.fwd_w.re * m, self.fwd_w.im * m), self.inv_w)
        top = torch.cat([p.re, p.im], dim=-1)
        bottom = torch.cat([-p.im, p.re], dim=-1)
        return torch.cat([top, bottom], dim=-2)


def project(coil_images: Tensor, projector: Tensor) -> Tensor:
    """coil_images (B, C, h, W) @ P, with P from ColumnDomain.projector (one real matmul)."""
    w = coil_images.shape[-1]
    out = torch.cat([coil_images.real, coil_images.imag], dim=-1) @ projector
    return torch.complex(out[..., :w], out[..., w:])
