"""PatchGAN discriminator (Isola et al., pix2pix 2017) on 1-channel magnitude images, for SN-GAN's LSGAN loss."""

from __future__ import annotations

from torch import Tensor, nn

from training.presets import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """(B, H, W) or (B, 1, H, W) magnitude -> (B, 1, h, w) realness scores, one per overlapping patch.

    4x4 convolutions: the first without normalisation, then `num_layers - 1` more strided ones with
    instance norm (features doubling up to 8x), one stride-1 layer, and a 1-channel stride-1 output (no
    sigmoid: LSGAN regresses the raw score to 1 for real, 0 for fake). Scale the real and fake images the
    same way before calling it.
    """

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        c = config.chans
        layers: list[nn.Module] = [nn.Conv2d(1, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        cin = c
        for i in range(1, config.num_layers + 1):
            cout = c * min(2**i, 8)
            stride = 2 if i < config.num_layers else 1
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1), nn.InstanceNorm2d(cout),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() == 3:
            image = image[:, None]
        return self.net(image)
