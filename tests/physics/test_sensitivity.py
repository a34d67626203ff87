"""ACS sensitivity maps: the central run of sampled columns, unit RSS where the signal is."""

import torch

from physics_helpers import random_mask, smooth_maps
from training.physics.coil import rss
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import SenseOp
from training.physics.sensitivity import acs_columns, acs_maps


def test_acs_columns_is_the_contiguous_run_through_the_centre():
    mask = torch.tensor([[1, 0, 1, 1, 1, 0, 1, 1.0],   # centre 4: run 2..4
                         [1, 1, 1, 1, 1, 1, 1, 1.0],   # fully sampled: all
                         [1, 1, 1, 1, 0, 1, 1, 1.0],   # centre missing: none
                         [0, 1, 1, 1, 1, 1, 1, 0.0]])  # zero-padded edges: 1..6
    expected = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0.0],
                             [1, 1, 1, 1, 1, 1, 1, 1.0],
                             [0, 0, 0, 0, 0, 0, 0, 0.0],
                             [0, 1, 1, 1, 1, 1, 1, 0.0]])
    assert torch.equal(acs_columns(mask), expected)


def test_acs_columns_handles_odd_width_and_a_miss_next_to_the_run():
    # Width 7, centre 3; column 1 missing, column 0 sampled: the run is 2..4 only.
    mask = torch.tensor([[1, 0, 1, 1, 1, 0, 1.0]])
    assert torch.equal(acs_columns(mask), torch.tensor([[0, 0, 1, 1, 1, 0, 0.0]]))


def _phantom_kspace(h=32, w=24, coils=4):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = ((yy / 0.8) ** 2 + (xx / 0.6) ** 2 < 1).to(torch.complex64)
    maps = smooth_maps(1, coils, h, w)
    return TORCH_FFT.fft(maps * image), image.abs() > 0


def test_acs_maps_have_unit_sum_of_squares_where_the_signal_is():
    kspace, support = _phantom_kspace()
    mask = random_mask(1, 24, acs=8)
    maps = acs_maps(kspace * mask[:, None, None, :], mask)
    power = rss(maps, dim=1)[0] ** 2
    assert maps.shape == (1, 4, 32, 24)
    assert torch.allclose(power[support], torch.ones(()), atol=1e-4)
    assert power.max() <= 1.0 + 1e-5


def test_acs_maps_do_not_depend_on_kspace_scale_or_fft_implementation():
    kspace, support = _phantom_kspace()
    mask = random_mask(1, 24, acs=8)
    a = acs_maps(kspace, mask, TORCH_FFT)[..., support]
    assert torch.allclose(acs_maps(1e6 * kspace, mask, TORCH_FFT)[..., support], a, atol=1e-5)
    assert torch.allclose(acs_maps(kspace, mask, MATMUL_FFT)[..., support], a, atol=1e-5)


def test_acs_maps_recover_true_relative_sensitivities():
    # The ACS maps equal the true maps up to one phase per pixel, so S^H S_true has modulus 1.
    kspace, support = _phantom_kspace()
    true = smooth_maps(1, 4, 32, 24)
    est = acs_maps(kspace, torch.ones(1, 24))
    overlap = (est.conj() * true).sum(dim=1)[0].abs()
    assert torch.allclose(overlap[support], torch.ones(()), atol=1e-3)
    assert SenseOp(est, torch.ones(1, 24)).maps is est



def test_the_maps_taper_to_zero_in_the_air_and_keep_about_unit_rss_on_the_object():
    from training.physics.sensitivity import maps_from_low_res

    g = torch.Generator().manual_seed(0)
    low_res = torch.randn(1, 4, 16, 16, generator=g, dtype=torch.complex64) * 1e-3  # air: noise only
    low_res[..., 4:12, 4:12] += 1.0 + 0.2 * torch.randn(1, 4, 8, 8, generator=g, dtype=torch.complex64)  # object
    plain, tapered = rss(maps_from_low_res(low_res), dim=1)[0], rss(maps_from_low_res(low_res, support=0.05), dim=1)[0]
    assert torch.allclose(plain, torch.ones(16, 16), atol=0.01)  # untapered: unit RSS, air included
    assert tapered[4:12, 4:12].min() > 0.99
    assert tapered[:2].max() < 0.01


def test_maps_support_must_be_a_fraction_below_one():
    import pytest

    from dnirecon.errors import ConfigError
    from training.presets import SNConfig

    for bad in (1.0, -0.1, True, "0.05"):
        with pytest.raises(ConfigError, match="SNConfig.maps_support"):
            SNConfig(maps_support=bad)
