"""Outside sources: real MR slices and a phantom acquisition with stated coils and noise, fastMRI layout."""

import dataclasses

import numpy as np
import pytest

from dnirecon.fastmri_io import FastMRIVolume
from training.outside import (ISMRMRD_GENERATOR, ITEMS, REPORTED, TUNING, OutsideItem, build_outside, build_volume,
                              noise_reference, phantom_generator)

SKIMAGE = "skimage.data.shepp_logan_phantom"


def _brain(seed, coils=4, noise=0.05):
    return OutsideItem("brain", TUNING, f"b{seed}", coils=coils, noise_level=noise, seed=seed, slices=(11,))


def test_noise_sd_is_the_stated_fraction_of_the_mean_foreground_signal_over_seeds():
    ratios = []
    for seed in range(6):
        item = _brain(seed, noise=0.05)
        vol = build_volume(item)
        acquired = np.abs(vol.clean).sum(axis=(0, 1, 2)) > 0  # padded columns carry neither
        diff = (vol.kspace - vol.clean)[..., acquired]
        measured = np.sqrt(np.mean(np.abs(diff) ** 2))
        ratios.append(measured / (item.noise_level * noise_reference(vol.sense)))
        assert abs(np.std(diff.real) - np.std(diff.imag)) < 0.05 * np.std(diff.real)  # circular noise
    assert np.all(np.abs(np.array(ratios) - 1) < 0.02)  # ~100k samples per volume: sd within 2 %


@pytest.mark.parametrize("coils", [4, 8, 12])
def test_each_volume_has_the_stated_coil_count_and_the_geometry_varies_over_seeds(coils):
    a, b = build_volume(_brain(1, coils=coils, noise=0.0)), build_volume(_brain(2, coils=coils, noise=0.0))
    assert a.kspace.shape[1] == b.kspace.shape[1] == coils
    # another seed rotates the array: the coil images differ beyond noise (none here)
    assert np.abs(a.clean - b.clean).max() > 0.1 * np.abs(a.clean).max()


def test_the_same_item_gives_the_same_file_contents():
    a, b = build_volume(_brain(3)), build_volume(_brain(3))
    assert np.array_equal(a.kspace, b.kspace) and np.array_equal(a.sense, b.sense)


@pytest.mark.parametrize("generator", [SKIMAGE, ISMRMRD_GENERATOR])
def test_outside_files_pass_the_fastmri_validation_with_a_sense_target(tmp_path, generator):
    import shutil

    if generator == ISMRMRD_GENERATOR and shutil.which(ISMRMRD_GENERATOR) is None:
        pytest.skip(f"{ISMRMRD_GENERATOR} (Debian ismrmrd-tools) is not installed")
    items = [dataclasses.replace(ITEMS[2], slices=(12,)), dataclasses.replace(ITEMS[5], matrix=48, repeats=1)]
    dirs = build_outside(tmp_path, items, generator=generator)
    assert set(dirs) == {("brain", REPORTED), ("phantom", REPORTED)}
    for item in items:
        with FastMRIVolume(dirs[(item.source, item.role)] / f"{item.name}.h5") as vol:
            assert vol.num_coils == item.coils
            assert vol.has_target("sense") and np.isfinite(vol.target(0)).all()
            assert vol.attrs["outside_noise_level"] == item.noise_level
            assert vol.attrs["outside_source"] == (generator if item.source == "phantom" else "nibabel example4d.nii.gz")


def test_phantom_falls_back_to_skimage_without_the_ismrmrd_generator(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert phantom_generator() == SKIMAGE


def test_tuning_and_reported_items_share_no_slice_setup_or_seed():
    tuning = [i for i in ITEMS if i.role == TUNING]
    reported = [i for i in ITEMS if i.role == REPORTED]
    assert {i.source for i in tuning} == {i.source for i in reported} == {"brain", "phantom"}
    assert not {i.seed for i in tuning} & {i.seed for i in reported}
    brain_t = {(i.timepoint, s) for i in tuning if i.source == "brain" for s in i.slices}
    brain_r = {(i.timepoint, s) for i in reported if i.source == "brain" for s in i.slices}
    assert min(abs(a[1] - b[1]) for a in brain_t for b in brain_r) >= 2
    assert not {i.matrix for i in tuning if i.source == "phantom"} & {i.matrix for i in reported if i.source == "phantom"}
