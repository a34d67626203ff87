import os
import time

import h5py
import numpy as np
import pytest

from fastmri.data import SliceDataset
from commands.cli import main
from dnirecon.errors import ConfigError
from dnirecon.fastmri_io import FastMRIVolume, center_crop
from dnirecon.fftc import ifft2c
from training import synth
from training.synth import SynthConfig, noise_mixing, coil_layout, synth_volume


def test_fastmri_slicedataset_loads_the_files(tiny_dir):
    ds = SliceDataset(tiny_dir, challenge="multicoil", use_dataset_cache=False)
    assert len(ds) == 6
    kspace, mask, target, attrs, fname, sl = ds[4]
    assert kspace.shape == (4, 128, 74) and kspace.dtype == np.complex64
    assert target.shape == (64, 64) and target.dtype == np.float32
    assert attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
    assert (attrs["padding_left"], attrs["padding_right"]) == (3, 71)


def test_layout_matches_the_fastmri_contract(pd_file):
    with h5py.File(pd_file) as f:
        k = f["kspace"][()]
        assert k.shape == (3, 4, 128, 74) and k.dtype == np.complex64
        assert f["reconstruction_rss"].shape == (3, 64, 64) and f["reconstruction_rss"].dtype == np.float32
        assert f["reconstruction_sense"].shape == (3, 64, 64) and f["reconstruction_sense"].dtype == np.float32
        assert f["sensitivity_maps"].shape == k.shape and f["sensitivity_maps"].dtype == np.complex64
        # zero-padded phase columns outside [3, 71), noise-filled inside
        assert not np.any(k[..., :3]) and not np.any(k[..., 71:])
        assert np.all(np.abs(k[..., 3:71]).sum(axis=(0, 1, 2)) > 0)
        rss = f["reconstruction_rss"][()]
        assert f.attrs["max"] == pytest.approx(rss.max(), rel=1e-6)
        assert f.attrs["norm"] == pytest.approx(np.linalg.norm(rss), rel=1e-5)
        assert f.attrs["acquisition"] == "CORPD_FBK" and len(f.attrs["patient_id"]) == 32
        assert 1e-4 <= rss.max() <= 6e-4  # fastMRI intensity scale


def test_targets_are_rss_and_sense_of_the_stored_kspace(pd_file):
    with FastMRIVolume(pd_file) as vol:
        for i in range(vol.num_slices):
            coil_images = ifft2c(vol.kspace(i))
            S = vol.maps(i)
            np.testing.assert_allclose(np.sum(np.abs(S) ** 2, 0), 1.0, rtol=1e-5)
            rss = center_crop(np.sqrt(np.sum(np.abs(coil_images) ** 2, 0)), (64, 64))
            sense = center_crop(np.abs(np.sum(np.conj(S) * coil_images, 0)), (64, 64))
            scale = rss.max()
            np.testing.assert_allclose(vol.target(i, "rss"), rss, atol=1e-5 * scale)
            np.testing.assert_allclose(vol.target(i, "sense"), sense, atol=1e-5 * scale)


def test_fat_is_suppressed_and_snr_lower_in_pdfs(tiny_dir):
    def stats(name):
        with FastMRIVolume(tiny_dir / name) as vol:
            sense = vol.target(1, "sense")
            k = vol.kspace(1)
        # noise level from the air at the ends of the 2x oversampled readout
        noise = np.std(ifft2c(k)[:, :4, 10:-10])
        return sense, noise
    pd, pd_noise = stats("synth_pd_000.h5")
    fs, fs_noise = stats("synth_pdfs_000.h5")
    snr_pd = np.percentile(pd, 99) / pd_noise
    snr_fs = np.percentile(fs, 99) / fs_noise
    assert snr_fs < 0.8 * snr_pd


def test_noise_is_correlated_across_coils():
    layout = coil_layout(8, np.random.default_rng(3))
    A = noise_mixing(layout, np.random.default_rng(3))
    cov = A @ A.conj().T
    corr = np.abs(cov) / np.sqrt(np.outer(np.diag(cov).real, np.diag(cov).real))
    off = corr[~np.eye(8, dtype=bool)]
    assert off.max() > 0.1 and off.max() < 0.9
    assert np.mean(np.diag(cov).real) == pytest.approx(1.0)


