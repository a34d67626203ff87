"""Readout-oversampling removal inside the SN: exact on objects inside the central field of view,
data-consistent on the model's grid, the same in the exported ONNX graph for odd and even heights."""

import numpy as np
import pytest
import torch

from physics_helpers import random_kspace, random_mask, rel_err
from registry.export import ReconstructionBoundary, export_reconstruction, ort_session, run_onnx, run_torch
from training.models.sn import SensitivityNetwork
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import data_residual
from training.presets import PRESETS, SNConfig
from dnirecon.errors import ConfigError

CROP = SNConfig(cascades=2, width=4, blocks=1, readout_oversampling=2)


def _pair(config=CROP, seed=0):
    """Two SNs with the same weights, one with and one without the readout crop."""
    torch.manual_seed(seed)
    a = SensitivityNetwork(config)
    b = SensitivityNetwork(SNConfig(**{**config.__dict__, "readout_oversampling": 1}))
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


def _object_in_central_fov(b, c, h_full, w, seed=0):
    """Coil k-space of an object that is zero outside the central h_full // 2 rows."""
    g = torch.Generator().manual_seed(seed)
    h = h_full // 2
    top = (h_full - h) // 2
    img = torch.zeros(b, c, h_full, w, dtype=torch.complex64)
    img[:, :, top:top + h] = torch.complex(torch.rand(b, c, h, w, generator=g) + 1, torch.rand(b, c, h, w, generator=g))
    return TORCH_FFT.fft(img), top, h


def test_presets_remove_the_readout_oversampling():
    assert PRESETS["cpu"].sn.readout_oversampling == 2
    assert PRESETS["paper"].sn.readout_oversampling == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_oversampling_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match="readout_oversampling"):
        SNConfig(readout_oversampling=bad)


@pytest.mark.parametrize("h_full", [20, 21])
def test_crop_keeps_every_sample_of_an_object_inside_the_central_fov(h_full):
    k, top, h = _object_in_central_fov(1, 3, h_full, 9)
    crop, _ = _pair()
    on_grid = crop.crop_readout(k)
    assert on_grid.shape[-2] == h
    # the coil images on the model grid are the central rows of the full ones, nothing lost
    full_img = TORCH_FFT.ifft(k)
    assert rel_err(TORCH_FFT.ifft(on_grid), full_img[..., top:top + h, :]) < 1e-5
    assert torch.linalg.vector_norm(full_img[..., :top, :]) < 1e-4 * torch.linalg.vector_norm(full_img)


def test_output_is_on_the_input_grid_with_zero_rows_outside():
    k, mask = random_kspace(2, 3, 22, 11), random_mask(2, 11)
    crop, _ = _pair()
    out = crop(k, mask)
    assert out.shape == (2, 22, 11)
    assert torch.count_nonzero(out[:, :5]) == 0 and torch.count_nonzero(out[:, -6:]) == 0
    assert torch.count_nonzero(out[:, 5:16]) > 0


def test_data_consistent_on_the_model_grid_at_hard_dc_weight():
    k, _, _ = _object_in_central_fov(1, 1, 24, 10)
    mask = random_mask(1, 10, acs=4)
    crop, _ = _pair(SNConfig(**{**CROP.__dict__, "maps_support": 0.0}))  # untapered maps: S^H S = I
    with torch.no_grad():
        for dc in crop.dc:
            dc.weight.fill_(1.0)
        on_grid = crop.crop_readout(k * mask[:, None, None, :])
        image, maps = crop.reconstruct(k * mask[:, None, None, :], mask)  # on the model's grid
    assert data_residual(image, maps, on_grid, mask).item() < 1e-5


def test_export_matches_torch_for_odd_and_even_heights(tmp_path):
    crop, _ = _pair()
    path = export_reconstruction(crop, tmp_path / "crop.onnx")
    session = ort_session(path)
    for b, c, h, w in [(1, 3, 20, 9), (2, 2, 23, 12)]:
        k, mask = random_kspace(b, c, h, w, seed=h).numpy(), random_mask(b, w, seed=w).numpy()
        want, want_dc = run_torch(crop, k, mask)
        got, got_dc = run_onnx(session, k, mask)
        assert got.shape == (b, h, w)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
        assert np.allclose(got_dc, want_dc, rtol=1e-4, atol=1e-6)


def test_the_crop_halves_the_work_and_keeps_the_centre():
    # same weights, object inside the central FOV: the two models see the same central image region,
    # so their outputs agree there up to what the convolutions see at the grid's edge
    k, top, h = _object_in_central_fov(1, 2, 32, 12, seed=3)
    mask = random_mask(1, 12, acs=4)
    crop, full = _pair()
    with torch.no_grad():
        a = crop(k * mask[:, None, None, :], mask)[:, top + 3: top + h - 3]
        b = full(k * mask[:, None, None, :], mask)[:, top + 3: top + h - 3]
    assert rel_err(a, b) < 0.2
    assert isinstance(ReconstructionBoundary(crop, MATMUL_FFT), torch.nn.Module)
