"""Sensitivity network: shapes, data consistency at the hard limit, FFT swap, normalisation, ONNX export."""

import numpy as np
import pytest
import torch

from physics_helpers import export_onnx, random_kspace, random_mask, rel_err
from training.models.downup import sampled_fraction
from training.models.sn import SensitivityNetwork
from training.physics.fft import MATMUL_FFT, TORCH_FFT
from training.physics.sense import data_residual
from dnirecon.errors import ConfigError
from training.presets import PRESETS, SNConfig

TINY = SNConfig(cascades=2, width=4, blocks=1)


def _model(config=TINY, fourier=TORCH_FFT, dc_weight=None, seed=0):
    torch.manual_seed(seed)
    model = SensitivityNetwork(config, fourier)
    if dc_weight is not None:
        with torch.no_grad():
            for dc in model.dc:
                dc.weight.fill_(dc_weight)
    return model


@pytest.mark.parametrize("b,c,h,w", [(1, 1, 9, 7), (2, 3, 13, 11), (1, 15, 16, 12), (2, 4, 10, 17)])
def test_output_shape_for_odd_sizes_and_any_coil_count(b, c, h, w):
    out = _model()(random_kspace(b, c, h, w), random_mask(b, w))
    assert out.shape == (b, h, w)
    assert out.dtype == torch.complex64
    assert torch.isfinite(out.real).all()


def test_matmul_fft_gives_the_same_output_as_torch_fft():
    k, mask = random_kspace(2, 3, 13, 11), random_mask(2, 11)
    a = _model(fourier=TORCH_FFT)(k, mask)
    b = _model(fourier=MATMUL_FFT)(k, mask)
    assert rel_err(b, a) < 1e-5


def _consistent_single_coil(h=12, w=10, seed=0):
    # A smooth-phase object on a bright constant: the low-res image has no zero, so the single-coil ACS
    # map is a pure phase (|S| = 1) and S^H S = I, where coil-wise DC makes the image data-consistent.
    g = torch.Generator().manual_seed(seed)
    image = (2.0 + torch.rand(1, h, w, generator=g)) * torch.exp(0.3j * torch.linspace(0, 1, w))
    return TORCH_FFT.fft(image.to(torch.complex64))[:, None], random_mask(1, w, acs=4, seed=seed)


def test_output_is_data_consistent_at_hard_dc_weight():
    kspace, mask = _consistent_single_coil()
    kspace = kspace * mask[:, None, None, :]
    model = _model(SNConfig(cascades=2, width=4, blocks=1, maps_support=0.0), dc_weight=1.0)  # S^H S = I
    image, maps = model.reconstruct(kspace, mask)
    assert data_residual(image, maps, kspace, mask).item() < 1e-5


def test_output_is_not_data_consistent_at_zero_dc_weight():
    kspace, mask = _consistent_single_coil()
    model = _model(dc_weight=0.0)
    image, maps = model.reconstruct(kspace * mask[:, None, None, :], mask)
    assert data_residual(image, maps, kspace, mask).item() > 1e-3


def test_normalisation_makes_the_model_scale_equivariant():
    k, mask = random_kspace(1, 3, 9, 8), random_mask(1, 8)
    model = _model()
    assert rel_err(model(1e4 * k, mask), 1e4 * model(k, mask)) < 1e-4


def test_unsampled_input_columns_are_ignored():
    k, mask = random_kspace(1, 3, 9, 8), random_mask(1, 8)
    model = _model()
    noisy = k + 100 * (1 - mask[:, None, None, :]) * random_kspace(1, 3, 9, 8, seed=5)
    assert rel_err(model(noisy, mask), model(k, mask)) < 1e-5


