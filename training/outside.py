"""Multi-coil data the synthetic generator did not make, in the fastMRI layout, reproducible from a seed.

Two sources, each with separate tuning and reported items (`ITEMS`):

- "brain": real MR slices that nibabel ships (`nibabel/tests/data/example4d.nii.gz`, a 128 x 96 x 24
  EPI head volume, under nibabel's MIT licence), given simulated loop-coil arrays (the synthetic
  generator's Biot-Savart coils, count and rotation varying per item) and a smooth random phase.
- "phantom": ISMRMRD's own generator (`ismrmrd_generate_cartesian_shepp_logan` from Debian's
  ismrmrd-tools, birdcage coils) when it is on the PATH, else scikit-image's Shepp-Logan phantom with
  simulated coils; `phantom_generator()` says which, and every file records it (attr `outside_source`).

Noise: complex Gaussian, white across coils, sd per k-space sample (= per coil pixel, orthonormal FFT)
equal to `noise_level` x the mean of the clean image over its foreground; levels 2 %, 3 % and 5 % give
image SNRs of 50, 33 and 20. The SENSE target (`reconstruction_sense`) is the noise-free image through
the same acquired band, the reference a perfect reconstruction of the noisy data would approach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dnirecon.errors import DataError
from dnirecon.files import replaced_on_success

ISMRMRD_GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"
BRAIN_FILE = "example4d.nii.gz"
TUNING, REPORTED = "tuning", "reported"


@dataclass(frozen=True)
class OutsideItem:
    """One volume to build: its content (brain slice indices or phantom matrix), coils, noise, seed."""

    source: str  # "brain" or "phantom"
    role: str  # TUNING or REPORTED
    name: str
    coils: int
    noise_level: float  # noise sd over the mean foreground signal
    seed: int
    slices: tuple[int, ...] = ()  # brain: slice indices of the EPI volume
    timepoint: int = 0  # brain: which of the two EPI volumes
    matrix: int = 96  # phantom: reconstructed matrix (square)
    repeats: int = 2  # phantom: slices (new noise and, for simulated coils, a shifted array each)


# Tuning and reported items never share content slices (brain) or matrix/coil set-ups (phantom), nor seeds.
ITEMS: tuple[OutsideItem, ...] = (
    OutsideItem("brain", TUNING, "brain_tune_a", coils=6, noise_level=0.03, seed=9100, slices=(7, 9)),
    OutsideItem("brain", TUNING, "brain_tune_b", coils=10, noise_level=0.05, seed=9101, slices=(8, 10), timepoint=1),
    OutsideItem("brain", REPORTED, "brain_a", coils=8, noise_level=0.02, seed=9200, slices=(12, 14)),
    OutsideItem("brain", REPORTED, "brain_b", coils=12, noise_level=0.05, seed=9201, slices=(13, 15), timepoint=1),
    OutsideItem("phantom", TUNING, "phantom_tune_a", coils=6, noise_level=0.03, seed=9300, matrix=80),
    OutsideItem("phantom", REPORTED, "phantom_a", coils=8, noise_level=0.02, seed=9400, matrix=96),
    OutsideItem("phantom", REPORTED, "phantom_b", coils=12, noise_level=0.05, seed=9401, matrix=112),
)
SOURCES = ("brain", "phantom")


def phantom_generator() -> str:
    """Which phantom acquisition this machine makes: the ISMRMRD tool's name, or scikit-image's."""
    return ISMRMRD_GENERATOR if shutil.which(ISMRMRD_GENERATOR) else "skimage.data.shepp_logan_phantom"


def brain_slices() -> np.ndarray:
    """nibabel's example EPI volume as float64 (timepoints, slices, 128, 96), scaled to a 99.5 % peak of 1."""
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / BRAIN_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing (expected the MR volume that nibabel's wheel ships)")
    data = np.asarray(nibabel.load(str(path)).get_fdata(), np.float64)  # (128, 96, 24, 2)
    data = np.transpose(data, (3, 2, 0, 1))
    return data / np.percentile(data, 99.5)


def _grid_and_pad(recon_size: tuple[int, int]):
    from training.synth import _Grid, acquired_columns

    enc_w = int(round(recon_size[1] * 1.15))
    return _Grid(recon_size, enc_w), acquired_columns(enc_w)


def simulated_coils(coils: int, recon_size: tuple[int, int], z: float, rng: np.random.Generator) -> np.ndarray:
    """Loop-coil sensitivities (C, 2h, W_enc) with sum_c |S_c|^2 = 1, array rotated at random."""
    from training.synth import coil_fields, coil_layout, normalise_maps

    grid, _ = _grid_and_pad(recon_size)
    layout = coil_layout(coils, rng)
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, coils))[:, None, None]
    return normalise_maps(coil_fields(layout, z, grid) * phase).astype(np.complex64)


