"""The varied generator (`SynthConfig(vary=True)`, `dnirecon data synth --vary`): what it draws and how often."""

import math
import re
from collections import Counter

import h5py
import numpy as np
import pytest

from fastmri.data import SliceDataset
from commands.cli import main
from dnirecon.errors import ConfigError
from dnirecon.fastmri_io import FastMRIVolume
from dnirecon.fftc import ifft2c
from training import synth
from training.outside import noise_reference
from training.synth import COIL_COUNTS, NOISE_LEVELS, SynthConfig, draw_acquisition, synth_volume

DRAWS = 2000  # cheap (the draws only): bounds below are about 3.5 standard errors


@pytest.fixture(scope="module")
def draws():
    # the first draws of each volume's stream, seeded as `synthesize` seeds volume i of contrast 0
    return [draw_acquisition((96, 96), np.random.default_rng(np.random.SeedSequence([s, 0, 0])))
            for s in range(DRAWS)]


@pytest.fixture(scope="module")
def varied_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("varied")
    synth.synthesize(out, SynthConfig(volumes_per_contrast=3, slices=2, recon_size=(48, 48), seed=11, vary=True))
    return out


def test_noise_levels_span_one_to_eight_percent_log_uniformly(draws):
    levels = np.array([d.noise_level for d in draws])
    lo, hi = NOISE_LEVELS
    assert levels.min() >= lo and levels.max() <= hi
    assert levels.min() < 1.1 * lo and levels.max() > 0.9 * hi
    # log-uniform: the median sits at the geometric mean (0.0283), not the arithmetic one (0.045)
    assert np.median(levels) == pytest.approx(math.sqrt(lo * hi), rel=0.08)
    third = np.histogram(np.log(levels), bins=3, range=(math.log(lo), math.log(hi)))[0] / DRAWS
    np.testing.assert_allclose(third, 1 / 3, atol=0.035)


def test_coil_counts_occur_about_equally_often(draws):
    counts = Counter(d.coils for d in draws)
    assert set(counts) == set(COIL_COUNTS)
    for c in COIL_COUNTS:
        assert counts[c] / DRAWS == pytest.approx(1 / len(COIL_COUNTS), abs=0.03), c


def test_geometries_contents_and_orientations_are_even_coin_flips(draws):
    for field in ("geometry", "content", "transpose", "flip_rows", "flip_cols"):
        values = Counter(getattr(d, field) for d in draws)
        assert len(values) == 2, field
        assert max(values.values()) / DRAWS < 0.54, (field, values)


def test_recon_sizes_are_even_within_a_sixth_and_average_the_requested_pixel_count(draws):
    sides = np.array([d.recon_size for d in draws])
    assert np.all(sides % 2 == 0) and sides.min() == 80 and sides.max() == 112
    assert len({tuple(s) for s in sides}) > 250  # 17 x 17 even sizes
    assert np.mean(sides[:, 0] * sides[:, 1]) == pytest.approx(96 * 96, rel=0.015)


@pytest.mark.parametrize("seed", [3, 8, 21])
def test_recorded_noise_level_matches_the_noise_in_the_kspace(seed):
    def vol(scale):
        cfg = SynthConfig(slices=2, recon_size=(48, 48), noise_scale=scale, vary=True)
        return synth_volume(cfg, "pd", np.random.SeedSequence([seed, 0, 0]))

    noisy, clean = vol(1.0), vol(0.0)  # noise_scale 0: the same draws without noise
    np.testing.assert_array_equal(noisy.sensitivity_maps, clean.sensitivity_maps)
    left, right = synth.acquired_columns(noisy.kspace.shape[-1])
    diff = (noisy.kspace - clean.kspace)[..., left:right]
    measured = math.sqrt(np.mean(np.abs(diff.astype(np.complex128)) ** 2))  # mixing keeps mean coil variance 1
    expected = noisy.attrs["noise_level"] * noise_reference(clean.reconstruction_sense)
    assert NOISE_LEVELS[0] <= noisy.attrs["noise_level"] <= NOISE_LEVELS[1]
    assert measured == pytest.approx(expected, rel=0.10)
    assert noisy.attrs["noise_sd"] == pytest.approx(expected, rel=1e-6)


def test_varied_target_is_the_noise_free_image_while_the_kspace_and_rss_carry_the_noise():
    def vol(scale):
        cfg = SynthConfig(slices=2, recon_size=(48, 48), noise_scale=scale, vary=True)
        return synth_volume(cfg, "pd", np.random.SeedSequence([5, 0, 0]))

    noisy, clean = vol(1.0), vol(0.0)
    np.testing.assert_array_equal(noisy.reconstruction_sense, clean.reconstruction_sense)
    assert not np.array_equal(noisy.kspace, clean.kspace)
    assert np.abs(noisy.reconstruction_rss - clean.reconstruction_rss).mean() > 0.1 * noisy.attrs["noise_sd"]


def test_noise_in_the_air_of_each_file_matches_its_recorded_sd(varied_dir):
    for path in sorted(varied_dir.glob("*.h5")):
        with FastMRIVolume(path) as vol:
            k = np.stack([vol.kspace(i) for i in range(vol.num_slices)]).astype(np.complex128)
            acquired = (vol.header.padding_right - vol.header.padding_left) / k.shape[-1]
        with h5py.File(path) as f:
            recorded = float(f.attrs["noise_sd"])
        # the ends of the 2x oversampled readout hold no object, whatever the content and orientation
        air = ifft2c(k)[..., np.r_[0:4, -4:0], :]
        measured = math.sqrt(np.mean(np.abs(air) ** 2) / acquired)  # zeroed padding removes its share
        assert measured == pytest.approx(recorded, rel=0.10), path.name