def test_gradients_reach_every_parameter():
    model = _model()
    model(random_kspace(1, 2, 8, 8), random_mask(1, 8)).abs().mean().backward()
    # DC weights start at the clamp boundary (1.0), where the clamp still passes gradient.
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_presets_build_models_of_the_documented_size():
    paper = SensitivityNetwork(PRESETS["paper"].sn)
    assert len(paper.cascades) == 10 and len(paper.dc) == 10
    assert paper.cascades[0].head[0].out_channels == 128 and len(paper.cascades[0].blocks) == 2
    cpu = sum(p.numel() for p in SensitivityNetwork(PRESETS["cpu"].sn).parameters())
    assert cpu < sum(p.numel() for p in paper.parameters()) / 50


class _RealBoundary(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, kspace, mask):
        return self.model(torch.complex(kspace[..., 0], kspace[..., 1]), mask).abs()


def _onnx_error(model, k, mask, path):
    """Export `model` (complex k-space in) through _RealBoundary; max |onnxruntime - torch| / max |torch|
    on (k, mask), and the torch wrapper."""
    wrapper = _RealBoundary(model)
    k0 = torch.view_as_real(k).contiguous()
    session, _ = export_onnx(wrapper, k0, mask, path)
    got = session.run(None, {"kspace": k0.numpy(), "mask": mask.numpy()})[0]
    with torch.no_grad():
        want = wrapper(k0, mask).numpy()
    return np.abs(got - want).max() / np.abs(want).max(), wrapper


def test_tiny_sn_exports_to_onnx_without_dft_and_matches_torch(tmp_path):
    model = _model(SNConfig(cascades=1, width=2, blocks=1), fourier=MATMUL_FFT).eval()
    wrapper = _RealBoundary(model)
    k0 = torch.view_as_real(random_kspace(2, 3, 10, 8)).contiguous()
    session, ops = export_onnx(wrapper, k0, random_mask(2, 8), tmp_path / "sn.onnx")
    assert "DFT" not in ops
    for b, c, h, w in [(2, 3, 10, 8), (1, 4, 13, 11)]:
        k = torch.view_as_real(random_kspace(b, c, h, w, seed=h)).contiguous()
        mask = random_mask(b, w, seed=w)
        got = session.run(None, {"kspace": k.numpy(), "mask": mask.numpy()})[0]
        with torch.no_grad():
            want = wrapper(k, mask).numpy()
        assert got.shape == (b, h, w)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


SAMPLING = SNConfig(cascades=2, width=4, blocks=1, sampling_input=True)


def test_the_sampling_input_is_the_sampled_fraction_seen_by_every_cascade():
    model = _model(SAMPLING).eval()
    assert all(c.head[0].in_channels == 3 for c in model.cascades)
    mask = torch.zeros(2, 16)
    mask[0, ::4], mask[1, ::8] = 1, 1
    assert sampled_fraction(mask).flatten().tolist() == [0.25, 0.125]
    # with its weights for that channel at zero it is the plain SN with the same other weights
    plain = _model(TINY).eval()
    plain.load_state_dict({n: (p[:, :2] if n.endswith("head.0.weight") else p)
                           for n, p in model.state_dict().items()})
    k = random_kspace(2, 3, 12, 16)
    with torch.no_grad():
        for c in model.cascades:
            c.head[0].weight[:, 2:] = 0
        assert rel_err(model(k, mask), plain(k, mask)) < 1e-6
        for c in model.cascades:
            c.head[0].weight[:, 2:] = 1
        assert rel_err(model(k, mask), plain(k, mask)) > 1e-3


