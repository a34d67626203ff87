"""Coil-wise data consistency in k-space with a learned weight (Deep-POCSENSE's DC layer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.physics.complex_ops import mul_real
from training.physics.sense import expand_mask


class DataConsistency(nn.Module):
    """k = k_pred + w * M (y - k_pred), w = clamp(weight, 0, 1).

    w = 1 replaces the sampled k-space by the measured one (hard DC), w = 0 leaves the prediction.
    The weight is clamped at use rather than reparametrised so that the stored parameter is the weight
    itself: interpolating two models' state_dicts then interpolates the DC weights linearly.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(weight)))

    def forward(self, k_pred: Tensor, k_measured: Tensor, mask: Tensor) -> Tensor:
        """k_pred, k_measured: complex (B, C, H, W); mask: float (B, W)."""
        w = torch.clamp(self.weight, 0.0, 1.0)
        return k_pred + mul_real(k_measured - k_pred, w * expand_mask(mask))

    def on_coil_images(self, coil_images: Tensor, measured: Tensor, projected: Tensor) -> Tensor:
        """The same step on coil images: c + w (F^H M y - F^H M F c), given F^H M y (`measured`) and
        F^H M F c (`projected`), all complex (B, C, H, W); see training.physics.columns."""
        w = torch.clamp(self.weight, 0.0, 1.0)
        return coil_images + mul_real(measured - projected, w)
