"""Reading fastMRI multi-coil HDF5 volumes (real or synthetic) with validation on open.

The layout is fastMRI's (DESIGN.md contract 1): `kspace (slices, coils, readout, phase)` complex,
`ismrmrd_header` XML, `reconstruction_rss`, attrs `acquisition`, `max`, `norm`, `patient_id`.
Synthetic files add `reconstruction_sense` and `sensitivity_maps` under the same slice layout.
The phase-encode padding comes from the header exactly as fastMRI's SliceDataset computes it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from dnirecon.errors import DataError

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
TARGET_KEYS = {"sense": "reconstruction_sense", "rss": "reconstruction_rss"}


class VolumeHeader(NamedTuple):
    """What the reconstruction needs from the ismrmrd header.

    enc_size: encoded matrix (readout H, phase W) = kspace's last two axes.
    recon_size: reconstructed matrix (h, w) the images are centre-cropped to.
    padding_left / padding_right: acquired phase columns are [padding_left, padding_right).
    acquisition: e.g. "CORPD_FBK" / "CORPDFS_FBK" (attrs), "" when absent.
    """

    enc_size: tuple[int, int]
    recon_size: tuple[int, int]
    padding_left: int
    padding_right: int
    acquisition: str


def _name(h5: h5py.File) -> str:
    return Path(h5.filename).name


def _xml_int(root: ET.Element, path: list[str], fname: str) -> int:
    """Integer text at a namespaced path below the root, or DataError naming the missing element."""
    node = root
    for tag in path:
        node = node.find(f"{{{ISMRMRD_NS}}}{tag}")
        if node is None:
            raise DataError(
                f"ismrmrd_header in {fname} has no {'/'.join(path)} (expected an ISMRMRD header "
                f"with encoding/encodedSpace, reconSpace and encodingLimits/kspace_encoding_step_1)"
            )
    try:
        return int(float(node.text or ""))
    except ValueError:
        raise DataError(
            f"ismrmrd_header in {fname}: {'/'.join(path)} is {node.text!r}, expected an integer"
        ) from None


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_header(path_or_h5: str | os.PathLike | h5py.File) -> VolumeHeader:
    """Parse the ismrmrd header of a fastMRI file (a path or an open h5py.File)."""
    if not isinstance(path_or_h5, h5py.File):
        with _open_h5(Path(path_or_h5)) as h5:
            return read_header(h5)
    h5 = path_or_h5
    fname = _name(h5)
    if "ismrmrd_header" not in h5:
        raise DataError(f"{fname} has no ismrmrd_header dataset (expected the fastMRI ISMRMRD XML header)")
    raw = h5["ismrmrd_header"][()]
    if isinstance(raw, np.ndarray):
        raw = raw.tobytes() if raw.dtype.kind in "SU" else raw.item()
    acq = _decode_attr(h5.attrs.get("acquisition", ""))
    return read_header_xml(raw, fname, str(acq))


def read_header_xml(raw: bytes | str, fname: str, acquisition: str = "") -> VolumeHeader:
    """Parse ISMRMRD header XML (from a fastMRI file or an MRD stream; fname names it in errors)."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataError(f"ismrmrd_header in {fname} is not valid XML ({exc})") from None
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    enc_size = (_xml_int(root, enc + ["x"], fname), _xml_int(root, enc + ["y"], fname))
    recon_size = (_xml_int(root, rec + ["x"], fname), _xml_int(root, rec + ["y"], fname))
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    center = _xml_int(root, lims + ["center"], fname)
    maximum = _xml_int(root, lims + ["maximum"], fname)
    # fastMRI SliceDataset._retrieve_metadata, verbatim arithmetic
    padding_left = enc_size[1] // 2 - center
    padding_right = padding_left + maximum + 1
    if not 0 <= padding_left < padding_right <= enc_size[1]:
        raise DataError(
            f"ismrmrd_header in {fname}: encodingLimits kspace_encoding_step_1 center={center} "
            f"maximum={maximum} give acquired columns [{padding_left}, {padding_right}), expected "
            f"a range inside 0..{enc_size[1]} (encodedSpace matrixSize y)"
        )
    return VolumeHeader(enc_size, recon_size, int(padding_left), int(padding_right), acquisition)


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file (expected a fastMRI .h5 volume)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc})") from None


