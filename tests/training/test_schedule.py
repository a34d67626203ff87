"""Schedules: every value stated by the preset that uses it; the paper's rate is constant."""

import dataclasses

import pytest

from dnirecon.errors import ConfigError
from training.presets import PRESETS, Schedule, get_preset
from training.train import lr_at, schedule_for


def test_a_schedule_has_no_default_values():
    assert [f.name for f in dataclasses.fields(Schedule) if f.default is not dataclasses.MISSING
            or f.default_factory is not dataclasses.MISSING] == []
    with pytest.raises(TypeError):
        Schedule(epochs=1, lr=1e-4)


def test_the_paper_preset_keeps_its_learning_rates_constant():
    paper = get_preset("paper")
    for sched, lr in ((paper.sn_schedule, 1e-4), (paper.finetune_schedule, 5e-5)):
        assert sched.lr_floor == 1.0
        assert [lr_at(sched, step, 1000) for step in (0, 500, 999)] == [lr, lr, lr]
    assert (paper.finetune_schedule.gamma, paper.finetune_schedule.l1_weight) == (0.1, 1e-3)


def test_the_cpu_preset_decays_by_a_half_cosine_to_a_tenth():
    sched = get_preset("cpu").sn_schedule
    assert sched.lr_floor == 0.1
    assert lr_at(sched, 0, 11) == sched.lr
    assert lr_at(sched, 5, 11) == pytest.approx(sched.lr * 0.55)
    assert lr_at(sched, 10, 11) == pytest.approx(sched.lr * 0.1)


def test_fine_tuned_sn_and_sn_gan_share_one_schedule_and_overrides_apply_to_single_fields():
    for preset in PRESETS.values():
        assert schedule_for(preset, "sn", finetune=True) == schedule_for(preset, "sn-gan") == preset.finetune_schedule
    sched = schedule_for(get_preset("cpu"), "sn", lr=1e-3, epochs=None)
    assert (sched.lr, sched.epochs) == (1e-3, get_preset("cpu").sn_schedule.epochs)
    with pytest.raises(ConfigError, match=r"unknown schedule option\(s\) \['grad_clip'\]"):
        schedule_for(get_preset("cpu"), "sn", grad_clip=1.0)


def test_a_schedule_value_out_of_range_names_the_field():
    base = get_preset("cpu").sn_schedule
    with pytest.raises(ConfigError, match="Schedule.lr_floor"):
        dataclasses.replace(base, lr_floor=0.0)
    with pytest.raises(ConfigError, match="Schedule.epochs"):
        dataclasses.replace(base, epochs=0)
    with pytest.raises(ConfigError, match="Schedule.gamma"):
        dataclasses.replace(base, gamma=float("nan"))
