"""Cartesian undersampling masks with fastMRI 0.3.0's semantics, in numpy (no torch).

`RandomMaskFunc` and `EquispacedMaskFractionFunc` draw the same masks as fastmri.data.subsample for
the same seed, shape and settings (a test compares them). `mask_for` is what the rest of dnirecon
calls: one 1-D mask per slice with the project's centre fractions, padding columns zeroed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np

from dnirecon.errors import ConfigError

Seed = int | tuple[int, ...] | None


@contextlib.contextmanager
def _temp_seed(rng: np.random.RandomState, seed: Seed):
    """Reseed the legacy RandomState for one call and restore its state afterwards (fastMRI's way)."""
    if seed is None:
        yield
        return
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


class MaskFunc:
    """Centre columns plus outer columns chosen by a subclass.

    shape follows fastMRI: the k-space shape with a trailing real/imag axis, so columns are shape[-2];
    the mask comes back float32 with shape [1, ..., num_cols, 1].
    """

    def __init__(self, center_fractions: Sequence[float], accelerations: Sequence[float],
                 allow_any_combination: bool = False, seed: int | None = None):
        if len(center_fractions) != len(accelerations) and not allow_any_combination:
            raise ConfigError(
                f"mask: {len(center_fractions)} centre fractions for {len(accelerations)} accelerations, "
                "expected one per acceleration (or allow_any_combination)"
            )
        self.center_fractions = center_fractions
        self.accelerations = accelerations
        self.allow_any_combination = allow_any_combination
        self.rng = np.random.RandomState(seed)

    def __call__(self, shape: Sequence[int], offset: int | None = None, seed: Seed = None
                 ) -> tuple[np.ndarray, int]:
        if len(shape) < 3:
            raise ConfigError(f"mask shape {tuple(shape)} has {len(shape)} axes, expected 3 or more "
                              "(..., columns, 2) as in fastMRI")
        with _temp_seed(self.rng, seed):
            center, accel, num_low = self.sample_mask(shape, offset)
        return np.maximum(center, accel), num_low

    def sample_mask(self, shape: Sequence[int], offset: int | None) -> tuple[np.ndarray, np.ndarray, int]:
        num_cols = shape[-2]
        center_fraction, acceleration = self.choose_acceleration()
        num_low = round(num_cols * center_fraction)
        center = self._reshape(self.calculate_center_mask(shape, num_low), shape)
        accel = self._reshape(self.calculate_acceleration_mask(num_cols, acceleration, offset, num_low), shape)
        return center, accel, num_low

    @staticmethod
    def _reshape(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        out_shape = [1] * len(shape)
        out_shape[-2] = shape[-2]
        return mask.reshape(out_shape).astype(np.float32)

    @staticmethod
    def calculate_center_mask(shape: Sequence[int], num_low: int) -> np.ndarray:
        num_cols = shape[-2]
        mask = np.zeros(num_cols, dtype=np.float32)
        pad = (num_cols - num_low + 1) // 2
        mask[pad:pad + num_low] = 1
        return mask

    def calculate_acceleration_mask(self, num_cols: int, acceleration: float, offset: int | None,
                                    num_low: int) -> np.ndarray:
        raise NotImplementedError

    def choose_acceleration(self) -> tuple[float, float]:
        # the same draws as fastMRI, so the generator state advances identically
        if self.allow_any_combination:
            return self.rng.choice(self.center_fractions), self.rng.choice(self.accelerations)
        choice = self.rng.randint(len(self.center_fractions))
        return self.center_fractions[choice], self.accelerations[choice]


class RandomMaskFunc(MaskFunc):
    """Outer columns kept independently with probability (N/accel - N_low) / (N - N_low)."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):
        prob = (num_cols / acceleration - num_low) / (num_cols - num_low)
        return self.rng.uniform(size=num_cols) < prob


class EquispacedMaskFractionFunc(MaskFunc):
    """Outer columns equally spaced at the rate that gives N/accel columns in total with the centre."""

    def calculate_acceleration_mask(self, num_cols, acceleration, offset, num_low):
        adjusted = (acceleration * (num_low - num_cols)) / (num_low * acceleration - num_cols)
        if offset is None:
            offset = self.rng.randint(0, high=round(adjusted))
        mask = np.zeros(num_cols)
        samples = np.around(np.arange(offset, num_cols - 1, adjusted)).astype(np.uint)
        mask[samples] = 1.0
        return mask


MASK_TYPES = {"random": RandomMaskFunc, "equispaced": EquispacedMaskFractionFunc}


def center_fraction_for(accel: float) -> float:
    """0.08 at 4x, 0.04 at 8x (fastMRI's pairs); 0.32 / accel in between and beyond."""
    return 0.32 / accel


def check_accel(accel: object, option: str = "accel") -> float:
    """The acceleration as a float, or ConfigError naming the option when it is not a positive number."""
    try:
        value = float(accel)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{option} must be a positive number, got {accel!r}") from None
    if isinstance(accel, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option} must be a positive number, got {accel!r}")
    return value


def seed_from(seed: int | str | tuple[int, ...] | None) -> Seed:
    """A file name becomes fastMRI's validation seed tuple(map(ord, fname)); ints pass through."""
    if isinstance(seed, str):
        return tuple(map(ord, seed))
    return seed


def mask_for(accel: float, kind: str = "random", seed: int | str | tuple[int, ...] | None = None,
             width: int = 368, padding: tuple[int, int] | None = None) -> np.ndarray:
    """1-D float32 mask (width,) for one slice: 1 = acquired column.

    seed: None (fresh draw), an int, or a file name for fastMRI's deterministic validation mask.
    padding: acquired columns [left, right); columns outside are zeroed (fastMRI apply_mask).
    """
    accel = check_accel(accel)
    if accel < 1:
        raise ConfigError(f"accel must be >= 1 (1 = fully sampled), got {accel!r}")
    if kind not in MASK_TYPES:
        raise ConfigError(f"mask kind {kind!r} unknown, expected one of {sorted(MASK_TYPES)}")
    if int(width) < 2:
        raise ConfigError(f"mask width must be at least 2 columns, got {width!r}")
    func = MASK_TYPES[kind]([center_fraction_for(accel)], [accel])
    if accel == 1:
        mask = np.ones(int(width), np.float32)
    else:
        mask, _ = func((1, 1, int(width), 2), seed=seed_from(seed))
        mask = mask.reshape(-1).astype(np.float32)
    if padding is not None:
        left, right = int(padding[0]), int(padding[1])
        mask[:left] = 0
        mask[right:] = 0
    return mask