def test_files_record_what_was_drawn_and_keep_the_fastmri_layout(varied_dir):
    files = sorted(varied_dir.glob("*.h5"))
    assert len(files) == 6
    for path in files:
        with h5py.File(path) as f:
            k = f["kspace"]
            coils, (h, w) = int(f.attrs["coils"]), tuple(int(v) for v in f.attrs["recon_size"])
            assert k.shape[:2] == (2, coils) and k.shape[2] == 2 * h and k.dtype == np.complex64
            assert f["reconstruction_rss"].shape == (2, h, w) == f["reconstruction_sense"].shape
            assert f.attrs["coil_geometry"] in ("cylinder", "plates")
            assert f.attrs["content"] in ("knee", "shapes")
            assert re.fullmatch(r"none|(transpose|flip_rows|flip_cols)(\+flip_rows|\+flip_cols)*",
                                f.attrs["orientation"])
            header = f["ismrmrd_header"][()].decode()
            assert f"<receiverChannels>{coils}</receiverChannels>" in header
            # the seed of volume (seed 11, contrast, i) drew exactly what the file records
            contrast = 0 if "_pd_" in path.name else 1
            drawn = draw_acquisition((48, 48), np.random.default_rng(
                np.random.SeedSequence([11, contrast, int(path.stem[-3:])])))
            assert (drawn.coils, drawn.recon_size, drawn.orientation) == (coils, (h, w), f.attrs["orientation"])
        with FastMRIVolume(path) as vol:
            assert vol.header.recon_size == (h, w) and vol.header.enc_size == (2 * h, k.shape[3])
            left, right = vol.header.padding_left, vol.header.padding_right
            kspace, maps = vol.kspace(1), vol.maps(1)
            assert not np.any(kspace[..., :left]) and not np.any(kspace[..., right:])
            np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, 0), 1.0, rtol=1e-5)
    assert len(SliceDataset(varied_dir, challenge="multicoil", use_dataset_cache=False)) == 12


def test_same_seed_gives_bit_identical_files(varied_dir, tmp_path):
    synth.synthesize(tmp_path, SynthConfig(volumes_per_contrast=3, slices=2, recon_size=(48, 48), seed=11,
                                           vary=True))
    for path in sorted(varied_dir.glob("*.h5")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_default_output_is_unchanged_by_the_option():
    # values written by the generator before variation existed (same seed, no --vary)
    cfg = SynthConfig(volumes_per_contrast=1, slices=2, coils=3, recon_size=(32, 32))
    vol = synth_volume(cfg, "pdfs", np.random.SeedSequence([4, 1, 0]))
    np.testing.assert_allclose(vol.kspace[1, 2, 32, 14:18],
                               [1.96426627e-05 - 5.3993044e-06j, 5.96078353e-05 + 2.4077324e-05j,
                                2.89649579e-05 + 1.8801466e-05j, -1.05305306e-04 - 6.4413071e-05j], rtol=1e-5)
    np.testing.assert_allclose(vol.reconstruction_sense[0, 16, 12:16],
                               [7.1395466e-06, 7.3868450e-06, 4.8373431e-06, 6.7864698e-06], rtol=1e-5)
    assert float(vol.reconstruction_sense.astype(np.float64).sum()) == pytest.approx(0.0373550125, rel=1e-6)
    assert "noise_level" not in vol.attrs and vol.kspace.shape == (2, 3, 64, 36)


def test_both_coil_geometries_give_distinct_normalised_maps():
    grid = synth._Grid((48, 48), 56)
    for geometry in ("cylinder", "plates"):
        loops = synth.varied_loops(8, geometry, np.random.default_rng(1))
        maps = synth.normalise_maps(synth.loop_fields(loops, 0.0, grid))
        assert maps.shape == (8, 96, 56) and np.all(np.isfinite(maps))
        np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, 0), 1.0, rtol=1e-9)
        # no two elements alike (opposite plates may match in magnitude mid-slab, never in phase too)
        flat = maps.reshape(8, -1)
        coherence = np.abs(flat @ flat.conj().T) / np.outer(*2 * [np.linalg.norm(flat, axis=1)])
        assert coherence[~np.eye(8, dtype=bool)].max() < 0.98, geometry


def test_vary_with_a_fixed_encoded_width_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--enc-width cannot be combined with --vary"):
        synth.synthesize(tmp_path, SynthConfig(vary=True, enc_width=120))
    assert list(tmp_path.iterdir()) == []


def test_cli_vary_writes_varied_files(tmp_path):
    rc = main(["data", "synth", "--out", str(tmp_path), "--volumes-per-contrast", "1", "--slices", "1",
               "--recon-size", "32", "32", "--contrasts", "pd", "--seed", "5", "--vary"])
    assert rc == 0
    with h5py.File(tmp_path / "synth_pd_000.h5") as f:
        assert NOISE_LEVELS[0] <= f.attrs["noise_level"] <= NOISE_LEVELS[1]
        assert f["kspace"].shape[1] == f.attrs["coils"] and f.attrs["coils"] in COIL_COUNTS


def test_figure_of_varied_volumes_is_one_png(tmp_path):
    out = synth.figure_varied(tmp_path / "varied.png", recon_size=(32, 32), volumes=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["varied.png"]
