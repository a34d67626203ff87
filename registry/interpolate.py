"""Deep network interpolation (Qin et al., ISMRM 2020): theta = sum_k w_k theta_k, weights summing to one.

Two models with weights (1 - alpha, alpha) give theta(alpha) = (1 - alpha) theta_SN + alpha theta_SN-GAN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from dnirecon.errors import ConfigError, ModelError

# Weights are user numbers (alpha from a CLI): accept rounding, not a wrong grid.
WEIGHT_SUM_TOLERANCE = 1e-6


def check_same_structure(state_dicts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None) -> None:
    """Raise ModelError naming the first key whose presence, shape or dtype differs from the first model."""
    if len(state_dicts) < 1:
        raise ModelError("interpolation needs at least one state_dict, got none")
    names = list(names) if names is not None else [f"model {k}" for k in range(len(state_dicts))]
    if len(names) != len(state_dicts):  # zip would silently skip the models without a name
        raise ConfigError(f"interpolation got {len(state_dicts)} state_dicts but {len(names)} names; expected one name per model")
    ref, ref_name = state_dicts[0], names[0]
    for other, other_name in zip(state_dicts[1:], names[1:]):
        for key in ref:
            if key not in other:
                raise ModelError(f"state_dict key {key!r} is in {ref_name} but missing from {other_name}; "
                                 "interpolation needs identical keys")
        for key in other:
            if key not in ref:
                raise ModelError(f"state_dict key {key!r} is in {other_name} but missing from {ref_name}; "
                                 "interpolation needs identical keys")
        for key, a in ref.items():
            b = other[key]
            if tuple(a.shape) != tuple(b.shape):
                raise ModelError(f"state_dict key {key!r} has shape {tuple(b.shape)} in {other_name}, "
                                 f"expected {tuple(a.shape)} as in {ref_name}")
            if a.dtype != b.dtype:
                raise ModelError(f"state_dict key {key!r} has dtype {b.dtype} in {other_name}, "
                                 f"expected {a.dtype} as in {ref_name}")


def alpha_weights(alpha: float, allow_extrapolation: bool = False) -> tuple[float, float]:
    """(1 - alpha, alpha) for the paper's two-model case; alpha outside [0, 1] needs allow_extrapolation."""
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number, got {alpha}")
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha} (pass allow_extrapolation=True to extrapolate)")
    return 1.0 - alpha, alpha


def interpolate_state_dicts(
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    allow_extrapolation: bool = False,
    names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted sum of floating-point parameters and buffers; non-float entries (integer or bool
    buffers such as BatchNorm's num_batches_tracked) copied from the first model, or from the model
    whose weight is exactly 1.

    state_dicts: models with identical keys, shapes and dtypes (else ModelError naming the first
    differing key). weights: one per model, summing to one; each must lie in [0, 1] unless
    allow_extrapolation. A weight of exactly 1 returns that model's tensors bitwise (no arithmetic),
    so alpha = 0 and alpha = 1 reproduce SN and SN-GAN exactly.
    """
    if len(state_dicts) != len(weights):
        raise ConfigError(f"interpolation got {len(state_dicts)} state_dicts but {len(weights)} weights; "
                          "expected one weight per model")
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"interpolation weights must be finite, got {weights}")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ConfigError(f"interpolation weights must sum to 1, got {weights} (sum {sum(weights)})")
    if not allow_extrapolation and any(w < 0.0 or w > 1.0 for w in weights):
        raise ConfigError(f"interpolation weights must lie in [0, 1], got {weights} "
                          "(pass allow_extrapolation=True to extrapolate)")
    check_same_structure(state_dicts, names)

    exact = [k for k, w in enumerate(weights) if w == 1.0]
    only = exact[0] if exact and all(w == 0.0 for k, w in enumerate(weights) if k != exact[0]) else None
    out: dict[str, torch.Tensor] = {}
    for key, first in state_dicts[0].items():
        if only is not None:  # every dtype: alpha = 1 is SN-GAN itself, integer buffers included
            out[key] = state_dicts[only][key].detach().clone()
        elif not (first.is_floating_point() or first.is_complex()):
            out[key] = first.detach().clone()
        else:
            # accumulate in float64 so that the mean of two float32 tensors is the correctly rounded mean
            acc = torch.zeros(first.shape, dtype=torch.complex128 if first.is_complex() else torch.float64)
            for sd, w in zip(state_dicts, weights):
                acc += w * sd[key].detach().to(acc.dtype)
            out[key] = acc.to(first.dtype)
    return out


def interpolate_pair(sn: Mapping[str, torch.Tensor], sn_gan: Mapping[str, torch.Tensor], alpha: float,
                     allow_extrapolation: bool = False) -> dict[str, torch.Tensor]:
    """theta(alpha) = (1 - alpha) theta_SN + alpha theta_SN-GAN."""
    return interpolate_state_dicts([sn, sn_gan], alpha_weights(alpha, allow_extrapolation),
                                   allow_extrapolation=allow_extrapolation, names=["sn", "sn-gan"])
