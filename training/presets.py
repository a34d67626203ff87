"""Model and schedule presets as data: `cpu` (tests, demo: 2 cores) and `paper` (Qin et al., for GPUs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dnirecon.errors import ConfigError


def _check_fields(config: Any, positive_ints: tuple[str, ...], flags: tuple[str, ...]) -> None:
    """ConfigError naming `Class.field` for a field that is not a positive integer / not a bool."""
    for name in positive_ints:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{type(config).__name__}.{name}: expected a positive integer, got {value!r}")
    for name in flags:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{type(config).__name__}.{name}: expected true or false, got {getattr(config, name)!r}")


@dataclass(frozen=True)
class SNConfig:
    """Sensitivity network: `cascades` x (Down-Up network of `blocks` blocks, `width` features; DC)."""

    cascades: int = 10
    width: int = 128
    blocks: int = 2
    dc_weight_init: float = 1.0
    # f > 1: the model works on the central H // f readout rows (the field of view the images are cropped
    # to), e.g. 2 for fastMRI knee k-space (640 readout samples for a 320-pixel image). 1: the full grid.
    readout_oversampling: int = 1
    # True: each Down-Up network also sees the fraction of k-space columns sampled (a constant channel)
    sampling_input: bool = False
    # (a1, a2, ...): one set of cascades (Down-Up networks and DC weights) per acceleration; a slice runs
    # the set whose acceleration is nearest, on a log scale, to 1 / its sampled fraction. (): one set.
    accel_branches: tuple[float, ...] = ()

    def __post_init__(self):
        _check_fields(self, ("cascades", "width", "blocks", "readout_oversampling"),
                      ("sampling_input",))
        branches = self.accel_branches
        if not isinstance(branches, (list, tuple)) or any(
                isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 1 for a in branches):
            raise ConfigError(f"SNConfig.accel_branches: expected a list of accelerations >= 1, got {branches!r}")
        if len(branches) == 1 or list(branches) != sorted(set(branches)):
            raise ConfigError(f"SNConfig.accel_branches: expected none, or two or more accelerations in increasing "
                              f"order without repeats, got {list(branches)}")
        object.__setattr__(self, "accel_branches", tuple(float(a) for a in branches))  # JSON gives a list


@dataclass(frozen=True)
class UNetConfig:
    """fastMRI-style U-Net: `chans` features at the top, `num_pool_layers` poolings."""

    chans: int = 32
    num_pool_layers: int = 4
    drop_prob: float = 0.0


@dataclass(frozen=True)
class DiscriminatorConfig:
    """PatchGAN: `chans` features in the first layer, `num_layers` strided layers."""

    chans: int = 64
    num_layers: int = 3
    # True: the critic also sees the fraction of k-space columns sampled (a constant channel), so it can
    # judge a 4x and an 8x reconstruction by different standards (a conditional GAN)
    sampling_input: bool = False
    # True: one critic per branch of an SN with accel_branches; each image is judged by the critic of the
    # branch that made it, which learns from that acceleration's images alone
    per_branch: bool = False

    def __post_init__(self):
        _check_fields(self, ("chans", "num_layers"), ("sampling_input", "per_branch"))


@dataclass(frozen=True)
class TrainSchedule:
    epochs: int
    lr: float
    batch: int = 1
    optimiser: str = "rmsprop"
    # SN-GAN fine-tuning of an SN with accel_branches: a factor per branch on the LSGAN term of the
    # images that branch makes (training.train.Schedule.branch_adv_weights); (): 1 for every branch
    branch_adv_weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class Preset:
    name: str
    sn: SNConfig
    unet: UNetConfig
    discriminator: DiscriminatorConfig
    sn_schedule: TrainSchedule  # SN from scratch
    finetune_schedule: TrainSchedule  # SN-GAN (and its discriminator) from the trained SN
    unet_schedule: TrainSchedule


PRESETS: dict[str, Preset] = {
    # Paper: 10 cascades, Down-Up width 128 with 2 blocks; SN 50 epochs RMSProp 1e-4; fine-tune 10 at 5e-5.
    "paper": Preset(
        name="paper",
        sn=SNConfig(cascades=10, width=128, blocks=2, readout_oversampling=2),
        unet=UNetConfig(chans=32, num_pool_layers=4),
        discriminator=DiscriminatorConfig(chans=64, num_layers=3),
        sn_schedule=TrainSchedule(epochs=50, lr=1e-4, batch=1, optimiser="rmsprop"),
        finetune_schedule=TrainSchedule(epochs=10, lr=5e-5, batch=1, optimiser="rmsprop"),
        unet_schedule=TrainSchedule(epochs=50, lr=1e-3, batch=1, optimiser="rmsprop"),
    ),
    # 2-core CPU: SN trains in ~17 minutes on the demo's small synthetic volumes (docs/training.md).
    "cpu": Preset(
        name="cpu",
        # accel_branches: cascades of their own for 4x and for 8x, the 8x ones trained from the 4x ones
        # (training.branches; docs/training.md, the eleventh try). sampling_input: each also sees the
        # sampled fraction as a channel (the eighth try), as in the runs that chose the branches.
        sn=SNConfig(cascades=6, width=16, blocks=1, readout_oversampling=2, sampling_input=True,
                    accel_branches=(4.0, 8.0)),
        unet=UNetConfig(chans=16, num_pool_layers=3),
        discriminator=DiscriminatorConfig(chans=16, num_layers=3),
        # batch 1 (twice the updates per CPU second); SN 12 epochs from scratch, then SN and SN-GAN both
        # fine-tuned 2 epochs from it (the paper's schedule); all four runs ~23 min on 2 idle cores
        sn_schedule=TrainSchedule(epochs=12, lr=5e-4, batch=1, optimiser="rmsprop"),
        # branch_adv_weights: a quarter of the LSGAN term for the 4x branch, whose SN keeps most of the
        # detail (HF ratio about 0.95; the full term pushed it past 1, to 1.04-1.06), twice the term for the
        # 8x one, which is far from 1 (about 0.8): the thirteenth try, docs/training.md
        finetune_schedule=TrainSchedule(epochs=2, lr=1e-4, batch=1, optimiser="rmsprop",
                                        branch_adv_weights=(0.25, 2.0)),
        unet_schedule=TrainSchedule(epochs=10, lr=1e-3, batch=1, optimiser="rmsprop"),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"--preset {name!r} is not known; expected one of {sorted(PRESETS)}") from None


def config_to_dict(config: Any) -> dict:
    """A config dataclass as plain data (for config.json next to weights.pt)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict, source: str = "config") -> Any:
    """Rebuild a config dataclass; unknown or missing fields raise ConfigError naming `source`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{source}: cannot build {cls.__name__}: {exc}") from None


__all__ = [
    "SNConfig", "UNetConfig", "DiscriminatorConfig", "TrainSchedule", "Preset", "PRESETS",
    "get_preset", "config_to_dict", "config_from_dict",
]