def test_the_sampling_input_survives_export_and_is_refused_by_a_plain_sn(tmp_path):
    model = _model(SNConfig(cascades=1, width=2, blocks=1, sampling_input=True), fourier=MATMUL_FFT).eval()
    wrapper = _RealBoundary(model)
    k0 = torch.view_as_real(random_kspace(2, 3, 10, 8)).contiguous()
    session, _ = export_onnx(wrapper, k0, random_mask(2, 8), tmp_path / "sn.onnx")
    k = torch.view_as_real(random_kspace(2, 4, 13, 12, seed=3)).contiguous()
    for every in (2, 4):  # two sampled fractions through one graph
        mask = torch.zeros(2, 12)
        mask[:, ::every], mask[:, 5:8] = 1, 1  # with the ACS lines the maps come from
        got = session.run(None, {"kspace": k.numpy(), "mask": mask.numpy()})[0]
        with torch.no_grad():
            want = wrapper(k, mask).numpy()
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    with pytest.raises(RuntimeError, match="head.0.weight"):
        SensitivityNetwork(SNConfig(cascades=1, width=2, blocks=1)).load_state_dict(model.state_dict())


def test_accel_branches_route_each_slice_to_its_cascade_set_and_each_set_exports_alone(tmp_path):
    routed = _model(SNConfig(cascades=2, width=4, blocks=1, accel_branches=(4, 8))).eval()
    one = _model(SNConfig(cascades=2, width=4, blocks=1)).eval()
    keys = list(one.state_dict())
    assert set(keys) < set(routed.state_dict())  # set 0 keeps a one-set SN's keys
    assert len(routed.state_dict()) == 2 * len(keys)
    k, mask = random_kspace(3, 3, 12, 16), torch.zeros(3, 16)
    mask[0, ::4], mask[1, ::8], mask[2, ::4] = 1, 1, 1  # fractions 0.25, 0.125, 0.25
    assert routed.branch_of(mask).tolist() == [0, 1, 0]
    rng = torch.random.get_rng_state()
    four, eight = routed.cascade_set(0), routed.cascade_set(1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # building a set leaves training's RNG alone
    assert list(eight.state_dict()) == keys
    assert torch.equal(eight.state_dict()["cascades.0.head.0.weight"], routed.state_dict()["cascades.2.head.0.weight"])
    with torch.no_grad():
        got = routed(k, mask)
        want = torch.stack([four(k[:1], mask[:1])[0], eight(k[1:2], mask[1:2])[0], four(k[2:], mask[2:])[0]])
        assert rel_err(got, want) < 1e-6
        assert rel_err(eight(k[:1], mask[:1]), four(k[:1], mask[:1])) > 1e-3  # the sets differ
    with torch.enable_grad():  # training: each set's weights learn from its own slices only
        routed.train()
        routed(k[1:2], mask[1:2]).abs().mean().backward()
        moved = {int(n.split(".")[1]) >= 2 for n, p in routed.named_parameters()  # cascades 2, 3: 8x
                 if p.grad is not None and p.grad.any()}
        routed.zero_grad()
    assert moved == {True}
    small = _model(SNConfig(cascades=1, width=2, blocks=1, accel_branches=(4, 8)), fourier=MATMUL_FFT).eval()
    error, _ = _onnx_error(small.cascade_set(1), k[1:2], mask[1:2], tmp_path / "eight.onnx")
    assert error < 1e-5
    with torch.no_grad():  # the 8x graph on an 8x slice is what the whole SN gives that slice
        assert rel_err(small.cascade_set(1)(k[1:2], mask[1:2]), small(k[1:2], mask[1:2])) < 1e-6
    for bad in ((4,), (8, 4), (4, 4), (0.5, 4), ("4", 8)):
        with pytest.raises(ConfigError, match="accel_branches"):
            SNConfig(accel_branches=bad)
    assert SNConfig(accel_branches=[4, 8]).accel_branches == (4.0, 8.0)


def test_an_sn_with_several_cascade_sets_is_exported_one_set_at_a_time(tmp_path):
    from dnirecon.errors import ModelError
    from registry.export import export_reconstruction

    routed = _model(SNConfig(cascades=1, width=2, blocks=1, accel_branches=(4, 8))).eval()
    with pytest.raises(ModelError, match=r"a set of cascades per acceleration \[4.0, 8.0\]; export each set"):
        export_reconstruction(routed, tmp_path / "both.onnx")
    assert not (tmp_path / "both.onnx").exists()
