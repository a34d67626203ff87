"""The generators' optional noise measurement: a noise-only draw of each volume's own noise process,
written as the `noise` dataset without changing anything else the generator writes."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np

from dnirecon.noise import noise_covariance, whitening_matrix
from training import synth
from training.outside import ITEMS, build_volume, noise_measurement, write_outside_volume

SMALL = synth.SynthConfig(volumes_per_contrast=1, slices=1, coils=6, recon_size=(32, 32), seed=5)


def datasets(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f} | {f"attr:{k}": v for k, v in f.attrs.items()}


def test_synth_files_are_bit_identical_with_and_without_the_noise_measurement(tmp_path):
    plain = synth.synthesize(tmp_path / "plain", SMALL)
    noisy = synth.synthesize(tmp_path / "noise", SMALL, with_noise_measurement=True)
    for a, b in zip(plain, noisy):
        da, db = datasets(a), datasets(b)
        assert "noise" not in da and db.pop("noise").shape == (6, synth.NOISE_MEASUREMENT_SAMPLES)
        assert da.keys() == db.keys()
        for name in da:
            assert np.asarray(da[name]).tobytes() == np.asarray(db[name]).tobytes(), name


def test_synth_noise_measurement_has_the_volume_s_correlated_noise_covariance():
    vol = synth.synth_volume(SMALL, "pd", np.random.SeedSequence([5, 0, 0]))
    noise = synth.noise_measurement(vol, np.random.default_rng(1), samples=20000)
    assert noise.dtype == np.complex64 and noise.shape == (6, 20000)
    truth = vol.noise_sd**2 * vol.noise_mixing @ vol.noise_mixing.conj().T
    W = whitening_matrix(truth)  # whitened with the true covariance, the draw's covariance is the identity
    assert np.abs(W @ noise_covariance(noise) @ W.conj().T - np.eye(6)).max() < 0.05
    def correlation(psi):
        d = np.sqrt(np.diag(psi).real)
        return psi / np.outer(d, d)

    assert np.abs(correlation(truth) - np.eye(6)).max() > 0.05  # the process is correlated across coils
    assert np.abs(correlation(noise_covariance(noise)) - correlation(truth)).max() < 0.03  # and so is the draw


def test_a_noise_free_synth_volume_gets_no_noise_dataset(tmp_path):
    (path,) = synth.synthesize(tmp_path, dataclasses.replace(SMALL, noise_scale=0.0, contrasts=("pd",)),
                               with_noise_measurement=True)
    with h5py.File(path, "r") as f:
        assert "noise" not in f


def test_outside_noise_measurement_is_white_at_the_volume_s_noise_sd_and_leaves_the_file_as_it_was(tmp_path):
    item = dataclasses.replace(ITEMS[5], matrix=48, repeats=1)  # a reported phantom item, small
    vol = build_volume(item, generator="skimage.data.shepp_logan_phantom")
    noise = noise_measurement(item, vol)
    psi = noise_covariance(noise) / vol.noise_sd**2
    assert np.abs(psi - np.eye(item.coils)).max() < 0.06  # 4096 samples: about 1.6 % per entry
    plain = write_outside_volume(item, vol, tmp_path / "plain.h5")
    with_noise = write_outside_volume(item, vol, tmp_path / "noise.h5", with_noise_measurement=True)
    da, db = datasets(plain), datasets(with_noise)
    assert db.pop("noise").tobytes() == noise.tobytes()
    assert da.keys() == db.keys()
    for name in da:
        assert np.asarray(da[name]).tobytes() == np.asarray(db[name]).tobytes(), name
