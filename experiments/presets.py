"""Variant presets for the experiments in this folder: a library preset with another critic or an SN
that sees the sampled fraction, under a name of its own. The library's PRESETS are left as they are;
pass the returned Preset to training.train.train_model."""

from __future__ import annotations

import dataclasses

from training.presets import DiscriminatorConfig, Preset, get_preset


def variant(base: str, disc_chans: int | None = None, disc_layers: int | None = None,
            sampling_input: bool | None = None) -> Preset:
    """`base` with the given changes; its name says what changed (`base` itself when nothing does)."""
    preset = get_preset(base)
    name = base
    if disc_chans is not None or disc_layers is not None:
        disc = DiscriminatorConfig(chans=disc_chans or preset.discriminator.chans,
                                   num_layers=disc_layers or preset.discriminator.num_layers)
        name = f"{name}-disc{disc.chans}x{disc.num_layers}"
        preset = dataclasses.replace(preset, discriminator=disc)
    if sampling_input is not None and sampling_input != preset.sn.sampling_input:
        name = f"{name}-sampling{'on' if sampling_input else 'off'}"
        preset = dataclasses.replace(preset, sn=dataclasses.replace(preset.sn, sampling_input=sampling_input))
    return dataclasses.replace(preset, name=name)
