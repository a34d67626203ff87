"""Sensitivity network (SN): an unrolled Deep-POCSENSE with Down-Up networks (Qin et al., ISMRM 2020).

Each cascade refines the sensitivity-weighted coil-combined complex image with a Down-Up network
(2 real channels in and out), then enforces data consistency coil-wise in k-space with a learned weight.
Sensitivity maps come from the ACS lines and the input normalisation is undone at the output, both inside
the model, so the same module is the whole reconstruction (training, export, serving). The physics is
injected: TORCH_FFT for training (k-space form), MATMUL_FFT for the ONNX export (column form,
training.physics.columns), with the same weights and the same cascade loop.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnirecon import routing
from training.models.downup import DownUpNetwork, by_branch, sampled_fraction
from training.physics.columns import ColumnDomain
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


class KSpaceConsistency(NamedTuple):
    """The DC step in k-space: x -> S^H F^H DC(F S x, y, m). maps complex (B, C, h, W), measured
    (normalised) k-space complex (B, C, h, W), mask float (B, W)."""

    maps: Tensor
    measured: Tensor
    mask: Tensor
    fourier: FourierPair

    def __call__(self, x: Tensor, dc: DataConsistency) -> Tensor:
        fft, ifft = self.fourier.fft, self.fourier.ifft
        return coil_combine(ifft(dc(fft(coil_expand(x, self.maps)), self.measured, self.mask)), self.maps)

    def rows(self, sel: Tensor) -> "KSpaceConsistency":
        return KSpaceConsistency(self.maps[sel], self.measured[sel], self.mask[sel], self.fourier)


class ColumnConsistency(NamedTuple):
    """The same step on coil images (training.physics.columns): x -> S^H (c + w (F^H M y - F^H M F c)),
    c = S x. measured: the (normalised) coil images F^H M^2 y (B, C, h, W)."""

    maps: Tensor
    measured: Tensor
    domain: ColumnDomain

    def __call__(self, x: Tensor, dc: DataConsistency) -> Tensor:
        c = coil_expand(x, self.maps)
        return coil_combine(dc.on_coil_images(c, self.measured, self.domain.project(c)), self.maps)

    def rows(self, sel: Tensor) -> "ColumnConsistency":
        return ColumnConsistency(self.maps[sel], self.measured[sel], self.domain.rows_of(sel))


class SensitivityNetwork(nn.Module):
    """forward(kspace complex (B, C, H, W), mask float (B, W)) -> complex image (B, H, W).

    `kspace` is the zero-filled multi-coil k-space (it is masked again inside, so unmasked input is
    fine); any B, C, H, W (odd sizes too). With `config.accel_branches` the SN holds one set of
    cascades per listed acceleration and each slice runs the set `dnirecon.routing.nearest_set` picks
    for its mask; `cascade_set(i)` is set i alone, a one-set SN (what the ONNX export writes).
    """

    def __init__(self, config: SNConfig, fourier: FourierPair = TORCH_FFT):
        super().__init__()
        self.config = config
        self.fourier = fourier
        cond = 1 if config.sampling_input else 0
        # set b owns cascades[b * n: (b + 1) * n] and dc[...] (n = config.cascades), so a one-set SN
        # keeps the keys it always had
        sets = self.cascade_sets
        self.cascades = nn.ModuleList(
            DownUpNetwork(in_chans=2, width=config.width, blocks=config.blocks, cond_chans=cond)
            for _ in range(config.cascades * sets)
        )
        self.dc = nn.ModuleList(DataConsistency(config.dc_weight_init) for _ in range(config.cascades * sets))

    @property
    def cascade_sets(self) -> int:
        return max(len(self.config.accel_branches), 1)

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
        x, maps, _ = self._reconstruct(kspace, mask)
        return x, maps

    def reconstruct_with_residual(self, kspace: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(image complex (B, h, W) on the model's grid, data residual ||M F S x - M y|| / ||M y|| (B,)),
        the residual of the k-space the model was consistent with (after crop_readout)."""
        x, maps, residual = self._reconstruct(kspace, mask)
        return x, residual(x, maps)

    def _reconstruct(self, kspace: Tensor, mask: Tensor):
        """(image, maps, residual(image, maps) -> (B,)) in the physics of the Fourier pair."""
        if self.fourier.column_domain:
            domain = ColumnDomain(kspace, mask, self.config.readout_oversampling)
            m = domain.mask
            # The k-space DC step adds w M (M y - F c): on coil images w (F^H M^2 y - c P). M^2 = M for
            # the binary masks the service admits; kept apart so a float mask means what it means there.
            zero_filled, measured, low_res = domain.images(m, m * m, m * acs_columns(m))
            maps = maps_from_low_res(low_res, support=self.config.maps_support)
            x, measured, scale = _normalised(coil_combine(zero_filled, maps), measured)
            consistency = ColumnConsistency(maps, measured, domain)

            def residual(image: Tensor, maps: Tensor) -> Tensor:  # Parseval: the norms on coil images
                return relative_residual(domain.project(coil_expand(image, maps)) - zero_filled, zero_filled)
        else:
            y = self.crop_readout(kspace)
            m = mask.to(y.real.dtype)
            measured = mul_real(y, expand_mask(m))
            maps = acs_maps(measured, m, self.fourier, support=self.config.maps_support)
            x, measured, scale = _normalised(coil_combine(self.fourier.ifft(measured), maps), measured)
            consistency = KSpaceConsistency(maps, measured, m, self.fourier)

            def residual(image: Tensor, maps: Tensor) -> Tensor:
                return data_residual(image, maps, y, mask, self.fourier)
        cond = sampled_fraction(m) if self.config.sampling_input else None

        def run(index: int, sel: Tensor | None) -> Tensor:
            if sel is None:
                return self.unroll(x, self.branch_modules(index), cond, consistency)
            return self.unroll(x[sel], self.branch_modules(index), None if cond is None else cond[sel],
                               consistency.rows(sel))

        out = run(0, None) if self.cascade_sets == 1 else by_branch(self.branch_of(m), run)
        return mul_real(out, scale), maps, residual

    @staticmethod
    def unroll(x: Tensor, cascades, cond: Tensor | None, consistency) -> Tensor:
        """The unrolled cascades: each (Down-Up network, DC) pair refines x (B, h, W), then
        `consistency(x, dc)` applies the DC step in the operators it was built with."""
        for denoise, dc in cascades:
            x = channels_to_complex(denoise(complex_to_channels(x), cond))
            x = consistency(x, dc)
        return x

    def branch_modules(self, index: int):
        """(Down-Up network, DC) pairs of cascade set `index` (0 without accel_branches), in order."""
        n = self.config.cascades
        return zip(self.cascades[index * n: (index + 1) * n], self.dc[index * n: (index + 1) * n])

    def branch_of(self, mask: Tensor) -> Tensor:
        """The cascade set each sample runs, (B,) int64, by `dnirecon.routing.nearest_set` on its (B, W)
        mask (4x and 8x split at 1 / fraction = 5.66); 0 for every sample of a one-set SN."""
        which = routing.nearest_set(routing.sampled_fraction(mask.detach().cpu().numpy()), self.config.accel_branches)
        return torch.from_numpy(which).to(mask.device)

    def cascade_set(self, index: int) -> "SensitivityNetwork":
        """Cascade set `index` as a one-set SN (keys cascades.0.., dc.0..; same Fourier pair) sharing the
        ACS maps, normalisation and readout crop: what a slice routed to that set runs."""
        if not 0 <= index < self.cascade_sets:
            raise IndexError(f"cascade set {index}: this SN has {self.cascade_sets}")
        with torch.random.fork_rng(devices=[]):  # building it must not move training's RNG
            one = type(self)(dataclasses.replace(self.config, accel_branches=()), fourier=self.fourier)
        n = self.config.cascades
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("cascades.", "dc."))}
        for group in ("cascades", "dc"):
            prefix = f"{group}."
            for k, v in self.state_dict().items():
                if k.startswith(prefix):
                    i, rest = k[len(prefix):].split(".", 1)
                    if index * n <= int(i) < (index + 1) * n:
                        state[f"{group}.{int(i) - index * n}.{rest}"] = v
        one.load_state_dict(state, strict=True)
        return one.train(self.training)


def _normalised(x: Tensor, measured: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample scale: the RMS of the zero-filled SENSE image x, so the network sees unit-level
    inputs. Returns x and the measured data (k-space or coil images) divided by it, and the scale."""
    scale = torch.sqrt(torch.mean(x.real**2 + x.imag**2, dim=(-2, -1), keepdim=True))
    inv_scale = 1.0 / (scale + torch.finfo(scale.dtype).tiny)
    return mul_real(x, inv_scale), mul_real(measured, inv_scale[:, None]), scale
