"""The column-domain SN (the exported form: DC as a masked 1-D transform pair along W, no 2-D DFTs)
equals the k-space form trained with torch.fft, for odd and even sizes, any mask, any DC weight."""

import pytest
import torch

from physics_helpers import random_kspace, random_mask, rel_err
from registry.export import ReconstructionBoundary, with_fourier
from training.models.sn import SensitivityNetwork
from training.physics.columns import ColumnDomain
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import expand_mask
from training.presets import SNConfig


def _models(oversampling: int, dc_weight: float, seed: int = 0, maps_support: float = 0.05):
    torch.manual_seed(seed)
    config = SNConfig(cascades=3, width=4, blocks=1, readout_oversampling=oversampling, maps_support=maps_support)
    k_form = SensitivityNetwork(config).eval()
    for dc in k_form.dc:
        dc.weight.data.fill_(dc_weight)
    return k_form, with_fourier(k_form, MATMUL_FFT)


@pytest.mark.parametrize("shape", [(2, 3, 20, 18), (1, 4, 21, 17), (1, 2, 33, 24)])
def test_projector_is_the_masked_2d_transform_pair(shape):
    b, c, h, w = shape
    k = random_kspace(*shape)
    mask = random_mask(b, w)
    mask[0, 1] = 0.5  # a float mask value: P applies m, not a 0/1 selection
    domain = ColumnDomain(k, mask)
    images = TORCH_FFT.ifft(k)
    full, zero_filled = domain.images(torch.ones_like(mask), mask)
    assert rel_err(full, images) < 1e-5
    assert rel_err(zero_filled, TORCH_FFT.ifft(k * expand_mask(mask))) < 1e-5
    expected = TORCH_FFT.ifft(TORCH_FFT.fft(images) * expand_mask(mask))
    assert rel_err(domain.project(images), expected) < 1e-5


@pytest.mark.parametrize("oversampling", [1, 2])
@pytest.mark.parametrize("height", [20, 21])
@pytest.mark.parametrize("dc_weight", [0.3, 1.0])
def test_column_form_equals_kspace_form(oversampling, height, dc_weight):
    k_form, col_form = _models(oversampling, dc_weight)
    b, c, w = 2, 3, 17
    mask = random_mask(b, w, seed=1)
    k = random_kspace(b, c, height, w, seed=2) * expand_mask(mask)
    with torch.no_grad():
        x_k, maps_k = k_form.reconstruct(k, mask)
        x_c, maps_c = col_form.reconstruct(k, mask)
        _, res_k = k_form.reconstruct_with_residual(k, mask)
        _, res_c = col_form.reconstruct_with_residual(k, mask)
    assert x_c.shape == x_k.shape == (b, height // oversampling, w)
    assert rel_err(maps_c, maps_k) < 1e-5
    assert (x_c - x_k).abs().max() <= 1e-5 * x_k.abs().max()
    # random k-space is not S x for any x, so the residual is far from 0: a value both forms must agree on
    assert res_k.min() > 1e-2
    assert torch.allclose(res_c, res_k, rtol=1e-4, atol=1e-6)


def test_export_boundary_uses_the_column_form():
    k_form, col_form = _models(2, 1.0)
    mask = random_mask(1, 18)
    k = random_kspace(1, 3, 22, 18) * expand_mask(mask)
    kr = torch.stack([k.real, k.imag], dim=-1)
    with torch.no_grad():
        img_k, res_k = ReconstructionBoundary(k_form, TORCH_FFT)(kr, mask)
        img_c, res_c = ReconstructionBoundary(col_form, MATMUL_FFT)(kr, mask)
    assert col_form.fourier.column_domain and not k_form.fourier.column_domain
    assert (img_c - img_k).abs().max() <= 1e-5 * img_k.max()
    assert torch.allclose(res_c, res_k, rtol=1e-4, atol=1e-6)


def test_column_form_is_data_consistent_at_hard_dc_weight():
    # single coil, a bright smooth-phase object: the ACS map is a pure phase, S^H S = I (as test_sn)
    g = torch.Generator().manual_seed(0)
    image = (2.0 + torch.rand(1, 12, 10, generator=g)) * torch.exp(0.3j * torch.linspace(0, 1, 10))
    mask = random_mask(1, 10, acs=4)
    k = TORCH_FFT.fft(image.to(torch.complex64))[:, None] * expand_mask(mask)
    hard = _models(1, 1.0, maps_support=0.0)[1]  # untapered maps: S^H S = I, so hard DC is exact
    soft = _models(1, 0.0)[1]
    with torch.no_grad():
        assert hard.reconstruct_with_residual(k, mask)[1].item() < 1e-5
        assert soft.reconstruct_with_residual(k, mask)[1].item() > 1e-3
