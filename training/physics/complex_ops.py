"""Complex-by-real products and complex unsqueeze, written so the dynamo ONNX exporter can lower them.

torch's onnx function library lowers complex tensors to a trailing real/imag axis, but its complex `mul`
assumes both operands complex and it has no complex `unsqueeze`. Doing these on real parts keeps one code
path for training (torch.fft) and export (matmul DFT); under export they work on the real view (re, im in
a last axis: the graph's own layout), where onnxruntime needs fewer passes over the data.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mul_real(x: Tensor, r: Tensor) -> Tensor:
    """x * r for complex x and real r (broadcasting)."""
    if torch.compiler.is_exporting():
        return mul_real_view(x, r)
    return torch.complex(x.real * r, x.imag * r)


def mul_real_view(x: Tensor, r: Tensor) -> Tensor:
    """mul_real on the real view, the exported graph's form: one Mul instead of a re/im split, two Muls and
    a concat (in eager torch the split form is as fast). r is repeated along re/im, as onnxruntime
    broadcasts a trailing axis of 1 element by element (10x slower)."""
    xr = torch.view_as_real(x)
    if r.dim() == x.dim() and all(isinstance(d, int) and d == 1 for d in r.shape[1:]):
        # one factor a sample: a (B, rest) product, which onnxruntime broadcasts over one long run
        return torch.view_as_complex((xr.reshape(xr.shape[0], -1) * r.reshape(r.shape[0], 1)).reshape(xr.shape))
    r = r.unsqueeze(-1) if r.dim() == 0 else torch.stack([r, r], dim=-1)
    return torch.view_as_complex(xr * r)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """x.unsqueeze(dim) for complex x."""
    return torch.view_as_complex(torch.view_as_real(x).unsqueeze(dim if dim >= 0 else dim - 1))
