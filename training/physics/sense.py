"""SENSE encoding operator A = M F S and its adjoint A^H = S^H F^H M."""

from __future__ import annotations

import torch
from torch import Tensor

from training.physics.complex_ops import mul_real, unsqueeze
from training.physics.fft import TORCH_FFT, FourierPair


def expand_mask(mask: Tensor) -> Tensor:
    """Column mask (B, W) -> (B, 1, 1, W), broadcastable over coils and readout of (B, C, H, W)."""
    return mask[:, None, None, :]


def coil_expand(x: Tensor, maps: Tensor) -> Tensor:
    """S x: image (B, H, W) -> coil images (B, C, H, W)."""
    return coil_expand_view(x, maps) if torch.compiler.is_exporting() else maps * unsqueeze(x, 1)


def coil_combine(coil_images: Tensor, maps: Tensor) -> Tensor:
    """S^H z: coil images (B, C, H, W) -> image (B, H, W), conjugate maps summed over coils."""
    if torch.compiler.is_exporting():
        return coil_combine_view(coil_images, maps)
    return (maps.conj() * coil_images).sum(dim=1)


# The exported graph's forms of the two, on the real view (re, im in a last axis). The exporter writes a
# complex product as re/im slices of both operands, four Muls, an Add, a Sub and a concat; these touch
# the coil-sized data about half as often. In eager torch the complex kernels are faster.
def _swapped(maps: Tensor) -> Tensor:
    """The real view of maps with re and im swapped, (mi, mr): identical nodes in every call, which
    onnxruntime merges into one. A product with [[0, 1], [1, 0]] (exact): onnxruntime runs it on every
    thread, where a flip (Slice with step -1) or a Gather copies one element at a time."""
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=maps.real.dtype, device=maps.device)
    return torch.view_as_real(maps) @ swap


def coil_expand_view(x: Tensor, maps: Tensor) -> Tensor:
    """coil_expand as (mr, mi) xr + (mi, mr) (-xi, xi): two products by image-sized factors."""
    v = torch.view_as_real(unsqueeze(x, 1))
    vr, vi = v[..., 0], v[..., 1]
    out = torch.view_as_real(maps) * torch.stack([vr, vr], -1) + _swapped(maps) * torch.stack([-vi, vi], -1)
    return torch.view_as_complex(out)


def coil_combine_view(coil_images: Tensor, maps: Tensor) -> Tensor:
    """coil_combine as re = sum mr zr + mi zi, im = sum mr zi - mi zr: sums over the coils, then re/im."""
    z = torch.view_as_real(coil_images)
    re = (torch.view_as_real(maps) * z).sum(dim=1).sum(dim=-1)
    im = (_swapped(maps) * z).sum(dim=1)
    return torch.complex(re, im[..., 1] - im[..., 0])


class SenseOp:
    """Multi-coil Cartesian SENSE operator.

    maps: complex (B, C, H, W) coil sensitivities; mask: float (B, W), 1 = acquired phase-encode column;
    fourier: the centred orthonormal FFT pair to use (TORCH_FFT in training, MATMUL_FFT in export).
    """

    def __init__(self, maps: Tensor, mask: Tensor, fourier: FourierPair = TORCH_FFT):
        self.maps = maps
        self.mask = expand_mask(mask).to(maps.real.dtype)
        self.fourier = fourier

    def forward(self, x: Tensor) -> Tensor:
        """Image (B, H, W) -> masked multi-coil k-space (B, C, H, W)."""
        return mul_real(self.fourier.fft(coil_expand(x, self.maps)), self.mask)

    def adjoint(self, y: Tensor) -> Tensor:
        """Multi-coil k-space (B, C, H, W) -> image (B, H, W)."""
        return coil_combine(self.fourier.ifft(mul_real(y, self.mask)), self.maps)

    def normal(self, x: Tensor) -> Tensor:
        """A^H A x, the operator of the SENSE normal equations."""
        return self.adjoint(self.forward(x))

    __call__ = forward


def relative_residual(residual: Tensor, measured: Tensor) -> Tensor:
    """||residual|| / ||measured|| per sample over (C, H, W), (B,). Squares of the real and imaginary
    parts, not abs(): the ONNX exporter has no complex abs."""
    num = (residual.real.square() + residual.imag.square()).sum(dim=(1, 2, 3))
    den = (measured.real.square() + measured.imag.square()).sum(dim=(1, 2, 3))
    return torch.sqrt(num / (den + torch.finfo(den.dtype).tiny))


def data_residual(image: Tensor, maps: Tensor, kspace: Tensor, mask: Tensor,
                  fourier: FourierPair = TORCH_FFT) -> Tensor:
    """||M F S x - M y|| / ||M y|| per sample, (B,): how far an image is from the measured k-space
    (y may be unmasked: it is masked here, as the SN masks its input)."""
    measured = mul_real(kspace, expand_mask(mask).to(kspace.real.dtype))
    return relative_residual(SenseOp(maps, mask, fourier).forward(image) - measured, measured)
