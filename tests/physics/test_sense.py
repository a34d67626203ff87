"""SENSE operator: adjointness, RSS, data consistency."""

import pytest
import torch

from physics_helpers import random_kspace, random_mask, rel_err, smooth_maps
from training.physics.coil import rss
from training.physics.dc import DataConsistency
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import SenseOp, data_residual


@pytest.mark.parametrize("fourier", [TORCH_FFT, MATMUL_FFT], ids=["torch", "matmul"])
@pytest.mark.parametrize("h,w", [(8, 6), (9, 7)])
def test_sense_passes_dot_product_adjoint_test(fourier, h, w):
    maps = random_kspace(2, 4, h, w, seed=1)  # any maps: adjointness does not need normalised ones
    op = SenseOp(maps, random_mask(2, w), fourier)
    x = random_kspace(2, 1, h, w, seed=2)[:, 0]
    y = random_kspace(2, 4, h, w, seed=3)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    # relative to the Cauchy-Schwarz bound ||Ax|| ||y||: float32 sums of many terms cancel to a small lhs
    assert abs(lhs - rhs) / (op.forward(x).norm() * y.norm()) < 1e-6


def test_sense_forward_zeroes_unsampled_columns_and_has_coil_shape():
    maps, mask = smooth_maps(1, 3, 8, 6), random_mask(1, 6)
    k = SenseOp(maps, mask).forward(random_kspace(1, 1, 8, 6)[:, 0])
    assert k.shape == (1, 3, 8, 6)
    assert torch.all(k[..., mask[0] == 0] == 0)


def test_sense_normal_operator_is_identity_when_fully_sampled_with_normalised_maps():
    maps = smooth_maps(1, 4, 8, 6)
    x = random_kspace(1, 1, 8, 6)[:, 0]
    assert rel_err(SenseOp(maps, torch.ones(1, 6)).normal(x), x) < 1e-5


def test_rss_combines_coils():
    x = torch.tensor([[[[3.0 + 0j]], [[0.0 + 4j]]]])  # (B=1, C=2, 1, 1)
    assert rss(x, dim=1).item() == pytest.approx(5.0)


def test_data_residual_is_zero_for_consistent_data():
    maps, mask = smooth_maps(2, 3, 8, 6), random_mask(2, 6)
    x = random_kspace(2, 1, 8, 6)[:, 0]
    y = SenseOp(maps, mask).forward(x)
    assert data_residual(x, maps, y, mask).max() < 1e-6
    assert data_residual(2 * x, maps, y, mask).min() == pytest.approx(1.0, rel=1e-5)


def test_data_consistency_replaces_sampled_kspace_at_weight_one():
    mask = random_mask(2, 6)
    pred, meas = random_kspace(2, 3, 8, 6, seed=1), random_kspace(2, 3, 8, 6, seed=2)
    out = DataConsistency(1.0)(pred, meas, mask)
    sampled = mask[:, None, None, :].expand_as(out) > 0
    assert torch.allclose(out[sampled], meas[sampled], rtol=0, atol=1e-6)
    assert torch.equal(out[~sampled], pred[~sampled])


def test_data_consistency_weight_is_clamped_to_unit_interval():
    mask = torch.ones(1, 6)
    pred, meas = random_kspace(1, 2, 4, 6, seed=1), random_kspace(1, 2, 4, 6, seed=2)
    assert torch.equal(DataConsistency(3.0)(pred, meas, mask), DataConsistency(1.0)(pred, meas, mask))
    assert torch.equal(DataConsistency(-2.0)(pred, meas, mask), pred)
    half = DataConsistency(0.5)(pred, meas, mask)
    assert rel_err(half, 0.5 * (pred + meas)) < 1e-6


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 1, 1, 1), (1, 1, 4, 1), (1, 1, 1, 5), ()])
def test_mul_real_and_its_graph_form_are_the_complex_product_by_a_real_factor_for_every_broadcast(shape):
    from training.physics.complex_ops import mul_real, mul_real_view

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.complex64, generator=g)
    r = torch.randn(shape, generator=g)
    assert torch.allclose(mul_real(x, r), x * r, atol=1e-6)
    assert torch.allclose(mul_real_view(x, r), x * r, atol=1e-6)


def test_the_graph_forms_of_coil_expand_and_combine_are_the_complex_products():
    from training.physics.sense import coil_combine_view, coil_expand_view

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 4, 5, dtype=torch.complex64, generator=g)
    x = torch.randn(2, 4, 5, dtype=torch.complex64, generator=g)
    z = torch.randn(2, 3, 4, 5, dtype=torch.complex64, generator=g)
    assert torch.allclose(coil_expand_view(x, maps), maps * x[:, None], atol=1e-6)
    assert torch.allclose(coil_combine_view(z, maps), (maps.conj() * z).sum(dim=1), atol=1e-5)
