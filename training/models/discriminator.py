"""PatchGAN discriminator (Isola et al., pix2pix 2017) on 1-channel magnitude images, for SN-GAN's LSGAN loss."""

from __future__ import annotations

from torch import Tensor, nn

from training.models.downup import by_branch, with_constant_channels
from training.presets import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """(B, H, W) or (B, 1, H, W) magnitude -> (B, 1, h, w) realness scores, one per overlapping patch.

    4x4 convolutions: the first without normalisation, then `num_layers - 1` more strided ones with
    instance norm (features doubling up to 8x), one stride-1 layer, and a 1-channel stride-1 output (no
    sigmoid: LSGAN regresses the raw score to 1 for real, 0 for fake). Scale the real and fake images the
    same way before calling it. With `config.sampling_input` the first layer also sees `cond`, the
    sampled fraction of k-space columns per image (B,), as a constant channel.
    """

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        c = config.chans
        self.sampling_input = config.sampling_input
        layers: list[nn.Module] = [nn.Conv2d(1 + self.sampling_input, c, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        cin = c
        for i in range(1, config.num_layers + 1):
            cout = c * min(2**i, 8)
            stride = 2 if i < config.num_layers else 1
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1), nn.InstanceNorm2d(cout),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor, cond: Tensor | None = None) -> Tensor:
        if image.dim() == 3:
            image = image[:, None]
        if self.sampling_input:
            if cond is None or cond.numel() != image.shape[0]:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this critic sees the sampled fraction: expected cond of {image.shape[0]} "
                                 f"value(s), one per image, got {got}")
            image = with_constant_channels(image, cond.reshape(-1, 1))
        elif cond is not None:
            raise ValueError("this critic does not take the sampled fraction (DiscriminatorConfig.sampling_input "
                             "is false)")
        return self.net(image)


class BranchCritics(nn.Module):
    """One PatchDiscriminator per branch of an SN with accel_branches (DiscriminatorConfig.per_branch):
    forward(image, cond, branch) judges image i with critic branch[i] (SensitivityNetwork.branch_of),
    each critic on its own images only."""

    def __init__(self, config: DiscriminatorConfig, branches: int):
        super().__init__()
        self.sampling_input = config.sampling_input
        self.critics = nn.ModuleList(PatchDiscriminator(config) for _ in range(branches))

    def forward(self, image: Tensor, cond: Tensor | None = None, branch: Tensor | None = None) -> Tensor:
        if branch is None or branch.numel() != image.shape[0]:
            got = None if branch is None else tuple(branch.shape)
            raise ValueError(f"a critic per branch needs the branch of each image: expected {image.shape[0]} "
                             f"value(s), got {got}")
        return by_branch(branch, lambda b, rows: self.critics[b](
            image if rows is None else image[rows], cond if rows is None or cond is None else cond[rows]))
