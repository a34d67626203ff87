"""L_SN (1 - SSIM + 1e-3 L1 on the foreground) and the LSGAN terms."""

import numpy as np
import pytest
import torch

from training import losses


def _images(seed=0, shape=(2, 24, 20)):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    pred = target + 0.1 * torch.randn(shape, generator=g)
    return pred, target


def test_ssim_matches_fastmri_ssimloss():
    fastmri_losses = pytest.importorskip("fastmri.losses")
    pred, target = _images()
    dr = target.flatten(1).amax(1)
    oracle = fastmri_losses.SSIMLoss()(pred[:, None], target[:, None], dr)
    assert losses.ssim_loss(pred, target).item() == pytest.approx(oracle.item(), abs=1e-6)


def test_ssim_loss_is_zero_for_identical_images_and_grows_with_noise():
    _, target = _images()
    assert losses.ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    small = losses.ssim_loss(target + 0.01 * torch.randn_like(target), target).item()
    large = losses.ssim_loss(target + 0.2 * torch.randn_like(target), target).item()
    assert 0 < small < large


def test_foreground_restricts_both_terms_to_the_mask():
    pred, target = _images()
    fg = torch.zeros_like(target)
    fg[:, 6:18, 5:15] = 1
    spoiled = pred.clone()
    spoiled[:, :2, :] += 5.0  # far outside the foreground and its SSIM windows
    assert losses.sn_loss(spoiled, target, fg).item() == pytest.approx(losses.sn_loss(pred, target, fg).item(),
                                                                      abs=1e-6)
    assert losses.sn_loss(spoiled, target).item() > losses.sn_loss(pred, target).item() + 0.01


def test_sn_loss_is_ssim_plus_scaled_l1_and_scale_free():
    pred, target = _images()
    fg = torch.ones_like(target)
    dr = target.flatten(1).amax(1)
    expected = losses.ssim_loss(pred, target, fg) + 1e-3 * ((pred - target).abs() / dr[:, None, None]).mean()
    assert losses.sn_loss(pred, target, fg).item() == pytest.approx(expected.item(), rel=1e-6)
    # k-space scale (fastMRI values ~1e-5) must not change the loss
    assert losses.sn_loss(pred * 1e-5, target * 1e-5, fg).item() == pytest.approx(
        losses.sn_loss(pred, target, fg).item(), rel=1e-4)


def test_sn_loss_gradient_flows_to_the_prediction():
    pred, target = _images()
    pred.requires_grad_(True)
    losses.sn_loss(pred, target, torch.ones_like(target)).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_lsgan_losses_have_their_optima_at_the_labels():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert losses.lsgan_discriminator_loss(ones, zeros).item() == 0.0
    assert losses.lsgan_discriminator_loss(zeros, ones).item() == pytest.approx(1.0)
    assert losses.lsgan_generator_loss(ones).item() == 0.0
    assert losses.lsgan_generator_loss(zeros).item() == pytest.approx(0.5)


def test_lsgan_generator_loss_weighs_each_image_by_its_own_factor():
    d_fake = torch.stack([torch.zeros(1, 3, 3), torch.full((1, 3, 3), 0.5)])  # per image 0.5 and 0.125
    assert losses.lsgan_generator_loss(d_fake, torch.ones(2)).item() == pytest.approx(
        losses.lsgan_generator_loss(d_fake).item())
    assert losses.lsgan_generator_loss(d_fake, torch.tensor([0.5, 2.0])).item() == pytest.approx(
        (0.5 * 0.5 + 2.0 * 0.125) / 2)
    with pytest.raises(ValueError, match=r"weight: expected one per image, shape \(2,\), got \(3,\)"):
        losses.lsgan_generator_loss(d_fake, torch.ones(3))


def test_discriminator_input_is_masked_and_range_normalised():
    _, target = _images()
    fg = torch.zeros_like(target)
    fg[:, 4:8, 4:8] = 1
    x = losses.normalize_for_discriminator(target * 1e-5, fg, losses.data_range_of(target * 1e-5))
    assert x.shape == (2, 1, 24, 20)
    assert x[:, :, :4].abs().max().item() == 0.0
    assert np.isclose(x.max().item(), (target[:, 4:8, 4:8] / target.flatten(1).amax(1)[:, None, None]).max().item(),
                      rtol=1e-5)
