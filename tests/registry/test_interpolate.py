"""Acceptance 1: theta(alpha) = (1 - alpha) theta_SN + alpha theta_SN-GAN, exact at the ends."""

import pytest
import torch

from dnirecon.errors import ConfigError, ModelError
from registry.interpolate import interpolate_pair, interpolate_state_dicts


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "cascades.0.conv.weight": torch.randn(4, 2, 3, 3, generator=g),
        "cascades.0.conv.bias": torch.randn(4, generator=g),
        "cascades.0.dc.weight": torch.rand((), generator=g),
        "norm.running_mean": torch.randn(4, generator=g, dtype=torch.float64),
        "norm.num_batches_tracked": torch.tensor(seed * 10, dtype=torch.int64),
    }


def test_alpha_zero_and_one_reproduce_the_end_models_bitwise():
    sn, gan = _state(1), _state(2)
    at0, at1 = interpolate_pair(sn, gan, 0.0), interpolate_pair(sn, gan, 1.0)
    for key in sn:  # every entry, the integer buffer included: alpha = 1 is SN-GAN's whole state_dict
        assert torch.equal(at0[key], sn[key]) and at0[key].dtype == sn[key].dtype, key
        assert torch.equal(at1[key], gan[key]) and at1[key].dtype == gan[key].dtype, key


def test_alpha_half_is_the_mean_of_float_entries():
    sn, gan = _state(1), _state(2)
    mid = interpolate_pair(sn, gan, 0.5)
    for key in sn:
        if sn[key].is_floating_point():
            expected = ((sn[key].double() + gan[key].double()) / 2).to(sn[key].dtype)
            assert torch.equal(mid[key], expected), key
            assert mid[key].dtype == sn[key].dtype
    interior = interpolate_pair(sn, gan, 0.25)["cascades.0.conv.bias"]
    assert torch.allclose(interior, 0.75 * sn["cascades.0.conv.bias"] + 0.25 * gan["cascades.0.conv.bias"])


def test_non_float_buffers_are_copied_from_the_first_model_between_the_ends():
    sn, gan = _state(1), _state(2)
    assert [interpolate_pair(sn, gan, a)["norm.num_batches_tracked"].item() for a in (0.0, 0.25, 0.5, 0.99, 1.0)] == \
        [10, 10, 10, 10, 20]


def test_a_name_per_model_or_a_clear_error():
    sds = [_state(1), _state(2), {**_state(3), "extra": torch.zeros(1)}]
    with pytest.raises(ConfigError, match="3 state_dicts but 2 names"):
        interpolate_state_dicts(sds, [0.2, 0.3, 0.5], names=["a", "b"])
    with pytest.raises(ModelError, match="'extra' is in c but missing from a"):
        interpolate_state_dicts(sds, [0.2, 0.3, 0.5], names=["a", "b", "c"])


def test_three_models_weighted_sum():
    sds = [_state(1), _state(2), _state(3)]
    out = interpolate_state_dicts(sds, [0.2, 0.3, 0.5])
    key = "cascades.0.conv.weight"
    expected = 0.2 * sds[0][key].double() + 0.3 * sds[1][key].double() + 0.5 * sds[2][key].double()
    assert torch.equal(out[key], expected.float())


@pytest.mark.parametrize("mutate, words", [
    (lambda sd: sd.pop("cascades.0.conv.bias"), ["cascades.0.conv.bias", "missing"]),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), ["extra.weight", "missing"]),
    (lambda sd: sd.__setitem__("cascades.0.conv.weight", torch.zeros(8, 2, 3, 3)),
     ["cascades.0.conv.weight", "(8, 2, 3, 3)", "(4, 2, 3, 3)"]),
    (lambda sd: sd.__setitem__("cascades.0.conv.bias", torch.zeros(4, dtype=torch.float64)),
     ["cascades.0.conv.bias", "float64", "float32"]),
])
def test_mismatched_models_are_refused_naming_the_key(mutate, words):
    sn, gan = _state(1), _state(2)
    mutate(gan)
    with pytest.raises(ModelError) as err:
        interpolate_pair(sn, gan, 0.5)
    for w in words:
        assert w in str(err.value)


def test_first_differing_key_is_named():
    sn, gan = _state(1), _state(2)
    gan["cascades.0.conv.bias"] = torch.zeros(5)
    gan["norm.running_mean"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ModelError, match="'cascades.0.conv.bias'"):
        interpolate_pair(sn, gan, 0.5)


def test_alpha_outside_unit_interval_needs_explicit_extrapolation():
    sn, gan = _state(1), _state(2)
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            interpolate_pair(sn, gan, alpha)
    out = interpolate_pair(sn, gan, 1.5, allow_extrapolation=True)
    key = "cascades.0.conv.bias"
    assert torch.allclose(out[key], -0.5 * sn[key] + 1.5 * gan[key], atol=1e-6)


def test_weights_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        interpolate_state_dicts([_state(1), _state(2)], [0.5, 0.6])
    with pytest.raises(ConfigError, match="one weight per model"):
        interpolate_state_dicts([_state(1), _state(2)], [1.0])
