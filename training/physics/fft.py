"""Centred orthonormal FFTs in two interchangeable implementations.

`fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))` over the last two dims (the convention of
`dnirecon.fftc`).

- `TORCH_FFT`: torch.fft, for training.
- `MATMUL_FFT`: for the ONNX export. Every transform is `centred_dft`, a 1-D centred DFT along the last
  axis factorised as a Cooley-Tukey split N = N1 x N2 (an N1-point matrix product, a twiddle multiply,
  an N2-point matrix product, a transpose), about N1 + N2 complex multiply-adds per point instead of N
  for a dense DFT matrix. The shifts are folded into the three factors, so there is no roll at all.
  In the exported graph it is one ONNX function made of MatMul/Mul/Transpose/Reshape, with the split
  computed from the input's shape at run time (dynamic sizes; contract 3: no `DFT` node). A length with
  no divisor above 1 up to its square root (a prime) gets N1 = 1: the dense transform.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor


class FourierPair(NamedTuple):
    """A forward/inverse centred orthonormal 2-D FFT over the last two dims of a complex tensor.

    `column_domain`: a model built with this pair applies the column-mask operators as 1-D transforms
    along W (`training.physics.columns`) instead of 2-D transforms, as the matmul pair does.
    """

    fft: Callable[[Tensor], Tensor]
    ifft: Callable[[Tensor], Tensor]
    column_domain: bool = False


_DIMS = (-2, -1)


def _torch_fft2c(x: Tensor) -> Tensor:
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def _torch_ifft2c(x: Tensor) -> Tensor:
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.ifft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


TORCH_FFT = FourierPair(_torch_fft2c, _torch_ifft2c)


def split_length(n: int) -> tuple[int, int]:
    """The Cooley-Tukey split (N1, N2) of a transform length: N1 the largest divisor of n with
    N1^2 <= n (1 for a prime: the dense transform). The graph computes the same rule from its input's
    shape (`_centred_dft_onnx`)."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def _phase(a: Tensor, b: Tensor, n: int, sign: float) -> tuple[Tensor, Tensor]:
    """cos and sin of sign 2 pi (a_i b_j mod n) / n, (len(a), len(b)) float32. The product is reduced
    in int64 before the float conversion: at n = 640 a raw product reaches 1e5, where float32 would
    lose ~1e-4 rad of phase, far above the 1e-5 parity budget."""
    angle = torch.remainder(a[:, None] * b[None, :], n).to(torch.float32) * (sign * 2.0 * math.pi / n)
    return torch.cos(angle), torch.sin(angle)


def _split_factors(n: int, inverse: bool, device) -> tuple[int, int, tuple[Tensor, ...]]:
    """N1, N2 and the real/imaginary parts of G1 (N1, N1), twiddle (N1, N2) and G2 (N2, N2).

    With n = N2 n1 + n2, k = k1 + N1 k2 and c = n // 2, the centred phase (k - c)(n - c) / N is, up to
    integers, (k1 - c) n1 / N1 + (k1 - c)(n2 - c) / N + k2 (n2 - c) / N2: three factors, shifts inside.
    """
    n1, n2 = split_length(n)
    sign = 1.0 if inverse else -1.0
    c = n // 2
    i1 = torch.arange(n1, device=device, dtype=torch.int64)
    i2 = torch.arange(n2, device=device, dtype=torch.int64)
    g1 = _phase(i1 - c, i1, n1, sign)  # [k1, n1]
    tw = _phase(i1 - c, i2 - c, n, sign)  # [k1, n2]
    g2 = _phase(i2 - c, i2, n2, sign)  # [n2, k2]
    scale = 1.0 / math.sqrt(n)
    return n1, n2, (*g1, tw[0] * scale, tw[1] * scale, *g2)


