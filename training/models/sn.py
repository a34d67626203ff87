"""Sensitivity network (SN): an unrolled Deep-POCSENSE with Down-Up networks (Qin et al., ISMRM 2020).

Each cascade refines the sensitivity-weighted coil-combined complex image with a Down-Up network
(2 real channels in and out), then enforces data consistency coil-wise in k-space with a learned weight.
Sensitivity maps come from the ACS lines and the input normalisation is undone at the output, both inside
the model, so the same module is the whole reconstruction (training, export, serving). The FFT is
injected: TORCH_FFT for training, MATMUL_FFT for the ONNX export, with the same weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.models.downup import DownUpNetwork
from training.physics.complex_ops import mul_real
from training.physics.dc import DataConsistency
from training.physics.fft import TORCH_FFT, FourierPair
from training.physics.sense import coil_combine, coil_expand, expand_mask
from training.physics.sensitivity import acs_maps
from training.presets import SNConfig


def complex_to_channels(x: Tensor) -> Tensor:
    """Complex (B, H, W) -> real (B, 2, H, W)."""
    return torch.stack([x.real, x.imag], dim=1)


def channels_to_complex(x: Tensor) -> Tensor:
    """Real (B, 2, H, W) -> complex (B, H, W)."""
    return torch.complex(x[:, 0], x[:, 1])


class SensitivityNetwork(nn.Module):
    """forward(kspace complex (B, C, H, W), mask float (B, W)) -> complex image (B, H, W).

    `kspace` is the zero-filled multi-coil k-space (it is masked again inside, so unmasked input is
    fine); any B, C, H, W (odd sizes too).
    """

    def __init__(self, config: SNConfig, fourier: FourierPair = TORCH_FFT):
        super().__init__()
        self.config = config
        self.fourier = fourier
        self.cascades = nn.ModuleList(
            DownUpNetwork(in_chans=2, width=config.width, blocks=config.blocks) for _ in range(config.cascades)
        )
        self.dc = nn.ModuleList(DataConsistency(config.dc_weight_init) for _ in range(config.cascades))

    def forward(self, kspace: Tensor, mask: Tensor) -> Tensor:
        return self.reconstruct(kspace, mask)[0]

    def reconstruct(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(image complex (B, H, W), ACS maps complex (B, C, H, W)) for the same inputs as forward."""
        fft, ifft = self.fourier
        mask = mask.to(kspace.real.dtype)
        measured = mul_real(kspace, expand_mask(mask))
        maps = acs_maps(measured, mask, self.fourier)
        x = coil_combine(ifft(measured), maps)
        # Per-sample scale: RMS of the zero-filled SENSE image, so the network sees unit-level inputs.
        scale = torch.sqrt(torch.mean(x.real**2 + x.imag**2, dim=(-2, -1), keepdim=True))
        inv_scale = 1.0 / (scale + torch.finfo(scale.dtype).tiny)
        x = mul_real(x, inv_scale)
        measured = mul_real(measured, inv_scale[:, None])
        for denoise, dc in zip(self.cascades, self.dc):
            x = channels_to_complex(denoise(complex_to_channels(x)))
            k = dc(fft(coil_expand(x, maps)), measured, mask)
            x = coil_combine(ifft(k), maps)
        return mul_real(x, scale), maps
