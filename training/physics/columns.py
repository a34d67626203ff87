"""The SN's physics as 1-D transforms along the phase-encode axis, for the ONNX graph.

Cartesian masks act on phase-encode columns (W) and the readout (H) is fully sampled, so with the
centred orthonormal 2-D DFT F = F_H (x) F_W and the column mask M = I (x) diag(m):

    F^H M F = I (x) F_W^H diag(m) F_W,

the H transforms cancel. Data consistency on coil images is then the projector F_W^H diag(m) F_W along
W instead of a forward and an inverse 2-D transform per cascade. The projector has rank r, the sampled
columns, and is applied in its thin form `training.physics.fft.column_projection`: C U diag(m_S) U^H
with U = F_W[:, S], two products of r complex multiply-adds a point each (2 r = 184 at W = 368 and
4x, 92 at 8x). The input needs a transform along H, but only of the r sampled columns (the rest of the
zero-filled k-space is zero), and only of the rows the model keeps: `training.physics.fft.column_images`
gathers the columns, applies the inverse DFT's kept rows along H in one product, and brings each
weighted copy (mask, mask^2, ACS run) to W by a thin product. Neither op moves the data with a
Transpose, which onnxruntime runs on one thread; their products use every thread. The operators are
exact rewrites of the k-space form in `training.models.sn`; `tests/models/test_columns.py` checks the
two agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.physics.fft import column_images, column_projection


class ColumnDomain:
    """One batch's k-space and column mask, for the column-form operators on the model's grid.

    kspace: complex (B, C, H, W); mask: float (B, W); oversampling f: the model keeps the central
    H // f image rows (as `SensitivityNetwork.crop_readout`).
    """

    def __init__(self, kspace: Tensor, mask: Tensor, oversampling: int = 1):
        self.kspace = kspace
        self.mask = mask.to(kspace.real.dtype)
        self.oversampling = oversampling

    def images(self, *column_weights: Tensor) -> tuple[Tensor, ...]:
        """Coil images (B, C, h, W) of the k-space with its columns weighted, one for each column weight
        (B, W) (the mask: the zero-filled images), all from one gather of the sampled columns
        (`training.physics.fft.column_images`)."""
        weights = torch.stack([w.to(self.mask.dtype) for w in column_weights])
        out = column_images(torch.view_as_real(self.kspace), weights, self.oversampling)
        return tuple(torch.view_as_complex(o) for o in out.unbind(0))

    def rows_of(self, sel: Tensor) -> "ColumnDomain":
        """The samples `sel` (a (B,) bool mask) of this batch."""
        return ColumnDomain(self.kspace[sel], self.mask[sel], self.oversampling)

    def project(self, coil_images: Tensor) -> Tensor:
        """F^H M F c for coil images c (B, C, h, W) on this grid: their measured part."""
        return torch.view_as_complex(column_projection(torch.view_as_real(coil_images), self.mask))
