"""Centred orthonormal FFTs in two interchangeable implementations, and the exported graph's transforms.

`fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))` over the last two dims (the convention of
`dnirecon.fftc`).

- `TORCH_FFT`: torch.fft, for training.
- `MATMUL_FFT`: exportable (no `DFT` node: contract 3). Its 2-D transforms are `centred_dft`, a 1-D
  centred DFT factorised as a Cooley-Tukey split N = N1 x N2, about N1 + N2 complex multiply-adds per
  point instead of N, on the real view (re, im in a last axis of 2: the graph's layout for complex
  values), where a complex product is one real matrix product with the matrix in its real form; the
  shifts are folded into the factors. A model built with `MATMUL_FFT` takes the column form
  (`column_domain`, `training.physics.columns`), which uses the two ops below instead.
- `column_images`: the SN's input stage, coil images of weighted k-space through the sampled columns
  only (one product along H with the kept rows, thin products along W), no Transpose.
- `column_projection`: the data-consistency projector F^H diag(m) F along the last axis as two thin
  products through the sampled columns (`training.physics.columns`), no Transpose.
Each is a torch custom op with its own ONNX translation (`onnx_translation_table`), whose sizes are
computed from the inputs at run time (dynamic shapes; r from the mask's values).
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
    """cos and sin of sign 2 pi (a_i b_j mod n) / n, (..., len(a), len(b)) float32 (leading dims of a and
    b broadcast). The product is reduced in int64 before the float conversion: at n = 640 a raw product
    reaches 1e5, where float32 would lose ~1e-4 rad of phase, far above the 1e-5 parity budget."""
    angle = torch.remainder(a[..., :, None] * b[..., None, :], n).to(torch.float32) * (sign * 2.0 * math.pi / n)
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


def _real_form(gr: Tensor, gi: Tensor) -> Tensor:
    """The complex matrices gr + i gi (..., n, k) as real (..., 2n, 2k) acting on interleaved re/im rows:
    (x @ G) for complex x (rows, n) is one real product (rows, 2n) @ R; R[2a+s, 2b+t] = [[gr, gi], [-gi, gr]][s][t]."""
    top, bottom = torch.stack([gr, gi], dim=-1), torch.stack([-gi, gr], dim=-1)  # (..., n, k, 2)
    r = torch.stack([top, bottom], dim=-3)  # (..., n, 2, k, 2)
    return r.reshape(*gr.shape[:-2], 2 * gr.shape[-2], 2 * gr.shape[-1])


def _stage_matrices(n: int, inverse: bool, device) -> tuple[int, int, Tensor, Tensor]:
    """N1, N2, the first stage R1 (2 N1, 2 N1) and the second stage with the twiddles folded in, one matrix
    per k1: R2 (N1, 2 N2, 2 N2) with G2'[k1][n2, k2] = tw[k1, n2] G2[n2, k2] (exact: a row scaling)."""
    n1, n2, (g1r, g1i, twr, twi, g2r, g2i) = _split_factors(n, inverse, device)
    r1 = _real_form(g1r.T, g1i.T)  # [n1, k1]
    twr, twi = twr[:, :, None], twi[:, :, None]
    r2 = _real_form(twr * g2r - twi * g2i, twr * g2i + twi * g2r)  # [k1][n2, k2]
    return n1, n2, r1, r2


def _centred_dft_eager(x: Tensor, inverse: bool) -> Tensor:
    shape = x.shape
    n1, n2, r1, r2 = _stage_matrices(shape[-2], inverse, x.device)
    y = x.reshape(-1, n1, n2, 2).transpose(1, 2).reshape(-1, 2 * n1) @ r1  # [m n2, k1 c]
    y = y.reshape(-1, n2, n1, 2).permute(2, 0, 1, 3).reshape(n1, -1, 2 * n2) @ r2  # [k1, m, k2 c]
    return y.reshape(n1, -1, n2, 2).permute(1, 2, 0, 3).reshape(shape)  # k = k1 + N1 k2