def _embed(magnitude: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The magnitude image in the centre of the (2h, W_enc) field of view with a smooth random phase."""
    h, w = magnitude.shape
    out = np.zeros(shape, np.complex128)
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    y, x = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    a, b, c = rng.normal(0, 0.5, 3)
    phase = np.exp(1j * (a * x + b * y + c * (x * x + y * y)))
    out[top:top + h, left:left + w] = magnitude
    return out * phase


def noise_reference(target: np.ndarray) -> float:
    """Mean of the clean magnitude image over its foreground: what noise_level is relative to."""
    from dnirecon.foreground import foreground_mask

    fg = foreground_mask(target)
    return float(target[fg].mean()) if fg.any() else float(target.mean())


def add_noise(kspace: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Complex Gaussian noise of sd `sd` per sample (sd / sqrt 2 in each of real and imaginary)."""
    white = rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
    return (kspace + sd / np.sqrt(2) * white).astype(np.complex64)


@dataclass
class OutsideVolume:
    kspace: np.ndarray  # complex64 (S, C, 2h, W_enc), noisy, zero in the padded columns
    clean: np.ndarray  # the same without noise
    sense: np.ndarray  # float32 (S, h, w) noise-free SENSE target
    header: str  # ISMRMRD XML
    noise_sd: float
    generator: str


def _simulated_volume(item: OutsideItem, images: Sequence[np.ndarray], rng: np.random.Generator,
                      generator: str) -> OutsideVolume:
    from dnirecon.fastmri_io import center_crop
    from dnirecon.fftc import fft2c, ifft2c
    from training.synth import ismrmrd_header

    recon_size = images[0].shape
    grid, pad = _grid_and_pad(recon_size)
    clean, sense = [], []
    for i, mag in enumerate(images):
        maps = simulated_coils(item.coils, recon_size, z=0.2 * (i - (len(images) - 1) / 2), rng=rng)
        k = fft2c((maps * _embed(mag, grid.shape, rng)).astype(np.complex64))
        k[..., :pad[0]] = 0
        k[..., pad[1]:] = 0
        clean.append(k)
        sense.append(center_crop(np.abs(np.sum(np.conj(maps) * ifft2c(k), 0)), recon_size))
    clean_k, sense_t = np.stack(clean).astype(np.complex64), np.stack(sense).astype(np.float32)
    sd = item.noise_level * noise_reference(sense_t)
    noisy = add_noise(clean_k, sd, rng)
    noisy[..., :pad[0]] = 0
    noisy[..., pad[1]:] = 0
    header = ismrmrd_header(recon_size, grid.shape[1], len(images), item.coils, "pd", pad)
    return OutsideVolume(noisy, clean_k, sense_t, header, sd, generator)


def _ismrmrd_phantom(item: OutsideItem, rng: np.random.Generator) -> OutsideVolume:
    from training.data import sense_target_from_full
    from dnirecon.ismrmrd_io import read_ismrmrd

    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "phantom.h5"
        cmd = [ISMRMRD_GENERATOR, "-m", str(item.matrix), "-c", str(item.coils), "-O", "2", "-n", "0",
               "-o", str(raw_path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not raw_path.is_file():
            raise DataError(f"{ISMRMRD_GENERATOR} exited {done.returncode}: {done.stderr.strip()[-300:]!r}")
        raw = read_ismrmrd(raw_path)
    clean_k = np.repeat(raw.kspace[:1], item.repeats, axis=0).astype(np.complex64)
    from dnirecon.fastmri_io import read_header_xml

    hdr = read_header_xml(raw.xml, f"{ISMRMRD_GENERATOR} output")
    sense_t = np.stack([sense_target_from_full(k, hdr.recon_size, item.name) for k in clean_k])
    sd = item.noise_level * noise_reference(sense_t)
    return OutsideVolume(add_noise(clean_k, sd, rng), clean_k, sense_t, raw.xml.decode("utf-8"), sd,
                         ISMRMRD_GENERATOR)


def build_volume(item: OutsideItem, generator: str | None = None) -> OutsideVolume:
    """One item in memory; the same item gives the same arrays on every run."""
    from skimage.transform import resize

    rng = np.random.default_rng(item.seed)
    if item.source == "brain":
        data = brain_slices()
        return _simulated_volume(item, [data[item.timepoint, s] for s in item.slices], rng, f"nibabel {BRAIN_FILE}")
    if item.source != "phantom":
        raise DataError(f"outside item {item.name}: source {item.source!r} unknown, expected one of {SOURCES}")
    generator = generator or phantom_generator()
    if generator == ISMRMRD_GENERATOR:
        return _ismrmrd_phantom(item, rng)
    from skimage.data import shepp_logan_phantom

    mag = resize(shepp_logan_phantom(), (item.matrix, item.matrix), anti_aliasing=True)
    return _simulated_volume(item, [mag] * item.repeats, rng, generator)


NOISE_MEASUREMENT_SAMPLES = 4096  # per channel: the covariance to within about 2 % (1 / sqrt(N))


def noise_measurement(item: OutsideItem, vol: OutsideVolume, samples: int = NOISE_MEASUREMENT_SAMPLES) -> np.ndarray:
    """A noise-only draw (C, samples) complex64 of the volume's receiver noise (white, sd vol.noise_sd), from a
    stream of the item's seed that the volume's own draws do not use."""
    coils = vol.kspace.shape[1]
    return add_noise(np.zeros((coils, samples), np.complex64), vol.noise_sd, np.random.default_rng([item.seed, 1]))


def write_outside_volume(item: OutsideItem, vol: OutsideVolume, path: Path, *,
                         with_noise_measurement: bool = False) -> Path:
    """Write under a temporary name, then rename: never a partial file. with_noise_measurement adds the
    `noise` dataset (noise_measurement)."""
    from dnirecon.fftc import ifft2c, rss
    from dnirecon.fastmri_io import center_crop

    recon_size = vol.sense.shape[-2:]
    rss_t = np.stack([center_crop(rss(ifft2c(k)), recon_size) for k in vol.kspace]).astype(np.float32)
    with replaced_on_success(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=vol.kspace, chunks=(1,) + vol.kspace.shape[1:])
            f.create_dataset("reconstruction_rss", data=rss_t)
            f.create_dataset("reconstruction_sense", data=vol.sense)
            f.create_dataset("ismrmrd_header", data=np.bytes_(vol.header.encode("utf-8")))
            if with_noise_measurement:
                f.create_dataset("noise", data=noise_measurement(item, vol))
            attrs = dict(acquisition=item.source.upper(), max=float(rss_t.max()), norm=float(np.linalg.norm(rss_t)),
                         patient_id=f"{item.name}-{item.seed}", outside_source=vol.generator, outside_role=item.role,
                         outside_coils=item.coils, outside_noise_level=item.noise_level,
                         outside_noise_sd=vol.noise_sd, outside_seed=item.seed)
            for k, v in attrs.items():
                f.attrs[k] = v
    return path


def build_outside(out_dir: str | os.PathLike, items: Sequence[OutsideItem] = ITEMS,
                  generator: str | None = None) -> dict[tuple[str, str], Path]:
    """Write every item as out_dir/<source>/<role>/<name>.h5; returns {(source, role): directory}."""
    out = Path(out_dir)
    dirs = {}
    for item in items:
        d = out / item.source / item.role
        write_outside_volume(item, build_volume(item, generator), d / f"{item.name}.h5")
        dirs[(item.source, item.role)] = d
    return dirs
