"""Torch Dataset over fastMRI-layout volumes: one sample per (slice, acceleration draw).

A sample is the masked multi-coil k-space, its mask, the SENSE target cropped to the recon size,
the target's foreground mask, the contrast and the acceleration. Training masks are random per
sample and epoch (but reproducible from the seed); validation masks are fastMRI's deterministic
per-file masks, one sample per slice and acceleration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dnirecon.errors import ConfigError, DataError

CACHE_LIMIT_BYTES = 2 << 30  # keep decoded slices in memory when the dataset is smaller than this


class SliceRef(NamedTuple):
    path: Path
    slice_index: int
    contrast: str


class Sample(NamedTuple):
    kspace: torch.Tensor  # complex64 (C, H, W), zero where not acquired
    mask: torch.Tensor  # float32 (W,)
    target: torch.Tensor  # float32 (h, w) SENSE magnitude, recon size
    foreground: torch.Tensor  # float32 (h, w) 0/1
    contrast: str
    accel: float
    fname: str
    slice_index: int


class DatasetDescription(NamedTuple):
    dataset_id: str
    contrasts: list[str]
    volumes: int
    slices: int
    files: list[str]

    def as_dict(self) -> dict:
        return self._asdict()


def split_dirs(data_dir: Path, val_dir: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Training and validation volumes: `DIR/train` + `DIR/val` when present, else `val_dir`,
    else the last volume of each contrast held out from `DIR`."""
    from dnirecon.fastmri_io import list_volumes

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data {data_dir} is not a directory")
    if val_dir is not None:
        return list_volumes(data_dir), list_volumes(Path(val_dir))
    if (data_dir / "train").is_dir() and (data_dir / "val").is_dir():
        return list_volumes(data_dir / "train"), list_volumes(data_dir / "val")
    files = list_volumes(data_dir)
    if len(files) < 2:
        raise DataError(f"{data_dir} holds {len(files)} volume(s); need 2+ to hold one out for validation "
                        "(or give train/ and val/ subdirectories)")
    by_contrast: dict[str, list[Path]] = {}
    for f in files:
        by_contrast.setdefault(volume_contrast(f), []).append(f)
    val = [fs[-1] for fs in by_contrast.values() if len(fs) > 1] or [files[-1]]
    return [f for f in files if f not in val], val


def volume_contrast(path: Path) -> str:
    from dnirecon.fastmri_io import FastMRIVolume

    with FastMRIVolume(path) as vol:
        return str(vol.attrs.get("acquisition", "unknown"))


def describe_dataset(files: Sequence[Path]) -> DatasetDescription:
    """Dataset id = sha256 of the sorted (file name, size, patient_id) triples; contrasts and counts.

    patient_id joins name and size because synthetic splits reuse file names at equal sizes.
    """
    from dnirecon.fastmri_io import FastMRIVolume

    files = sorted(Path(f) for f in files)
    h = hashlib.sha256()
    contrasts, slices = set(), 0
    for f in files:
        with FastMRIVolume(f) as vol:
            h.update(f"{f.name}:{f.stat().st_size}:{vol.attrs.get('patient_id', '')}\n".encode())
            contrasts.add(str(vol.attrs.get("acquisition", "unknown")))
            slices += vol.num_slices
    return DatasetDescription(h.hexdigest()[:16], sorted(contrasts), len(files), slices, [f.name for f in files])


def sense_target_from_full(kspace: np.ndarray, recon_size: tuple[int, int], fname: str) -> np.ndarray:
    """SENSE magnitude from fully sampled k-space `(C, H, W)` with ACS maps (for real fastMRI files).

    The ACS region is the 4x mask's centre (8 % of the columns): the same kind of maps the model uses.
    """
    from dnirecon.fastmri_io import center_crop
    from training.physics.fft import TORCH_FFT
    from training.physics.sensitivity import acs_maps

    width = kspace.shape[-1]
    acs = np.zeros(width, dtype=np.float32)
    n_low = max(2, int(round(width * 0.08)))
    start = (width - n_low + 1) // 2
    acs[start:start + n_low] = 1.0
    k = torch.from_numpy(np.ascontiguousarray(kspace))[None]
    with torch.no_grad():
        maps = acs_maps(k * torch.from_numpy(acs), torch.from_numpy(acs)[None], TORCH_FFT)
        coils = TORCH_FFT.ifft(k)
        num = (maps.conj() * coils).sum(1)
        den = (maps.abs() ** 2).sum(1).clamp_min(1e-12)
        image = (num / den)[0].abs().numpy()
    if not np.isfinite(image).all():
        raise DataError(f"{fname}: SENSE target from the full k-space is not finite")
    return center_crop(image, recon_size).astype(np.float32)