@torch.library.custom_op("dnirecon::centred_dft", mutates_args=())
def centred_dft(x: Tensor, inverse: bool) -> Tensor:
    """The centred orthonormal (inverse) DFT along the second-to-last axis of x (..., N, 2), the real
    view (re, im in the last axis) of a complex tensor: the layout the ONNX graph holds complex values in.

    A custom op so that the exporter keeps it whole and writes it as `_centred_dft_onnx`, whose split
    depends on the run-time length (torch.export cannot reshape by a size computed from a shape)."""
    return _centred_dft_eager(x, inverse)


@centred_dft.register_fake
def _(x: Tensor, inverse: bool) -> Tensor:
    return torch.empty_like(x)


def projection_rank(mask: Tensor) -> int:
    """r of the column projector for a batch of column weights (B, W): the most non-zero columns of any
    sample, at least 1 (the graph computes the same from its input: `_column_projection_onnx`)."""
    counts = (mask != 0).sum(dim=-1)
    return max(int(counts.max()) if counts.numel() else 0, 1)


def _column_factors(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The thin factors of F_W^H diag(m) F_W in row form, per sample of mask (B, W): U (B, 2W, 2r) and
    diag(m_S) U^H (B, 2r, 2W) in real form, U = F[:, S] with S the r largest |m| (padding columns
    of a sample with fewer than r carry m = 0). F is symmetric, so the second factor is F[S, :]^*."""
    w = mask.shape[-1]
    scale = 1.0 / math.sqrt(w)
    _, cols = torch.topk(mask.abs(), projection_rank(mask), dim=-1)  # [b, j]
    weight = torch.gather(mask, -1, cols)[..., None] * scale
    n = torch.arange(w, device=mask.device, dtype=torch.int64) - w // 2
    ur, ui = _phase(n, cols - w // 2, w, -1.0)  # [b, n, j]
    vr, vi = _phase(cols - w // 2, n, w, 1.0)  # [b, j, n]
    return _real_form(ur * scale, ui * scale), _real_form(vr * weight, vi * weight)


def _column_projection_eager(x: Tensor, mask: Tensor) -> Tensor:
    first, second = _column_factors(mask.to(x.dtype))
    rows = x.reshape(x.shape[0], -1, 2 * x.shape[-2])  # [b, C h, n c]: interleaved re/im along W
    return torch.matmul(torch.matmul(rows, first), second).reshape(x.shape)


@torch.library.custom_op("dnirecon::column_projection", mutates_args=())
def column_projection(x: Tensor, mask: Tensor) -> Tensor:
    """F_W^H diag(m) F_W along the last complex axis (W) of x (B, C, h, W, 2), the real view of complex
    coil images, with column weights mask (B, W) (one row per sample; binary in practice, any float is
    diag(m)). Exact, as two thin products through the r = `projection_rank(mask)` weighted columns:
    2 r complex multiply-adds a point and no transpose of the data.

    A custom op so that the exporter keeps it whole and writes it as `_column_projection_onnx`: r is
    read from the mask's values at run time."""
    return _column_projection_eager(x, mask)


@column_projection.register_fake
def _(x: Tensor, mask: Tensor) -> Tensor:
    return torch.empty_like(x)


def sampled_columns(weights: Tensor) -> Tensor:
    """The columns (int64, ascending) where any of the column weights (..., W) is non-zero: the union over
    the batch (the graph computes the same from its input: `_column_images_onnx`)."""
    return torch.nonzero(weights.abs().reshape(-1, weights.shape[-1]).amax(dim=0) > 0).flatten()


def _column_images_eager(x: Tensor, weights: Tensor, oversampling: int) -> Tensor:
    _check_column_images(x, weights)
    b, c, h_full, w = x.shape[:4]
    h = h_full // oversampling
    top = (h_full - h) // 2
    cols = sampled_columns(weights)
    sampled = torch.view_as_complex(x.index_select(3, cols).contiguous())  # [b, c, H, r]
    rows = torch.arange(top, top + h, device=x.device, dtype=torch.int64) - h_full // 2
    gr, gi = _phase(rows, torch.arange(h_full, device=x.device, dtype=torch.int64) - h_full // 2, h_full, 1.0)
    y = torch.complex(gr, gi) @ sampled / math.sqrt(h_full)  # [b, c, h, r]
    vr, vi = _phase(cols - w // 2, torch.arange(w, device=x.device, dtype=torch.int64) - w // 2, w, 1.0)
    weight = weights.index_select(-1, cols)[..., None] / math.sqrt(w)  # [k, b, r, 1]
    out = y.reshape(1, b, c * h, -1) @ torch.complex(vr * weight, vi * weight)  # [k, b, c h, w]
    return torch.view_as_real(out.reshape(weights.shape[0], b, c, h, w)).contiguous()


@torch.library.custom_op("dnirecon::column_images", mutates_args=())
def column_images(x: Tensor, weights: Tensor, oversampling: int) -> Tensor:
    """Coil images of multi-coil k-space x (B, C, H, W, 2) (the real view) with its columns weighted by
    each of K column weights (K, B, W): (K, B, C, H // oversampling, W, 2), the central H // oversampling
    rows of F^H diag(w_k) x for each k (a mask: the zero-filled images).

    Only the r sampled columns (`sampled_columns`: where any weight is non-zero, over the whole batch)
    take part: they are gathered first, transformed along H by one product with the inverse DFT's
    kept rows (h x H: the readout crop is free), then brought to W by one thin product per weight
    through those r columns, U diag(w_S) with U = F_W^H[:, S]. r / W of the data along H, no transpose.

    A custom op so that the exporter keeps it whole and writes it as `_column_images_onnx`: r is read
    from the weights' values at run time."""
    return _column_images_eager(x, weights, oversampling)


def _check_column_images(x: Tensor, weights: Tensor) -> None:
    torch._check(x.dim() == 5 and x.shape[-1] == 2, lambda: f"column_images: x must be (B, C, H, W, 2), got {tuple(x.shape)}")
    torch._check(weights.dim() == 3, lambda: f"column_images: weights must be (K, B, W), got {tuple(weights.shape)}")
    # also what ties the mask's sizes to the k-space's in the exported graph (B and W named once)
    torch._check(weights.shape[1] == x.shape[0], lambda: f"column_images: {weights.shape[1]} weight rows for {x.shape[0]} samples")
    torch._check(weights.shape[2] == x.shape[3], lambda: f"column_images: weights of width {weights.shape[2]} for k-space of width {x.shape[3]}")


@column_images.register_fake
def _(x: Tensor, weights: Tensor, oversampling: int) -> Tensor:
    _check_column_images(x, weights)
    b, c, h_full, w = x.shape[:4]
    return x.new_empty((weights.shape[0], b, c, h_full // oversampling, w, 2))


def _register_flops() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.dnirecon.centred_dft)
    def _(x_shape, *args, **kwargs) -> int:
        n1, n2 = split_length(x_shape[-2])
        # the two stages as the graph's MatMul nodes count them: real (2n x 2k) products on the
        # interleaved rows, 2 FLOPs a multiply-add: 8 (N1 + N2) a complex point
        return 4 * math.prod(x_shape) * (n1 + n2)

    # r depends on the mask's values, not its shape: the formula takes the raw tensors
    @register_flop_formula(torch.ops.dnirecon.column_projection, get_raw=True)
    def _(x: Tensor, mask: Tensor, *args, **kwargs) -> int:
        # the graph's two MatMuls, (2W x 2r) and (2r x 2W) real products on the interleaved rows:
        # 16 r FLOPs a complex point
        return 8 * x.numel() * projection_rank(mask)

    @register_flop_formula(torch.ops.dnirecon.column_images, get_raw=True)
    def _(x: Tensor, weights: Tensor, oversampling: int, *args, **kwargs) -> int:
        # the graph's two MatMuls on real forms: (h x 2H) @ (2H x 2r) per coil image along H, then
        # (C h x 2r) @ (2r x 2W) per sample and weight
        b, c, h_full, w = x.shape[:4]
        h, r = h_full // oversampling, int(sampled_columns(weights).numel())
        return 8 * b * c * h * h_full * r + 8 * weights.shape[0] * b * c * h * r * w


_register_flops()


def _phase_onnx(prod, m, sign: float):
    """`_phase` as ONNX nodes: cos and sin of sign 2 pi (prod mod m) / m for an int64 product tensor prod
    and a scalar int64 m, the product reduced before the float cast as `_phase` does."""
    from onnxscript import opset18 as op

    p = op.Cast(op.Mod(prod, m), to=1)
    angle = op.Div(op.Mul(p, op.Constant(value_float=sign * 2.0 * math.pi)), op.Cast(m, to=1))
    return op.Cos(angle), op.Sin(angle)


def _real_form_onnx(gr, gi, rows, cols, lead):
    """`_real_form` as ONNX nodes: (lead..., rows, cols) complex -> (lead..., 2 rows, 2 cols) real; rows and
    cols scalar int64, lead a list of 1-element int64 shapes."""
    from onnxscript import opset18 as op

    two = op.Constant(value_int=2)
    top = op.Concat(op.Unsqueeze(gr, [-1]), op.Unsqueeze(gi, [-1]), axis=-1)
    bottom = op.Concat(op.Unsqueeze(op.Neg(gi), [-1]), op.Unsqueeze(gr, [-1]), axis=-1)
    r = op.Concat(op.Unsqueeze(top, [-3]), op.Unsqueeze(bottom, [-3]), axis=-3)
    return op.Reshape(r, op.Concat(*lead, op.Unsqueeze(op.Mul(rows, two), [0]),
                                   op.Unsqueeze(op.Mul(cols, two), [0]), axis=0))


def _centred_dft_onnx(x, inverse: bool):
    """centred_dft as ONNX nodes (onnxscript, opset 18): the split is computed from the input's shape.
    Three real MatMul-friendly layouts, two products (each one large GEMM or a batch of N1 large ones)."""
    from onnxscript import opset18 as op

    sign = 1.0 if inverse else -1.0
    shape = op.Shape(x)
    one, zero, two = op.Constant(value_int=1), op.Constant(value_int=0), op.Constant(value_int=2)
    minus_one = op.Constant(value_ints=[-1])
    n = op.Squeeze(op.Shape(x, start=-2, end=-1))
    divisors = op.Range(one, op.Add(n, one), one)
    fits = op.And(op.Equal(op.Mod(n, divisors), zero), op.LessOrEqual(op.Mul(divisors, divisors), n))
    n1 = op.ReduceMax(op.Where(fits, divisors, one), keepdims=0)
    n2 = op.Div(n, n1)
    c = op.Div(n, two)

    def phase(a, b, m):
        return _phase_onnx(op.Mul(op.Unsqueeze(a, [1]), op.Unsqueeze(b, [0])), m, sign)

    i1, i2 = op.Range(zero, n1, one), op.Range(zero, n2, one)
    g1r, g1i = phase(i1, op.Sub(i1, c), n1)  # [n1, k1]: the product is symmetric, no transpose
    twr, twi = phase(op.Sub(i1, c), op.Sub(i2, c), n)  # [k1, n2]
    g2r, g2i = phase(op.Sub(i2, c), i2, n2)  # [n2, k2]
    scale = op.Reciprocal(op.Sqrt(op.Cast(n, to=1)))
    twr, twi = op.Unsqueeze(op.Mul(twr, scale), [2]), op.Unsqueeze(op.Mul(twi, scale), [2])
    r1 = _real_form_onnx(g1r, g1i, n1, n1, [])
    r2 = _real_form_onnx(op.Sub(op.Mul(twr, g2r), op.Mul(twi, g2i)), op.Add(op.Mul(twr, g2i), op.Mul(twi, g2r)),
                         n2, n2, [op.Unsqueeze(n1, [0])])
    s1, s2 = op.Unsqueeze(n1, [0]), op.Unsqueeze(n2, [0])
    pair = op.Constant(value_ints=[2])
    y = op.Transpose(op.Reshape(x, op.Concat(minus_one, s1, s2, pair, axis=0)), perm=[0, 2, 1, 3])
    y = op.MatMul(op.Reshape(y, op.Concat(minus_one, op.Mul(s1, two), axis=0)), r1)  # [m n2, k1 c]
    y = op.Transpose(op.Reshape(y, op.Concat(minus_one, s2, s1, pair, axis=0)), perm=[2, 0, 1, 3])
    y = op.MatMul(op.Reshape(y, op.Concat(s1, minus_one, op.Mul(s2, two), axis=0)), r2)  # [k1, m, k2 c]
    y = op.Transpose(op.Reshape(y, op.Concat(s1, minus_one, s2, pair, axis=0)), perm=[1, 2, 0, 3])
    return op.Reshape(y, shape)


def _column_projection_onnx(x, mask):
    """column_projection as ONNX nodes (onnxscript, opset 18): r, the columns (TopK) and the DFT entries
    are computed from the inputs at run time; Reshape, two batched MatMuls, no Transpose of the data."""
    from onnxscript import opset18 as op

    float32, int64 = 1, 7
    zero, one, two = op.Constant(value_int=0), op.Constant(value_int=1), op.Constant(value_int=2)
    shape = op.Shape(x)
    b, w1 = op.Shape(mask, start=0, end=1), op.Shape(mask, start=1, end=2)
    w = op.Squeeze(w1)
    counts = op.ReduceSum(op.Cast(op.Not(op.Equal(mask, op.Constant(value_float=0.0))), to=int64),
                          op.Constant(value_ints=[-1]), keepdims=0)
    r1 = op.Max(op.ReduceMax(counts, keepdims=1), op.Constant(value_ints=[1]))  # (1,): K of TopK
    _, cols = op.TopK(op.Abs(mask), r1, axis=-1)  # [b, j]
    weight = op.Unsqueeze(op.GatherElements(mask, cols, axis=1), [2])
    c = op.Div(w, two)
    n = op.Sub(op.Range(zero, w, one), c)
    s = op.Sub(cols, c)
    scale = op.Reciprocal(op.Sqrt(op.Cast(w, to=float32)))

    ur, ui = _phase_onnx(op.Mul(op.Unsqueeze(n, [1]), op.Unsqueeze(s, [1])), w, -1.0)  # [b, n, j]
    vr, vi = _phase_onnx(op.Mul(op.Unsqueeze(s, [2]), op.Unsqueeze(n, [0])), w, 1.0)  # [b, j, n]
    weight = op.Mul(weight, scale)
    r = op.Squeeze(r1)
    first = _real_form_onnx(op.Mul(ur, scale), op.Mul(ui, scale), w, r, [b])
    second = _real_form_onnx(op.Mul(vr, weight), op.Mul(vi, weight), r, w, [b])
    rows = op.Reshape(x, op.Concat(b, op.Constant(value_ints=[-1]), op.Mul(w1, two), axis=0))
    return op.Reshape(op.MatMul(op.MatMul(rows, first), second), shape)


def _column_images_onnx(x, weights, oversampling: int):
    """column_images as ONNX nodes (onnxscript, opset 18). The sampled columns (NonZero) are gathered
    twice from the interleaved rows, as (re, im) and as (-im, re), so that the complex product along H is
    one real MatMul with the inverse DFT's kept rows interleaved (re, im) along its columns; the thin
    products along W as in `_column_projection_onnx`. Gather, Mul, two MatMuls, Reshapes: no Transpose."""
    from onnxscript import opset18 as op

    float32 = 1
    zero, one, two = op.Constant(value_int=0), op.Constant(value_int=1), op.Constant(value_int=2)
    minus_one = op.Constant(value_ints=[-1])
    b1, c1 = op.Shape(x, start=0, end=1), op.Shape(x, start=1, end=2)
    hf1, w1, k1 = op.Shape(x, start=2, end=3), op.Shape(x, start=3, end=4), op.Shape(weights, start=0, end=1)
    hf, w = op.Squeeze(hf1), op.Squeeze(w1)
    h = op.Div(hf, op.Constant(value_int=oversampling))
    top = op.Div(op.Sub(hf, h), two)
    score = op.ReduceMax(op.Abs(weights), op.Constant(value_ints=[0, 1]), keepdims=0)
    cols = op.Reshape(op.NonZero(op.Greater(score, op.Constant(value_float=0.0))), minus_one)  # [r]
    r1 = op.Shape(cols)

    # [2, 2r]: (2s, 2s + 1) and (2s + 1, 2s) for each sampled column s, the second row's re slot negated
    even = op.Unsqueeze(op.Mul(cols, two), [1])
    odd = op.Add(even, one)
    index = op.Concat(op.Reshape(op.Concat(even, odd, axis=1), [1, -1]),
                      op.Reshape(op.Concat(odd, even, axis=1), [1, -1]), axis=0)
    pattern = op.Constant(value_floats=[1.0, 1.0, -1.0, 1.0])
    sign = op.Tile(op.Reshape(pattern, [2, 2]), op.Concat(op.Constant(value_ints=[1]), r1, axis=0))
    flat = op.Reshape(x, op.Concat(b1, c1, hf1, op.Mul(w1, two), axis=0))
    sampled = op.Mul(op.Gather(flat, index, axis=3), sign)  # [b, c, H, 2, 2r]
    sampled = op.Reshape(sampled, op.Concat(b1, c1, op.Mul(hf1, two), op.Mul(r1, two), axis=0))

    c = op.Div(hf, two)
    gr, gi = _phase_onnx(op.Mul(op.Unsqueeze(op.Sub(op.Range(top, op.Add(top, h), one), c), [1]),
                                op.Unsqueeze(op.Sub(op.Range(zero, hf, one), c), [0])), hf, 1.0)  # [h, H]
    along_h = op.Reshape(op.Concat(op.Unsqueeze(gr, [-1]), op.Unsqueeze(gi, [-1]), axis=-1),
                         op.Concat(op.Unsqueeze(h, [0]), op.Mul(hf1, two), axis=0))
    along_h = op.Mul(along_h, op.Reciprocal(op.Sqrt(op.Cast(hf, to=float32))))
    y = op.MatMul(along_h, sampled)  # [b, c, h, 2r]

    cw = op.Div(w, two)
    vr, vi = _phase_onnx(op.Mul(op.Unsqueeze(op.Sub(cols, cw), [1]), op.Unsqueeze(op.Sub(op.Range(zero, w, one), cw), [0])),
                         w, 1.0)  # [r, W]
    weight = op.Unsqueeze(op.Gather(weights, cols, axis=2), [3])  # [k, b, r, 1]
    weight = op.Mul(weight, op.Reciprocal(op.Sqrt(op.Cast(w, to=float32))))
    second = _real_form_onnx(op.Mul(vr, weight), op.Mul(vi, weight), op.Squeeze(r1), w, [k1, b1])
    rows = op.Reshape(y, op.Concat(op.Constant(value_ints=[1]), b1, minus_one, op.Mul(r1, two), axis=0))
    out = op.MatMul(rows, second)  # [k, b, c h, 2W]
    return op.Reshape(out, op.Concat(k1, b1, c1, op.Unsqueeze(h, [0]), w1, op.Constant(value_ints=[2]), axis=0))


def onnx_translation_table() -> dict:
    """torch.onnx.export's custom_translation_table for the ops of this module."""
    return {torch.ops.dnirecon.centred_dft.default: _centred_dft_onnx,
            torch.ops.dnirecon.column_projection.default: _column_projection_onnx,
            torch.ops.dnirecon.column_images.default: _column_images_onnx}


def dft_last(x: Tensor, inverse: bool = False) -> Tensor:
    """Centred orthonormal (inverse) DFT of complex x along its last axis (`centred_dft`)."""
    return torch.view_as_complex(centred_dft(torch.view_as_real(x), inverse))


def dft_rows(x: Tensor, inverse: bool = False) -> Tensor:
    """The same along the second-to-last axis (the readout, H)."""
    return dft_last(x.transpose(-1, -2), inverse).transpose(-1, -2)


def _matmul_fft2c(x: Tensor) -> Tensor:
    return dft_rows(dft_last(x))


def _matmul_ifft2c(x: Tensor) -> Tensor:
    return dft_rows(dft_last(x, inverse=True), inverse=True)


MATMUL_FFT = FourierPair(_matmul_fft2c, _matmul_ifft2c, column_domain=True)