def _centred_dft_eager(re: Tensor, im: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    shape = re.shape
    n1, n2, (g1r, g1i, twr, twi, g2r, g2i) = _split_factors(shape[-1], inverse, re.device)
    xr, xi = re.reshape(-1, n1, n2), im.reshape(-1, n1, n2)  # [n1, n2]
    tr, ti = g1r @ xr - g1i @ xi, g1r @ xi + g1i @ xr  # [k1, n2]
    ur, ui = tr * twr - ti * twi, tr * twi + ti * twr
    vr, vi = ur @ g2r - ui @ g2i, ur @ g2i + ui @ g2r  # [k1, k2]
    return vr.transpose(-1, -2).reshape(shape), vi.transpose(-1, -2).reshape(shape)  # k = k1 + N1 k2


@torch.library.custom_op("dnirecon::centred_dft", mutates_args=())
def centred_dft(re: Tensor, im: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """The centred orthonormal (inverse) DFT along the last axis of the complex tensor re + i im.

    A custom op so that the exporter keeps it whole and writes it as `_centred_dft_onnx`, whose split
    depends on the run-time length (torch.export cannot reshape by a size computed from a shape)."""
    return _centred_dft_eager(re, im, inverse)


@centred_dft.register_fake
def _(re: Tensor, im: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    return torch.empty_like(re), torch.empty_like(im)


def _register_flops() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.dnirecon.centred_dft)
    def _(re_shape, *args, **kwargs) -> int:
        n1, n2 = split_length(re_shape[-1])
        # the two complex products as the graph's MatMul nodes count them: 4 real ones, 2 FLOPs a
        # multiply-add (the twiddle's elementwise Mul/Add are left out, as for every other node)
        return 8 * math.prod(re_shape) * (n1 + n2)


_register_flops()


def _centred_dft_onnx(re, im, inverse: bool):
    """centred_dft as ONNX nodes (onnxscript, opset 18): the split is computed from the input's shape."""
    from onnxscript import opset18 as op

    sign = 1.0 if inverse else -1.0
    shape = op.Shape(re)
    one, zero = op.Constant(value_int=1), op.Constant(value_int=0)
    n = op.Squeeze(op.Shape(re, start=-1))
    divisors = op.Range(one, op.Add(n, one), one)
    fits = op.And(op.Equal(op.Mod(n, divisors), zero), op.LessOrEqual(op.Mul(divisors, divisors), n))
    n1 = op.ReduceMax(op.Where(fits, divisors, one), keepdims=0)
    n2 = op.Div(n, n1)
    c = op.Div(n, op.Constant(value_int=2))

    def phase(a, b, m):
        p = op.Cast(op.Mod(op.Mul(op.Unsqueeze(a, [1]), op.Unsqueeze(b, [0])), m), to=1)
        angle = op.Div(op.Mul(p, op.Constant(value_float=sign * 2.0 * math.pi)), op.Cast(m, to=1))
        return op.Cos(angle), op.Sin(angle)

    i1, i2 = op.Range(zero, n1, one), op.Range(zero, n2, one)
    g1r, g1i = phase(op.Sub(i1, c), i1, n1)
    twr, twi = phase(op.Sub(i1, c), op.Sub(i2, c), n)
    g2r, g2i = phase(op.Sub(i2, c), i2, n2)
    scale = op.Reciprocal(op.Sqrt(op.Cast(n, to=1)))
    twr, twi = op.Mul(twr, scale), op.Mul(twi, scale)
    split = op.Concat(op.Constant(value_ints=[-1]), op.Unsqueeze(n1, [0]), op.Unsqueeze(n2, [0]), axis=0)
    xr, xi = op.Reshape(re, split), op.Reshape(im, split)
    tr = op.Sub(op.MatMul(g1r, xr), op.MatMul(g1i, xi))
    ti = op.Add(op.MatMul(g1r, xi), op.MatMul(g1i, xr))
    ur = op.Sub(op.Mul(tr, twr), op.Mul(ti, twi))
    ui = op.Add(op.Mul(tr, twi), op.Mul(ti, twr))
    vr = op.Sub(op.MatMul(ur, g2r), op.MatMul(ui, g2i))
    vi = op.Add(op.MatMul(ur, g2i), op.MatMul(ui, g2r))
    return (op.Reshape(op.Transpose(vr, perm=[0, 2, 1]), shape),
            op.Reshape(op.Transpose(vi, perm=[0, 2, 1]), shape))


def onnx_translation_table() -> dict:
    """torch.onnx.export's custom_translation_table for the ops of this module."""
    return {torch.ops.dnirecon.centred_dft.default: _centred_dft_onnx}


def dft_last(x: Tensor, inverse: bool = False) -> Tensor:
    """Centred orthonormal (inverse) DFT of complex x along its last axis (`centred_dft`)."""
    re, im = centred_dft(x.real, x.imag, inverse)
    return torch.complex(re, im)


def dft_rows(x: Tensor, inverse: bool = False) -> Tensor:
    """The same along the second-to-last axis (the readout, H)."""
    re, im = centred_dft(x.real.transpose(-1, -2), x.imag.transpose(-1, -2), inverse)
    return torch.complex(re.transpose(-1, -2), im.transpose(-1, -2))


def _matmul_fft2c(x: Tensor) -> Tensor:
    return dft_rows(dft_last(x))


def _matmul_ifft2c(x: Tensor) -> Tensor:
    return dft_rows(dft_last(x, inverse=True), inverse=True)


MATMUL_FFT = FourierPair(_matmul_fft2c, _matmul_ifft2c, column_domain=True)