class SliceDataset(Dataset):
    """Samples for training (`train=True`: random mask per draw) or validation (fixed masks)."""

    def __init__(self, files: Sequence[Path], accels: Sequence[float] = (4.0, 8.0), train: bool = True,
                 seed: int = 0, mask_kind: str = "random", slices_per_volume: int | None = None,
                 cache: bool | None = None):
        from dnirecon.fastmri_io import FastMRIVolume

        if not files:
            raise DataError("no volumes given to the dataset (empty data directory?)")
        accels = [float(a) for a in accels]
        # held-out data may also be read fully sampled (1x), as a reference
        if not accels or any(a < 1 or (train and a == 1) for a in accels):
            raise ConfigError(f"--accel needs values above 1{'' if train else ' (or 1: fully sampled)'}, got {accels}")
        self.accels, self.train, self.seed, self.mask_kind = accels, train, int(seed), mask_kind
        self.epoch = 0
        self.refs: list[SliceRef] = []
        self.headers = {}
        nbytes = 0
        for f in sorted(Path(p) for p in files):
            with FastMRIVolume(f) as vol:
                n = vol.num_slices
                contrast = str(vol.attrs.get("acquisition", "unknown"))
                self.headers[f] = vol.header
                # central slices carry the anatomy; edge slices of a volume are mostly noise
                chosen = _central(n, slices_per_volume)
                nbytes += len(chosen) * int(np.prod(vol.kspace(chosen[0]).shape)) * 8 if chosen else 0
            self.refs += [SliceRef(f, i, contrast) for i in chosen]
        self.cache_enabled = nbytes < CACHE_LIMIT_BYTES if cache is None else cache
        self._cache: dict[tuple[Path, int], tuple] = {}

    def set_epoch(self, epoch: int) -> None:
        """Training masks depend on (seed, epoch, index): set before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs) * (1 if self.train else len(self.accels))

    def contrasts(self) -> list[str]:
        return sorted({r.contrast for r in self.refs})

    def _slice(self, ref: SliceRef):
        key = (ref.path, ref.slice_index)
        if key in self._cache:
            return self._cache[key]
        from dnirecon.fastmri_io import FastMRIVolume
        from dnirecon.foreground import foreground_mask

        with FastMRIVolume(ref.path) as vol:
            kspace = vol.kspace(ref.slice_index)
            hdr = vol.header
            target = vol.target(ref.slice_index, kind="sense")
            if target is None:
                target = sense_target_from_full(kspace, tuple(hdr.recon_size), ref.path.name)
        target = np.asarray(target, dtype=np.float32)
        fg = foreground_mask(target).astype(np.float32)
        item = (np.ascontiguousarray(kspace, dtype=np.complex64), target, fg, hdr)
        if self.cache_enabled:
            self._cache[key] = item
        return item

    def _mask(self, ref: SliceRef, accel: float, width: int, hdr, draw_seed: int | None) -> np.ndarray:
        from dnirecon.subsample import mask_for

        seed = ref.path.name if draw_seed is None else draw_seed
        mask = mask_for(accel, kind=self.mask_kind, seed=seed, width=width,
                        padding=(hdr.padding_left, hdr.padding_right))
        return np.asarray(mask, dtype=np.float32).reshape(width)

    def __getitem__(self, index: int) -> Sample:
        if self.train:
            ref = self.refs[index]
            # one reproducible draw per (seed, epoch, index): same masks whatever the worker count
            rng = np.random.default_rng([self.seed, self.epoch, index])
            accel = self.accels[int(rng.integers(len(self.accels)))]
            draw_seed = int(rng.integers(2**31 - 1))
        else:
            ref = self.refs[index // len(self.accels)]
            accel = self.accels[index % len(self.accels)]
            draw_seed = None  # fastMRI's per-file validation mask
        kspace, target, fg, hdr = self._slice(ref)
        mask = self._mask(ref, accel, kspace.shape[-1], hdr, draw_seed)
        masked = kspace * mask[None, None, :]
        return Sample(torch.from_numpy(masked), torch.from_numpy(mask), torch.from_numpy(target),
                      torch.from_numpy(fg), ref.contrast, accel, ref.path.name, ref.slice_index)


def _central(n: int, keep: int | None) -> list[int]:
    if keep is None or keep >= n:
        return list(range(n))
    start = (n - keep) // 2
    return list(range(start, start + keep))


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack a batch; the k-space of all samples must share (C, H, W) (one protocol per batch)."""
    shapes = {tuple(s.kspace.shape) for s in samples}
    if len(shapes) != 1:
        raise DataError(f"a batch mixes k-space shapes {sorted(shapes)}; use batch size 1 for mixed protocols")
    return Sample(
        torch.stack([s.kspace for s in samples]), torch.stack([s.mask for s in samples]),
        torch.stack([s.target for s in samples]), torch.stack([s.foreground for s in samples]),
        [s.contrast for s in samples], [s.accel for s in samples], [s.fname for s in samples],
        [s.slice_index for s in samples])
