"""The SN's physics as 1-D transforms along the phase-encode axis, for the ONNX graph.

Cartesian masks act on phase-encode columns (W) and the readout (H) is fully sampled, so with the
centred orthonormal 2-D DFT F = F_H (x) F_W and the column mask M = I (x) diag(m):

    F^H M F = I (x) F_W^H diag(m) F_W,

the H transforms cancel. Data consistency on coil images is then the projector F_W^H diag(m) F_W along
W instead of a forward and an inverse 2-D transform per cascade; only the input needs a transform
along H (`training.physics.fft.centred_dft`, factorised). The projector has rank r, the sampled
columns, and is applied in its thin form `training.physics.fft.column_projection`: C U diag(m_S) U^H
with U = F_W[:, S], two products of r complex multiply-adds a point each (2 r = 184 at W = 368 and
4x, 92 at 8x). A factorised transform pair costs fewer FLOPs at wide grids (2 (N1 + N2) = 78 at W = 368), but
each of its transforms moves the data with three Transposes, which onnxruntime runs on one thread;
the thin form has none, only two batched matrix products that use every thread. The operators are
exact rewrites of the k-space form in `training.models.sn`; `tests/models/test_columns.py` checks the
two agree.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from training.physics.complex_ops import mul_real
from training.physics.fft import column_projection, dft_last, dft_rows


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
        return torch.view_as_complex(column_projection(torch.view_as_real(coil_images), self.mask))
