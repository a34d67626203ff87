"""U-Net baseline, PatchGAN discriminator, Down-Up network, architecture signature, presets."""

import pytest
import torch

from dnirecon.errors import ConfigError, ModelError
from physics_helpers import random_kspace, random_mask, rel_err
from training.baselines import zero_filled_rss
from training.models.discriminator import PatchDiscriminator
from training.models.downup import DownUpNetwork
from training.models.signature import arch_signature, check_signature, weights_digest
from training.models.sn import SensitivityNetwork
from training.models.unet import UNet
from training.presets import (PRESETS, DiscriminatorConfig, SNConfig, UNetConfig, config_from_dict,
                              config_to_dict, get_preset)


@pytest.mark.parametrize("h,w", [(9, 7), (16, 16), (13, 22)])
def test_downup_keeps_any_size_and_starts_near_identity_when_tail_is_zero(h, w):
    net = DownUpNetwork(in_chans=2, width=4, blocks=2)
    x = torch.randn(2, 2, h, w)
    assert net(x).shape == x.shape
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    assert torch.equal(net(x), x)


def test_downup_with_a_conditioning_channel_refuses_a_call_without_it():
    net = DownUpNetwork(in_chans=2, width=4, blocks=1, cond_chans=1)
    x = torch.randn(2, 2, 9, 7)
    assert net(x, torch.tensor([[0.25], [0.125]])).shape == x.shape
    with pytest.raises(ValueError, match="expected 1 conditioning value"):
        net(x)
    with pytest.raises(ValueError, match="expected 0 conditioning value"):
        DownUpNetwork(in_chans=2, width=4, blocks=1)(x, torch.zeros(2, 1))


@pytest.mark.parametrize("b,c,h,w", [(1, 1, 9, 7), (2, 4, 16, 12)])
def test_unet_maps_kspace_to_magnitude_of_input_size(b, c, h, w):
    torch.manual_seed(0)
    model = UNet(UNetConfig(chans=4, num_pool_layers=2))
    out = model(random_kspace(b, c, h, w), random_mask(b, w))
    assert out.shape == (b, h, w) and out.dtype == torch.float32


def test_unet_normalisation_makes_it_scale_equivariant():
    torch.manual_seed(0)
    model = UNet(UNetConfig(chans=4, num_pool_layers=2)).eval()
    k, mask = random_kspace(1, 3, 12, 12), random_mask(1, 12)
    assert rel_err(model(1e3 * k, mask), 1e3 * model(k, mask)) < 1e-4


def test_unet_input_is_the_zero_filled_rss():
    # With the network's output conv zeroed the model returns its un-normalised input (mean of image).
    model = UNet(UNetConfig(chans=4, num_pool_layers=2))
    torch.nn.init.zeros_(model.net.out.weight)
    torch.nn.init.zeros_(model.net.out.bias)
    k, mask = random_kspace(1, 3, 12, 12), random_mask(1, 12)
    zf = zero_filled_rss(k, mask)
    assert torch.allclose(model(k, mask), zf.mean().expand_as(zf), rtol=1e-5)


def test_patch_discriminator_scores_patches_of_magnitude_images():
    disc = PatchDiscriminator(DiscriminatorConfig(chans=8, num_layers=3))
    scores = disc(torch.rand(2, 64, 48))
    assert scores.shape == (2, 1, 6, 4)
    assert disc(torch.rand(2, 1, 64, 48)).shape == scores.shape


def test_arch_signature_depends_on_names_and_shapes_not_values():
    a = SensitivityNetwork(SNConfig(cascades=2, width=4, blocks=1)).state_dict()
    b = SensitivityNetwork(SNConfig(cascades=2, width=4, blocks=1)).state_dict()
    wider = SensitivityNetwork(SNConfig(cascades=2, width=6, blocks=1)).state_dict()
    deeper = SensitivityNetwork(SNConfig(cascades=3, width=4, blocks=1)).state_dict()
    assert arch_signature(a) == arch_signature(b)
    assert len(arch_signature(a)) == 16 and int(arch_signature(a), 16) >= 0
    assert len({arch_signature(a), arch_signature(wider), arch_signature(deeper)}) == 3


def test_weights_digest_follows_the_values_not_the_storage():
    torch.manual_seed(0)
    a = SensitivityNetwork(SNConfig(cascades=2, width=4, blocks=1)).state_dict()
    copy = {k: v.clone() for k, v in reversed(list(a.items()))}  # other storage, other key order
    assert weights_digest(copy) == weights_digest(a) and len(weights_digest(a)) == 16
    key = next(k for k, v in a.items() if v.is_floating_point() and v.abs().max() > 0)
    nudged = {**copy, key: copy[key] + torch.finfo(torch.float32).eps * copy[key].abs().max()}
    assert weights_digest(nudged) != weights_digest(a)  # one value moved by about an ulp
    assert weights_digest({**copy, key: copy[key].double()}) != weights_digest(a)  # the dtype counts


def test_check_signature_refuses_a_mismatch_naming_the_source():
    sd = SensitivityNetwork(SNConfig(cascades=1, width=2, blocks=1)).state_dict()
    check_signature(sd, arch_signature(sd), "weights.pt")
    with pytest.raises(ModelError, match="weights.pt"):
        check_signature(sd, "0" * 16, "weights.pt")


def test_presets_hold_the_paper_schedule():
    paper = get_preset("paper")
    assert (paper.sn.cascades, paper.sn.width, paper.sn.blocks) == (10, 128, 2)
    assert (paper.sn_schedule.lr, paper.sn_schedule.epochs, paper.sn_schedule.lr_floor) == (1e-4, 50, 1.0)
    assert (paper.finetune_schedule.lr, paper.finetune_schedule.epochs) == (5e-5, 10)
    assert set(PRESETS) == {"cpu", "paper"}


def test_unknown_preset_and_config_fields_raise_config_errors():
    with pytest.raises(ConfigError, match="--preset 'gpu'"):
        get_preset("gpu")
    assert config_from_dict(SNConfig, config_to_dict(PRESETS["cpu"].sn)) == PRESETS["cpu"].sn
    with pytest.raises(ConfigError, match="config.json.*depth"):
        config_from_dict(SNConfig, {"depth": 3}, "config.json")
