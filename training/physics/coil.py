"""Root-sum-of-squares coil combination."""

from __future__ import annotations

import torch
from torch import Tensor


def rss(x: Tensor, dim: int = 1) -> Tensor:
    """sqrt(sum |x|^2) over the coil dim; x complex or real, e.g. (B, C, H, W) -> (B, H, W)."""
    return torch.sqrt(torch.sum(x.real**2 + x.imag**2 if x.is_complex() else x**2, dim=dim))
