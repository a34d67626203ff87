"""Sensitivity network (SN): an unrolled Deep-POCSENSE with Down-Up networks (Qin et al., ISMRM 2020).

Each cascade refines the sensitivity-weighted coil-combined complex image with a Down-Up network
(2 real channels in and out), then enforces data consistency coil-wise in k-space with a learned weight.
Sensitivity maps come from the ACS lines and the input normalisation is undone at the output, both inside
the model, so the same module is the whole reconstruction (training, export, serving). The FFT is
injected: TORCH_FFT for training, MATMUL_FFT for the ONNX export, with the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.downup import DownUpNetwork, by_branch, nearest_accel, sampled_fraction
from training.physics.columns import ColumnDomain, project
from training.physics.complex_ops import mul_real
from training.physics.dc import DataConsistency
from training.physics.fft import TORCH_FFT, FourierPair
from training.physics.sense import coil_combine, coil_expand, data_residual, expand_mask, relative_residual
from training.physics.sensitivity import acs_columns, acs_maps, maps_from_low_res
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
        cond = 1 if config.sampling_input else 0
        # with accel_branches, branch b owns cascades[b * n: (b + 1) * n] and dc[...] (n = config.cascades),
        # so a one-branch SN keeps the keys it always had
        sets = max(len(config.accel_branches), 1)
        self.cascades = nn.ModuleList(
            DownUpNetwork(in_chans=2, width=config.width, blocks=config.blocks, cond_chans=cond,
                          film=config.sampling_film)
            for _ in range(config.cascades * sets)
        )
        self.dc = nn.ModuleList(DataConsistency(config.dc_weight_init) for _ in range(config.cascades * sets))

    def forward(self, kspace: Tensor, mask: Tensor) -> Tensor:
        """Complex image (B, H, W) on the input's grid (zero rows outside a removed readout oversampling)."""
        return self.pad_readout(self.reconstruct(kspace, mask)[0], kspace.shape[-2])

    def crop_readout(self, kspace: Tensor) -> Tensor:
        """k-space on the model's grid: with `readout_oversampling` f > 1, the central H // f rows of the
        coil images, transformed back. The readout (H) is fully sampled and the mask acts on columns only,
        so this is exact wherever the object lies inside the central field of view, as the oversampling
        is there for; it divides every later FFT and convolution by f."""
        f = self.config.readout_oversampling
        if f == 1:
            return kspace
        fft, ifft = self.fourier.fft, self.fourier.ifft
        images = ifft(kspace)
        # sizes and slices on the real parts: the ONNX exporter has no complex sym_size or slice
        re, im = images.real, images.imag
        h_full = re.shape[-2]
        h = h_full // f
        top = (h_full - h) // 2
        return fft(torch.complex(re[..., top: top + h, :], im[..., top: top + h, :]))

    def pad_readout(self, image: Tensor, height) -> Tensor:
        """An image (B, h, W) on the model's grid back on the input's `height` rows (zeros outside)."""
        if self.config.readout_oversampling == 1:
            return image
        if image.is_complex():
            return torch.complex(self.pad_readout(image.real, height), self.pad_readout(image.imag, height))
        top = (height - image.shape[-2]) // 2
        return F.pad(image, (0, 0, top, height - image.shape[-2] - top))

    def reconstruct(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(image complex (B, h, W), ACS maps complex (B, C, h, W)) on the model's grid (h = H with no
        readout oversampling removed, else H // readout_oversampling; see crop_readout)."""
        if self.fourier.column_domain:
            x, maps, _ = self._reconstruct_columns(kspace, mask)
            return x, maps
        return self.reconstruct_on_grid(self.crop_readout(kspace), mask)

    def reconstruct_with_residual(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(image complex (B, h, W) on the model's grid, data residual ||M F S x - M y|| / ||M y|| (B,)),
        the residual of the k-space the model was consistent with (after crop_readout)."""
        if self.fourier.column_domain:  # Parseval: the same norms taken on coil images
            x, maps, domain = self._reconstruct_columns(kspace, mask)
            measured = domain.zero_filled
            return x, relative_residual(project(coil_expand(x, maps), domain.projector) - measured, measured)
        y = self.crop_readout(kspace)
        x, maps = self.reconstruct_on_grid(y, mask)
        return x, data_residual(x, maps, y, mask, self.fourier)

    def reconstruct_on_grid(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """reconstruct() for k-space already on the model's grid (crop_readout applied)."""
        fft, ifft = self.fourier.fft, self.fourier.ifft
        mask = mask.to(kspace.real.dtype)
        measured = mul_real(kspace, expand_mask(mask))
        maps = acs_maps(measured, mask, self.fourier)
        x, measured, scale = _normalised(coil_combine(ifft(measured), maps), measured)

        def unroll(branch: int, rows: Tensor | None) -> Tensor:
            xs, s, m, y = (x, maps, mask, measured) if rows is None else \
                (x[rows], maps[rows], mask[rows], measured[rows])
            cond = self._sampling(m)
            for denoise, dc in self.branch_modules(branch):
                xs = channels_to_complex(denoise(complex_to_channels(xs), cond))
                xs = coil_combine(ifft(dc(fft(coil_expand(xs, s)), y, m)), s)
            return xs

        return mul_real(self._routed(mask, unroll, subsets=True), scale), maps

    def branch_modules(self, b: int):
        """(Down-Up network, DC) pairs of branch `b` (0 without accel_branches), cascade by cascade."""
        n = self.config.cascades
        return zip(self.cascades[b * n: (b + 1) * n], self.dc[b * n: (b + 1) * n])

    def branch_of(self, mask: Tensor) -> Tensor:
        """The branch each sample runs, (B,) int64: the accel_branches entry nearest, on a log scale, to
        1 / the sampled fraction of its (B, W) mask (so 4x and 8x split at 1 / fraction = 5.66); 0 for
        every sample of an SN with one set of cascades."""
        if not self.config.accel_branches:
            return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        return nearest_accel(sampled_fraction(mask), self.config.accel_branches)

    def _routed(self, mask: Tensor, unroll, subsets: bool) -> Tensor:
        """The cascades' output (B, h, W) with each sample through its own branch (`branch_of`).

        `unroll(b, rows)` runs branch b on the samples `rows` (None: all). With `subsets` and in eager
        mode each branch runs on its own samples only; under export (and for `subsets=False`) every
        branch runs on the whole batch and the output is picked per sample: a graph without data-dependent
        shapes that does every branch's cascade work (1.7x the FLOPs of one branch for the cpu preset
        at 15x640x368, docs/benchmarks.md)."""
        if not self.config.accel_branches:
            return unroll(0, None)
        which = self.branch_of(mask)
        if subsets and not torch.compiler.is_compiling():
            return by_branch(which, unroll)
        out = None
        for b in range(len(self.config.accel_branches)):
            x = unroll(b, None)
            if out is None:
                out = x
            else:  # real and imaginary parts apart: the exporter's complex support stops short of where
                pick = (which == b)[:, None, None]
                out = torch.complex(torch.where(pick, x.real, out.real), torch.where(pick, x.imag, out.imag))
        return out

    def _sampling(self, mask: Tensor) -> Tensor | None:
        """With `sampling_input`: the fraction of k-space columns sampled, (B, 1) (0.25 at 4x), which
        every Down-Up network sees as a constant channel, so one set of weights can act differently at
        each acceleration (docs/training.md); else None."""
        return sampled_fraction(mask) if self.config.sampling_input else None

    def _reconstruct_columns(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, ColumnDomain]:
        """reconstruct() with the 2-D transforms rewritten as W x W products (training.physics.columns):
        the same arithmetic up to rounding, about a third of the multiply-adds for the matmul DFT."""
        domain = ColumnDomain(kspace, mask, self.config.readout_oversampling)
        m = domain.mask
        maps = maps_from_low_res(domain.images(m * acs_columns(m)))
        # The k-space DC step adds w M (M y - F c): on coil images w (F^H M^2 y - c P). M^2 = M for
        # the binary masks the service admits; kept apart so a float mask means what it means there.
        measured = domain.images(m * m)
        x, measured, scale = _normalised(coil_combine(domain.zero_filled, maps), measured)
        cond = self._sampling(m)

        def unroll(branch: int, rows: None) -> Tensor:
            xs = x
            for denoise, dc in self.branch_modules(branch):
                xs = channels_to_complex(denoise(complex_to_channels(xs), cond))
                c = coil_expand(xs, maps)
                xs = coil_combine(dc.on_coil_images(c, measured, project(c, domain.projector)), maps)
            return xs

        return mul_real(self._routed(m, unroll, subsets=False), scale), maps, domain


def branch_key(key: str, cascades: int, branch: int) -> str:
    """The key `key` of a one-branch SN's state_dict has in branch `branch` of a routed SN with
    `cascades` cascades per branch (SNConfig.accel_branches): cascades.i.* -> cascades.(b n + i).*."""
    group, index, rest = key.split(".", 2)
    if group not in ("cascades", "dc"):
        raise KeyError(f"{key}: not a key of an SN's cascades or DC weights")
    return f"{group}.{branch * cascades + int(index)}.{rest}"


def routed_state_dict(branches: list[dict], cascades: int) -> dict:
    """One routed SN's state_dict from one-branch SN state_dicts, one per accel_branches entry in order."""
    return {branch_key(k, cascades, b): v for b, state in enumerate(branches) for k, v in state.items()}


def _normalised(x: Tensor, measured: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample scale: the RMS of the zero-filled SENSE image x, so the network sees unit-level
    inputs. Returns x and the measured data (k-space or coil images) divided by it, and the scale."""
    scale = torch.sqrt(torch.mean(x.real**2 + x.imag**2, dim=(-2, -1), keepdim=True))
    inv_scale = 1.0 / (scale + torch.finfo(scale.dtype).tiny)
    return mul_real(x, inv_scale), mul_real(measured, inv_scale[:, None]), scale
