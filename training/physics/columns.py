"""The SN's physics as 1-D transforms along the phase-encode axis, for the ONNX graph.

Cartesian masks act on phase-encode columns (W) and the readout (H) is fully sampled, so with the
centred orthonormal 2-D DFT F = F_H (x) F_W and the column mask M = I (x) diag(m):

    F^H M F = I (x) F_W^H diag(m) F_W,

the H transforms cancel. Data consistency on coil images is then a forward and an inverse transform
along W with the mask between them, instead of a forward and an inverse 2-D transform per cascade;
only the input needs a transform along H. Every transform is `training.physics.fft.centred_dft`
(factorised, about N1 + N2 complex multiply-adds a point). The projector F_W^H diag(m) F_W has rank
equal to the sampled columns r, so it could also be two thin W x r products (2 r a point, with the
columns gathered per slice); the factorised pair costs 2 (N1 + N2) a point: 78 at W = 368 against
2 r = 184 at 4x and 92 at 8x. On a narrow grid at 8x the thin form is cheaper (W = 110: 42 against
about 28), but there the projectors are about 5 % of the graph's count, so one form serves all sizes.
The operators are exact rewrites of the k-space form in
`training.models.sn`; `tests/models/test_columns.py` checks the two agree.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from training.physics.complex_ops import mul_real
from training.physics.fft import dft_last, dft_rows


def _scale_columns(x: Tensor, weights: Tensor) -> Tensor:
    """x (B, C, h, W) times a real column weight (B, W)."""
    return mul_real(x, weights[:, None, None, :])


class ColumnDomain:
    """The input k-space of one batch brought to the model's grid along H, kept in k-space along W.

    kspace: complex (B, C, H, W); mask: float (B, W); oversampling f: the model keeps the central
    H // f image rows (as `SensitivityNetwork.crop_readout`). `rows` is then the (B, C, H // f, W)
    array that is image along H and k-space along W.
    """

    def __init__(self, kspace: Tensor, mask: Tensor, oversampling: int = 1):
        rows = dft_rows(kspace, inverse=True)
        if oversampling != 1:
            # sizes and slices on the real view: the ONNX exporter has no complex sym_size or slice
            view = torch.view_as_real(rows)
            h_full = view.shape[-3]
            h = h_full // oversampling
            top = (h_full - h) // 2
            rows = torch.view_as_complex(view[..., top: top + h, :, :].contiguous())
        self.rows = rows
        self.mask = mask.to(kspace.real.dtype)

    @functools.cached_property
    def zero_filled(self) -> Tensor:
        """Coil images (B, C, h, W) of the measured (masked) k-space."""
        return self.images(self.mask)

    def images(self, column_weight: Tensor) -> Tensor:
        """Coil images (B, C, h, W) of the k-space with its columns weighted (a mask: zero-filled)."""
        return dft_last(_scale_columns(self.rows, column_weight), inverse=True)

    def rows_of(self, sel: Tensor) -> "ColumnDomain":
        """The samples `sel` (a (B,) bool mask) of this batch."""
        part = object.__new__(ColumnDomain)
        part.rows, part.mask = self.rows[sel], self.mask[sel]
        return part

    def project(self, coil_images: Tensor) -> Tensor:
        """F^H M F c for coil images c (B, C, h, W) on this grid: their measured part."""
        return dft_last(_scale_columns(dft_last(coil_images), self.mask), inverse=True)
