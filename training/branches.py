"""Training an SN with one set of cascades per acceleration (SNConfig.accel_branches) from scratch.

The run is split into stages, one per branch in the order of accel_branches, each an equal share of the
epochs. A stage draws only the accelerations nearest its branch, restarts the learning-rate decay, and
starts its branch from the weights the previous stage trained (a curriculum from the easier
acceleration to the harder one; docs/experiments/cpu-preset.md). Fine-tuning a routed SN (SN-GAN, or SN
with --init-from) needs no stages: every slice trains the branch its mask routes it to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from dnirecon.routing import nearest_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    branch: int
    accels: tuple[float, ...]  # the run's accelerations nearest this branch
    first_epoch: int
    end_epoch: int  # exclusive
    source: int | None  # the branch this one starts from (the previous stage's); None for the first

    def describe(self, branches: Sequence[float]) -> str:
        start = f", starting from the {branches[self.source]:g}x branch" if self.source is not None else ""
        accels = " ".join(f"{a:g}" for a in self.accels)
        return f"{branches[self.branch]:g}x branch: epochs {self.first_epoch + 1}-{self.end_epoch} on --accel {accels}{start}"


def nearest_branch(accel: float, branches: Sequence[float]) -> int:
    """The branch a mask of acceleration `accel` runs (the rule SensitivityNetwork.branch_of applies to
    a mask's sampled fraction)."""
    return int(nearest_set(1.0 / accel, branches))


def branch_stages(model_config: Mapping, accels: Sequence[float], epochs: int) -> list[Stage] | None:
    """The stages of a from-scratch run of an SN with `model_config`, or None for one stage with every
    slice training the branch its mask routes it to: an SN with one branch, or fewer epochs than
    stages (a smoke run; logged).

    A branch none of `accels` routes to gets no stage and keeps its initial weights (logged; the
    registry's acceleration tag says which accelerations a version was trained on)."""
    branches = tuple(model_config.get("accel_branches") or ())
    if not branches:
        return None
    owned = [(b, tuple(a for a in accels if nearest_branch(float(a), branches) == b)) for b in range(len(branches))]
    for b, a in owned:
        if not a:
            log.warning("the %gx branch is not trained: none of --accel %s is nearest to it", branches[b],
                        " ".join(f"{x:g}" for x in accels))
    owned = [(b, a) for b, a in owned if a]
    if epochs < len(owned):
        log.warning("%d epoch(s) for %d branches: all of them train at once, each on the slices routed to it, "
                    "without starting one from another", epochs, len(owned))
        return None
    if len(owned) == 1:
        return None
    cuts = [i * epochs // len(owned) for i in range(len(owned) + 1)]
    return [Stage(b, a, cuts[i], cuts[i + 1], owned[i - 1][0] if i else None) for i, (b, a) in enumerate(owned)]


def stage_at(stages: Sequence[Stage], epoch: int) -> Stage:
    return next(s for s in stages if s.first_epoch <= epoch < s.end_epoch)


def branch_parameters(model: torch.nn.Module, branch: int) -> list[torch.nn.Parameter]:
    """The weights of one branch of a routed SN: its cascades' Down-Up networks and DC weights."""
    return [p for pair in model.branch_modules(branch) for m in pair for p in m.parameters()]


def frozen_in(model: torch.nn.Module, stage: Stage | None) -> tuple[torch.nn.Parameter, ...]:
    """The weights a stage leaves alone: every branch but its own. A slice whose mask routes it to
    another branch (an 8x mask that sampled more columns than most) then moves nothing, rather than
    training that branch at the stage's learning rate; () outside stages."""
    if stage is None:
        return ()
    return tuple(p for b in range(len(model.config.accel_branches)) if b != stage.branch
                 for p in branch_parameters(model, b))


def start_branch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: Stage) -> None:
    """Copy the source branch's weights into the stage's branch and forget the optimiser's state for
    them (slices whose masks routed there during earlier stages moved the weights being replaced)."""
    with torch.no_grad():
        for dst, src in zip(branch_parameters(model, stage.branch), branch_parameters(model, stage.source)):
            dst.copy_(src)
            optimizer.state.pop(dst, None)
