"""Down-Up network (Yu, Park, Jeong, "Deep iterative down-up CNN for image denoising", CVPRW 2019).

A head convolution, a chain of Down-Up blocks, a tail convolution, and a residual to the input. Each
Down-Up block goes down twice with strided convolutions (doubling the features each time), comes back up
with pixel shuffle, joins the skip connection of each scale, and adds its own input back.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    """Zero-pad the last two dims at the end up to a multiple; returns (padded, H, W) to crop back."""
    h, w = x.shape[-2], x.shape[-1]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple)), h, w


def sampled_fraction(mask: Tensor) -> Tensor:
    """The fraction of k-space columns sampled, (B, 1), from a (B, W) mask (0.25 at 4x): what a network
    conditioned on the acceleration is told (SNConfig.sampling_input, DiscriminatorConfig.sampling_input)."""
    return mask.mean(dim=-1, keepdim=True)


def by_branch(which: Tensor, run: Callable[[int, Tensor | None], Tensor]) -> Tensor:
    """Eager per-branch dispatch: `run(b, rows)` on the samples `rows` (a (B,) bool mask; None: all of
    them) of each branch b present in `which` (B,), the outputs put back in batch order."""
    found = [int(b) for b in torch.unique(which)]
    if len(found) == 1:
        return run(found[0], None)
    parts = {b: run(b, which == b) for b in found}
    first = next(iter(parts.values()))
    out = first.new_zeros((which.shape[0], *first.shape[1:]))
    for b, part in parts.items():
        out[which == b] = part
    return out


def with_constant_channels(x: Tensor, values: Tensor) -> Tensor:
    """`x` (B, C, H, W) with k per-sample scalars `values` (B, k) appended as k constant channels."""
    planes = values.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
    return torch.cat([x, planes], dim=1)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class _ConvAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(_conv(cin, cout, kernel, stride), nn.PReLU(cout))


class _Up(nn.Sequential):
    """Convolution to 4x the target features, then pixel shuffle: half the features, twice the size."""

    def __init__(self, cin: int):
        super().__init__(_conv(cin, 2 * cin, 1), nn.PixelShuffle(2))


class DownUpBlock(nn.Module):
    """One Down-Up block on `width` features; input height and width must be multiples of 4."""

    def __init__(self, width: int):
        super().__init__()
        w1, w2, w4 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(_ConvAct(w1, w1), _ConvAct(w1, w1))
        self.down1 = _ConvAct(w1, w2, stride=2)
        self.enc2 = nn.Sequential(_ConvAct(w2, w2), _ConvAct(w2, w2))
        self.down2 = _ConvAct(w2, w4, stride=2)
        self.bottom = nn.Sequential(_ConvAct(w4, w4), _ConvAct(w4, w4))
        self.up2 = _Up(w4)  # 4w -> 2w at scale 1/2
        self.fuse2 = _ConvAct(2 * w2, w2, kernel=1)
        self.dec2 = nn.Sequential(_ConvAct(w2, w2), _ConvAct(w2, w2))
        self.up1 = _Up(w2)  # 2w -> w at full scale
        self.fuse1 = _ConvAct(2 * w1, w1, kernel=1)
        self.dec1 = nn.Sequential(_ConvAct(w1, w1), _ConvAct(w1, w1))

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.enc1(x)
        s2 = self.enc2(self.down1(s1))
        b = self.bottom(self.down2(s2))
        d2 = self.dec2(self.fuse2(torch.cat([self.up2(b), s2], dim=1)))
        d1 = self.dec1(self.fuse1(torch.cat([self.up1(d2), s1], dim=1)))
        return x + d1


class DownUpNetwork(nn.Module):
    """(B, in_chans, H, W) -> (B, in_chans, H, W), any H and W (padded to a multiple of 4 inside).

    The output is the input plus a learned correction (residual). With `cond_chans` = k, forward also
    takes k per-sample scalars (B, k), seen by the head as k constant channels beside the input.
    """

    def __init__(self, in_chans: int = 2, width: int = 32, blocks: int = 2, cond_chans: int = 0):
        super().__init__()
        self.cond_chans = cond_chans
        self.head = _ConvAct(in_chans + cond_chans, width)
        self.blocks = nn.ModuleList(DownUpBlock(width) for _ in range(blocks))
        self.tail = _conv(width, in_chans)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if (cond is None) != (self.cond_chans == 0) or (cond is not None and cond.shape[-1] != self.cond_chans):
            raise ValueError(f"DownUpNetwork: expected {self.cond_chans} conditioning value(s) a sample, got "
                             f"{None if cond is None else tuple(cond.shape)}")
        inp = x if cond is None else with_constant_channels(x, cond)
        padded, h, w = pad_to_multiple(inp, 4)
        feats = self.head(padded)
        for block in self.blocks:
            feats = block(feats)
        return x + self.tail(feats)[..., :h, :w]
