"""Complex-by-real products and complex unsqueeze, written so the dynamo ONNX exporter can lower them.

torch's onnx function library lowers complex tensors to a trailing real/imag axis, but its complex `mul`
assumes both operands complex and it has no complex `unsqueeze`. Doing these on the real and imaginary
parts keeps one code path for training (torch.fft) and export (matmul DFT).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mul_real(x: Tensor, r: Tensor) -> Tensor:
    """x * r for complex x and real r (broadcasting)."""
    return torch.complex(x.real * r, x.imag * r)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """x.unsqueeze(dim) for complex x."""
    return torch.complex(x.real.unsqueeze(dim), x.imag.unsqueeze(dim))
