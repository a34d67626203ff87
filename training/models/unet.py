"""fastMRI-style U-Net baseline on the zero-filled RSS magnitude (Zbontar et al., fastMRI 2018).

Convolution blocks (3x3 conv, instance norm, LeakyReLU 0.2, dropout; twice), average pooling down,
transposed convolutions up, skip connections by concatenation, a 1x1 convolution out. Instance
normalisation of the input image is inside the model and undone at the output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from training.baselines import zero_filled_rss
from training.models.downup import pad_to_multiple
from training.physics.fft import TORCH_FFT, FourierPair
from training.presets import UNetConfig


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, drop_prob: float):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout),
                       nn.LeakyReLU(0.2), nn.Dropout2d(drop_prob)]
        super().__init__(*layers)


class TransposeConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False), nn.InstanceNorm2d(cout),
                         nn.LeakyReLU(0.2))


class UNetCore(nn.Module):
    """(B, in_chans, H, W) -> (B, out_chans, H, W); H and W must be multiples of 2**num_pool_layers."""

    def __init__(self, in_chans: int = 1, out_chans: int = 1, chans: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0):
        super().__init__()
        widths = [chans * 2**i for i in range(num_pool_layers + 1)]
        self.down = nn.ModuleList([ConvBlock(in_chans, widths[0], drop_prob)])
        self.down.extend(ConvBlock(widths[i], widths[i + 1], drop_prob) for i in range(num_pool_layers))
        self.up_conv = nn.ModuleList(TransposeConvBlock(widths[i + 1], widths[i])
                                     for i in reversed(range(num_pool_layers)))
        self.up = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], drop_prob)
                                for i in reversed(range(num_pool_layers)))
        self.out = nn.Conv2d(widths[0], out_chans, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.avg_pool2d(x, 2)
        for up_conv, block in zip(self.up_conv, self.up):
            x = block(torch.cat([up_conv(x), skips.pop()], dim=1))
        return self.out(x)


class UNet(nn.Module):
    """forward(kspace complex (B, C, H, W), mask float (B, W)) -> magnitude (B, H, W), any H and W."""

    def __init__(self, config: UNetConfig, fourier: FourierPair = TORCH_FFT):
        super().__init__()
        self.config = config
        self.fourier = fourier
        self.net = UNetCore(1, 1, config.chans, config.num_pool_layers, config.drop_prob)

    def forward(self, kspace: Tensor, mask: Tensor) -> Tensor:
        image = zero_filled_rss(kspace, mask, self.fourier)[:, None]
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True) + 1e-11
        padded, h, w = pad_to_multiple((image - mean) / std, 2**self.config.num_pool_layers)
        out = self.net(padded)[..., :h, :w]
        return (out * std + mean)[:, 0]