class FastMRIVolume:
    """One fastMRI multi-coil volume, validated on open. Use as a context manager.

    >>> with FastMRIVolume("file.h5") as vol:
    ...     k = vol.kspace(0)          # complex64 (coils, H, W)
    ...     t = vol.target(0, "sense") # float32 (h, w) or None
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5 = _open_h5(self.path)
        try:
            self._validate()
        except BaseException:
            self._h5.close()
            raise

    def _validate(self) -> None:
        h5, fname = self._h5, self.path.name
        if "kspace" not in h5:
            raise DataError(f"{fname} has no kspace dataset (expected fastMRI multi-coil k-space "
                            f"(slices, coils, readout, phase) complex64)")
        ks = h5["kspace"]
        if not isinstance(ks, h5py.Dataset):
            raise DataError(f"kspace in {fname} is a group, expected a dataset")
        if ks.ndim != 4:
            raise DataError(f"kspace in {fname} has rank {ks.ndim}, expected 4 (slices, coils, readout, phase)")
        if ks.dtype.kind != "c":
            raise DataError(f"kspace in {fname} has dtype {ks.dtype}, expected complex64")
        self.header = read_header(h5)
        if ks.shape[-1] != self.header.enc_size[1]:
            raise DataError(
                f"kspace in {fname} has {ks.shape[-1]} phase columns, expected {self.header.enc_size[1]} "
                f"(ismrmrd_header encodedSpace matrixSize y)"
            )
        h, w = self.header.recon_size
        if h > ks.shape[-2] or w > ks.shape[-1]:
            raise DataError(
                f"ismrmrd_header in {fname}: reconSpace matrixSize {h}x{w} is larger than the "
                f"k-space matrix {ks.shape[-2]}x{ks.shape[-1]}"
            )
        for key in ("reconstruction_rss", "reconstruction_sense"):
            if key in h5:
                t = h5[key]
                if t.ndim != 3 or t.shape[0] != ks.shape[0]:
                    raise DataError(f"{key} in {fname} has shape {t.shape}, expected ({ks.shape[0]}, h, w)")
        if "sensitivity_maps" in h5 and h5["sensitivity_maps"].shape != ks.shape:
            raise DataError(f"sensitivity_maps in {fname} has shape {h5['sensitivity_maps'].shape}, "
                            f"expected the kspace shape {ks.shape}")

    # context manager
    def __enter__(self) -> "FastMRIVolume":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_slices(self) -> int:
        return int(self._h5["kspace"].shape[0])

    @property
    def num_coils(self) -> int:
        return int(self._h5["kspace"].shape[1])

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _decode_attr(v) for k, v in self._h5.attrs.items()}

    def _check_slice(self, i: int) -> int:
        if not -self.num_slices <= i < self.num_slices:
            raise DataError(f"slice {i} of {self.name} out of range, expected 0..{self.num_slices - 1}")
        return int(i) % self.num_slices

    def kspace(self, i: int) -> np.ndarray:
        """Fully sampled (zero-padded) k-space of slice i: complex64 (coils, H, W)."""
        return np.asarray(self._h5["kspace"][self._check_slice(i)], dtype=np.complex64)

    def has_target(self, kind: str = "sense") -> bool:
        return self._target_key(kind) in self._h5

    @staticmethod
    def _target_key(kind: str) -> str:
        try:
            return TARGET_KEYS[kind]
        except KeyError:
            raise DataError(f"target kind {kind!r} unknown, expected one of {sorted(TARGET_KEYS)}") from None

    def target(self, i: int, kind: str = "sense") -> np.ndarray | None:
        """Reference image of slice i, float32 (h, w); None when the file has no such dataset."""
        key = self._target_key(kind)
        if key not in self._h5:
            return None
        return np.asarray(self._h5[key][self._check_slice(i)], dtype=np.float32)

    def maps(self, i: int) -> np.ndarray:
        """True coil sensitivities of slice i (synthetic files only): complex64 (coils, H, W)."""
        if "sensitivity_maps" not in self._h5:
            raise DataError(f"{self.name} has no sensitivity_maps dataset (only synthetic files carry true maps)")
        return np.asarray(self._h5["sensitivity_maps"][self._check_slice(i)], dtype=np.complex64)


def list_volumes(directory: str | os.PathLike) -> list[Path]:
    """Sorted .h5 files in a directory; DataError when it is missing or holds none."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"data directory {d} does not exist (expected a directory of fastMRI .h5 volumes)")
    files = sorted(p for p in d.iterdir() if p.suffix == ".h5" and p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"data directory {d} holds no .h5 files (expected fastMRI multi-coil volumes)")
    return files


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two axes to `shape (h, w)`, fastMRI's index arithmetic."""
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= x.shape[-2] and 0 < w <= x.shape[-1]):
        raise DataError(f"cannot centre-crop an array of shape {x.shape[-2:]} to {(h, w)}: "
                        f"expected a crop no larger than the image")
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]