def test_same_seed_same_volume_other_seed_other_anatomy():
    cfg = SynthConfig(volumes_per_contrast=1, slices=1, coils=2, recon_size=(32, 32))
    a = synth_volume(cfg, "pd", np.random.SeedSequence([1, 0, 0]))
    b = synth_volume(cfg, "pd", np.random.SeedSequence([1, 0, 0]))
    c = synth_volume(cfg, "pd", np.random.SeedSequence([2, 0, 0]))
    np.testing.assert_array_equal(a.kspace, b.kspace)
    assert np.abs(a.reconstruction_sense - c.reconstruction_sense).mean() > 0.05 * a.reconstruction_sense.mean()


def test_noise_scale_changes_only_the_noise():
    def vol(scale):
        cfg = SynthConfig(volumes_per_contrast=1, slices=2, coils=4, recon_size=(32, 32), noise_scale=scale)
        return synth_volume(cfg, "pdfs", np.random.SeedSequence([5, 1, 0]))

    clean, one, three = vol(0.0), vol(1.0), vol(3.0)
    np.testing.assert_array_equal(one.sensitivity_maps, clean.sensitivity_maps)  # same anatomy and coils
    noise1 = one.kspace - clean.kspace
    assert np.abs(noise1).mean() > 0
    # the same noise draw, three times larger (within float32 rounding of the k-space)
    np.testing.assert_allclose(three.kspace - clean.kspace, 3 * noise1, atol=1e-6 * np.abs(clean.kspace).max())
    assert np.abs(three.kspace - clean.kspace).std() == pytest.approx(3 * np.abs(noise1).std(), rel=1e-3)
    snr = lambda v: clean.reconstruction_sense.mean() / (v.reconstruction_sense - clean.reconstruction_sense).std()  # noqa: E731
    assert 2.5 < snr(one) / snr(three) < 3.5


def test_small_volume_is_fast():
    cfg = SynthConfig(volumes_per_contrast=1, slices=4, coils=8, recon_size=(96, 96))
    t0 = time.perf_counter()
    synth_volume(cfg, "pdfs", np.random.SeedSequence(0))
    assert (time.perf_counter() - t0) / 4 < 1.0  # seconds per slice, on a shared 2-core box


def test_fastmri_size_15_coils():
    cfg = SynthConfig(volumes_per_contrast=1, slices=1, coils=15, recon_size=(320, 320))
    vol = synth_volume(cfg, "pd", np.random.SeedSequence(0))
    assert vol.kspace.shape == (1, 15, 640, 368)
    assert not np.any(vol.kspace[..., :17]) and not np.any(vol.kspace[..., 351:])


def test_write_is_atomic_no_partial_file(tmp_path, monkeypatch):
    cfg = SynthConfig(volumes_per_contrast=1, slices=1, coils=2, recon_size=(16, 16))
    vol = synth_volume(cfg, "pd", np.random.SeedSequence(0))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(synth.h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError):
        synth.write_volume(vol, tmp_path / "synth_pd_000.h5")
    assert os.listdir(tmp_path) == []


def test_cli_synth_writes_named_files(tmp_path):
    rc = main(["data", "synth", "--out", str(tmp_path), "--volumes-per-contrast", "2", "--slices", "1",
               "--coils", "2", "--recon-size", "16", "16", "--enc-width", "20", "--seed", "3"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path)) == ["synth_pd_000.h5", "synth_pd_001.h5",
                                           "synth_pdfs_000.h5", "synth_pdfs_001.h5"]
    with FastMRIVolume(tmp_path / "synth_pdfs_001.h5") as vol:
        assert vol.header.enc_size == (32, 20) and vol.header.acquisition == "CORPDFS_FBK"


def test_cli_synth_noise_measurement_adds_the_noise_dataset(tmp_path):
    rc = main(["data", "synth", "--out", str(tmp_path), "--volumes-per-contrast", "1", "--slices", "1",
               "--coils", "3", "--recon-size", "16", "16", "--contrasts", "pd", "--noise-measurement"])
    assert rc == 0
    with h5py.File(tmp_path / "synth_pd_000.h5", "r") as f:
        assert f["noise"].shape == (3, synth.NOISE_MEASUREMENT_SAMPLES) and f["noise"].dtype == np.complex64


def test_bad_options_raise_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--enc-width must be >= the recon width 32"):
        synth.synthesize(tmp_path, SynthConfig(recon_size=(32, 32), enc_width=30))
    with pytest.raises(ConfigError, match="--recon-size"):
        synth.synthesize(tmp_path, SynthConfig(recon_size=(8, 32)))
    with pytest.raises(ConfigError, match="--noise-scale must be a finite number >= 0, got -1"):
        synth.synthesize(tmp_path, SynthConfig(noise_scale=-1.0))
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--noise-scale", "nan"]) == 2
    assert "--noise-scale must be a finite number >= 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
