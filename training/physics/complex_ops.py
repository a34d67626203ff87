"""Complex-by-real products and complex unsqueeze, written so the dynamo ONNX exporter can lower them.

torch's onnx function library lowers complex tensors to a trailing real/imag axis, but its complex `mul`
assumes both operands complex and it has no complex `unsqueeze`. Doing these on the real view (re, im in
a last axis: the graph's own layout) keeps one code path for training (torch.fft) and export (matmul DFT).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mul_real(x: Tensor, r: Tensor) -> Tensor:
    """x * r for complex x and real r (broadcasting)."""
    # on the real view: in the exported graph one Mul instead of a re/im split, two Muls and a concat; r
    # repeated along that axis, as onnxruntime broadcasts a trailing axis of 1 element by element (10x slower)
    r = r.unsqueeze(-1) if r.dim() == 0 else torch.stack([r, r], dim=-1)
    return torch.view_as_complex(torch.view_as_real(x) * r)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """x.unsqueeze(dim) for complex x."""
    return torch.view_as_complex(torch.view_as_real(x).unsqueeze(dim if dim >= 0 else dim - 1))
