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
    # The coil maps (ACS low-resolution images over their RSS) are tapered to zero where that RSS falls
    # below this fraction of its peak, n^2 / (n^2 + (f peak)^2): maps confined to the object, as ESPIRiT's
    # crop confines its own, so the SENSE combination does not carry noise from the air. 0: no taper.
    maps_support: float = 0.05

    def __post_init__(self):
        _check_fields(self, ("cascades", "width", "blocks", "readout_oversampling"),
                      ("sampling_input",))
        ms = self.maps_support
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms < 1:
            raise ConfigError(f"SNConfig.maps_support: expected a fraction of the peak in [0, 1), got {ms!r}")
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

    def __post_init__(self):
        _check_fields(self, ("chans", "num_layers"), ())


@dataclass(frozen=True)
class Schedule:
    """How one model is trained. A preset states every field; CLI options override single fields.

    The optimiser is RMSProp (the paper's). `lr` decays by a half cosine to `lr * lr_floor` over the run
    (over each stage of a staged SN run): 1.0 keeps it constant. The SN-GAN fields (`gamma` and after)
    act only in an adversarial run.
    """

    epochs: int
    lr: float
    lr_floor: float
    batch_size: int
    l1_weight: float  # lambda of L_SN = 1 - SSIM + lambda * L1
    slices_per_volume: int | None  # central slices used per training volume; None: all
    gamma: float  # weight of L_SN in the SN-GAN loss
    adv_weight: float  # weight of the LSGAN generator term
    critic_steps: int  # discriminator updates per generator update
    disc_lr: float | None  # discriminator learning rate; None: the same as lr
    # a factor per SN branch (accel_branches order) on the LSGAN term of the images that branch makes;
    # (): 1 for every branch
    branch_adv_weights: tuple[float, ...]

    def __post_init__(self):
        _check_fields(self, ("epochs", "batch_size", "critic_steps"), ())
        for name in ("lr", "lr_floor", "l1_weight", "gamma", "adv_weight") + (("disc_lr",) if self.disc_lr else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"Schedule.{name}: expected a finite number >= 0, got {value!r}")
        if not 0 < self.lr_floor <= 1:
            raise ConfigError(f"Schedule.lr_floor: expected a factor in (0, 1] (1: constant rate), got {self.lr_floor!r}")
        object.__setattr__(self, "branch_adv_weights", tuple(self.branch_adv_weights))  # JSON gives a list


@dataclass(frozen=True)
class Preset:
    name: str
    sn: SNConfig
    unet: UNetConfig
    discriminator: DiscriminatorConfig
    sn_schedule: Schedule  # SN from scratch
    finetune_schedule: Schedule  # SN-GAN, and SN with --init-from, from the trained SN
    unet_schedule: Schedule

    def schedule(self, kind: str, finetune: bool = False) -> Schedule:
        """The schedule of `kind`; an SN fine-tuned from a trained SN gets SN-GAN's (the paper's twin runs)."""
        if kind == "sn-gan" or (kind == "sn" and finetune):
            return self.finetune_schedule
        return {"sn": self.sn_schedule, "unet": self.unet_schedule}[kind]


# the paper's loss weights (Eq. 1 and 2 of the ISMRM abstract); the cpu preset keeps them
_PAPER_LOSS = dict(l1_weight=1e-3, gamma=0.1, adv_weight=1.0, critic_steps=1)

PRESETS: dict[str, Preset] = {
    # Qin et al., ISMRM 2020; each value is traced to its source in docs/training.md
    "paper": Preset(
        name="paper",
        sn=SNConfig(cascades=10, width=128, blocks=2, readout_oversampling=2),
        unet=UNetConfig(chans=32, num_pool_layers=4),
        discriminator=DiscriminatorConfig(chans=64, num_layers=3),
        sn_schedule=Schedule(epochs=50, lr=1e-4, lr_floor=1.0, batch_size=1, slices_per_volume=None,
                             disc_lr=None, branch_adv_weights=(), **_PAPER_LOSS),
        finetune_schedule=Schedule(epochs=10, lr=5e-5, lr_floor=1.0, batch_size=1, slices_per_volume=None,
                                   disc_lr=None, branch_adv_weights=(), **_PAPER_LOSS),
        unet_schedule=Schedule(epochs=50, lr=1e-3, lr_floor=1.0, batch_size=1, slices_per_volume=None,
                               disc_lr=None, branch_adv_weights=(), **_PAPER_LOSS),
    ),
    # 2 CPU cores, the demo's small synthetic volumes (docs/training.md explains each departure)
    "cpu": Preset(
        name="cpu",
        # cascades of their own for 4x and for 8x, the 8x ones started from the 4x ones (training.branches),
        # each also seeing the sampled fraction as a channel
        sn=SNConfig(cascades=6, width=16, blocks=1, readout_oversampling=2, sampling_input=True,
                    accel_branches=(4.0, 8.0)),
        unet=UNetConfig(chans=16, num_pool_layers=3),
        discriminator=DiscriminatorConfig(chans=16, num_layers=3),
        sn_schedule=Schedule(epochs=18, lr=5e-4, lr_floor=0.1, batch_size=1, slices_per_volume=None,
                             disc_lr=None, branch_adv_weights=(), **_PAPER_LOSS),
        # a quarter of the LSGAN term for the 4x branch, which keeps most of the detail, and twice the
        # term for the 8x branch, which loses more
        finetune_schedule=Schedule(epochs=2, lr=1e-4, lr_floor=0.1, batch_size=1, slices_per_volume=None,
                                   disc_lr=None, branch_adv_weights=(0.25, 2.0), **_PAPER_LOSS),
        unet_schedule=Schedule(epochs=10, lr=1e-3, lr_floor=0.1, batch_size=1, slices_per_volume=None,
                               disc_lr=None, branch_adv_weights=(), **_PAPER_LOSS),
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
    "SNConfig", "UNetConfig", "DiscriminatorConfig", "Schedule", "Preset", "PRESETS",
    "get_preset", "config_to_dict", "config_from_dict",
]
