"""Converting between the fastMRI multi-coil layout and ISMRMRD (MRD) raw HDF5.

An ISMRMRD raw file holds one group (default "dataset") with `xml` (the ISMRMRD header) and `data`
(one record per readout: a 340-byte acquisition header, trajectory and coils x samples complex64).
fastMRI -> ISMRMRD writes one readout per acquired phase column, its kspace_encode_step_1 counted
from the header's encoding limits (column = encodedSpace y // 2 - center + step, fastMRI's padding);
ISMRMRD -> fastMRI places the lines back into the zero-filled matrix. The fastMRI file's own
`ismrmrd_header` travels as the group's `xml`, so a round trip gives the same k-space bit for bit.
A file's optional `noise` dataset (complex64 (coils, samples), a dnirecon extension) travels as noise
readouts (ACQ_IS_NOISE_MEASUREMENT) ahead of the image lines, and comes back bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from dnirecon.errors import DataError
from dnirecon.fastmri_io import FastMRIVolume, read_header_xml
from dnirecon.files import replaced_on_success
from dnirecon.noise import read_noise_dataset

# acquisition flag bits (ISMRMRD's ACQ_* constants are bit numbers counted from 1)
FLAG_BITS = {
    "first_in_slice": 7, "last_in_slice": 8, "noise": 19, "calibration": 20, "calibration_and_imaging": 21,
    "reverse": 22, "navigation": 23, "phasecorr": 24,
}
# readouts that are not lines of the image: noise, navigators, phase correction, feedback, dummy scans,
# surface-coil correction and phase stabilisation; calibration lines are acquired data and count
NOT_IMAGING_BITS = (19, 23, 24, 26, 27, 28, 29, 30, 31)
DEFAULT_GROUP = "dataset"


def flag(name: str) -> int:
    """The bit of an acquisition flag, e.g. flag("last_in_slice") == 1 << 7."""
    return 1 << (FLAG_BITS[name] - 1)


def acquisition_dtype() -> np.dtype:
    """ISMRMRD HDF5's record of one readout (header, traj, data), as the ismrmrd package reads it."""
    from ismrmrd.hdf5 import acquisition_dtype as dtype

    return dtype


class Geometry(NamedTuple):
    """Where a slice sits in the scanner (ISMRMRD's patient coordinates, mm)."""

    position: tuple[float, float, float]
    read_dir: tuple[float, float, float]
    phase_dir: tuple[float, float, float]
    slice_dir: tuple[float, float, float]
    patient_table_position: tuple[float, float, float] = (0.0, 0.0, 0.0)


def slice_geometry(index: int, n_slices: int, thickness_mm: float) -> Geometry:
    """Axis-aligned stack geometry for a fastMRI volume, which carries none of its own: slice centres
    spaced by the header's encoded field of view in z, the stack centred on the isocentre."""
    z = (index - (n_slices - 1) / 2) * thickness_mm
    return Geometry((0.0, 0.0, float(z)), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _slice_thickness(xml: bytes) -> float:
    import xml.etree.ElementTree as ET

    ns = "{http://www.ismrm.org/ISMRMRD}"
    node = ET.fromstring(xml).find(f"{ns}encoding/{ns}encodedSpace/{ns}fieldOfView_mm/{ns}z")
    try:
        return float(node.text) if node is not None and node.text else 1.0
    except ValueError:
        return 1.0


def fastmri_to_ismrmrd(src: str | os.PathLike, dst: str | os.PathLike, *, mask: np.ndarray | None = None,
                       calibration: np.ndarray | None = None, group: str = DEFAULT_GROUP) -> Path:
    """Writes the fastMRI file src as ISMRMRD raw HDF5 dst (group `group`).

    mask (W,): phase columns to send; default: the file's own `mask` dataset (undersampled files), else
    every column inside the header's encoding limits. calibration (W,) marks columns flagged
    PARALLEL_CALIBRATION_AND_IMAGING. Columns outside the encoding limits must hold zeros (DataError
    otherwise: they cannot be encoded). The file's `noise` dataset, when present, goes first as noise
    readouts of one readout's length each. Written to a temporary file and renamed: never half-written.
    """
    src, dst = Path(src), Path(dst)
    with FastMRIVolume(src) as vol, h5py.File(src, "r") as h5:
        hdr = vol.header
        n = vol.num_slices
        height, width = hdr.enc_size
        xml = _xml_bytes(h5["ismrmrd_header"][()])
        inside = np.zeros(width, bool)
        inside[hdr.padding_left:hdr.padding_right] = True
        if mask is None:
            mask = np.asarray(h5["mask"][()], np.float32).reshape(-1) if "mask" in h5 else inside.astype(np.float32)
        mask = np.asarray(mask).reshape(-1)
        if mask.shape != (width,):
            raise DataError(f"mask for {src.name} has {mask.size} columns, expected {width} (kspace phase)")
        cols = np.flatnonzero((mask > 0) & inside)
        if cols.size == 0:
            raise DataError(f"mask for {src.name} selects no phase column inside the encoding limits "
                            f"[{hdr.padding_left}, {hdr.padding_right})")
        calib = None if calibration is None else np.asarray(calibration).reshape(-1) > 0
        thickness = _slice_thickness(xml)
        noise = read_noise_dataset(h5, src.name, int(h5["kspace"].shape[1]))
        parts = [] if noise is None else [noise_records(noise, height)]
        first = sum(len(p) for p in parts)
        for s in range(n):
            k = vol.kspace(s)
            if np.any(k[..., ~inside]):
                raise DataError(f"kspace in {src.name} slice {s} has nonzero values outside the phase columns "
                                f"[{hdr.padding_left}, {hdr.padding_right}) of the ismrmrd_header's encodingLimits; "
                                "they cannot be sent as readouts")
            parts.append(slice_records(k, cols, hdr.padding_left, s, slice_geometry(s, n, thickness),
                                       counter=first + s * cols.size, calibration=calib))
        records = np.concatenate(parts)
        attrs = vol.attrs
    _write_atomic(dst, lambda f: _write_raw(f, group, xml, records, attrs))
    return dst


def slice_records(kspace: np.ndarray, cols: np.ndarray, padding_left: int, index: int, geometry: Geometry, *,
                  counter: int = 0, calibration: np.ndarray | None = None) -> np.ndarray:
    """The readouts of one slice as ISMRMRD HDF5 records: kspace (coils, readout, phase) complex64, one
    readout per column in cols (kspace_encode_step_1 = column - padding_left), FIRST/LAST_IN_SLICE on the
    first and last, PARALLEL_CALIBRATION_AND_IMAGING where calibration (phase,) is set."""
    coils, height, _width = kspace.shape
    records = np.zeros(len(cols), acquisition_dtype())
    head = records["head"]
    head["version"], head["measurement_uid"] = 1, 1
    head["scan_counter"] = counter + 1 + np.arange(len(cols))
    head["number_of_samples"], head["available_channels"], head["active_channels"] = height, coils, coils
    head["center_sample"] = height // 2
    head["channel_mask"][:, 0] = np.uint64((1 << coils) - 1) if coils < 64 else np.iinfo(np.uint64).max
    head["position"], head["read_dir"], head["phase_dir"] = geometry.position, geometry.read_dir, geometry.phase_dir
    head["slice_dir"], head["patient_table_position"] = geometry.slice_dir, geometry.patient_table_position
    head["idx"]["kspace_encode_step_1"] = np.asarray(cols) - padding_left
    head["idx"]["slice"] = index
    flags = np.zeros(len(cols), np.uint64)
    if calibration is not None:
        flags[np.asarray(calibration, bool)[cols]] |= np.uint64(flag("calibration_and_imaging"))
    flags[0] |= np.uint64(flag("first_in_slice"))
    flags[-1] |= np.uint64(flag("last_in_slice"))
    head["flags"] = flags
    for j, c in enumerate(cols):
        records["data"][j] = np.ascontiguousarray(kspace[:, :, c]).view(np.float32).reshape(-1)
        records["traj"][j] = np.zeros(0, np.float32)
    return records


def noise_records(noise: np.ndarray, samples: int) -> np.ndarray:
    """Noise samples (coils, N) complex64 as noise-measurement readouts of `samples` samples each (the
    last one shorter when N is not a multiple), in order: their data laid end to end is `noise`."""
    coils, total = noise.shape
    starts = list(range(0, total, max(1, samples)))
    records = np.zeros(len(starts), acquisition_dtype())
    head = records["head"]
    head["version"], head["measurement_uid"] = 1, 1
    head["scan_counter"] = 1 + np.arange(len(starts))
    head["available_channels"], head["active_channels"] = coils, coils
    head["channel_mask"][:, 0] = np.uint64((1 << coils) - 1) if coils < 64 else np.iinfo(np.uint64).max
    head["flags"] = np.uint64(flag("noise"))
    for j, a in enumerate(starts):
        part = np.ascontiguousarray(noise[:, a:a + samples], np.complex64)
        head["number_of_samples"][j] = part.shape[1]
        records["data"][j] = part.view(np.float32).reshape(-1)
        records["traj"][j] = np.zeros(0, np.float32)
    return records


def header_xml(readout: int, phase: int, recon: tuple[int, int], center: int, maximum: int,
               fov_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> str:
    """A minimal ISMRMRD header for Cartesian 2-D slices: encoded and recon matrices, field of view and
    the kspace_encoding_step_1 limits (the acquired columns are phase // 2 - center + 0..maximum)."""
    fov = "".join(f"<{a}>{v}</{a}>" for a, v in zip("xyz", fov_mm))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
        f"<encodedSpace><matrixSize><x>{readout}</x><y>{phase}</y><z>1</z></matrixSize><fieldOfView_mm>{fov}</fieldOfView_mm></encodedSpace>"
        f"<reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>1</z></matrixSize><fieldOfView_mm>{fov}</fieldOfView_mm></reconSpace>"
        f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center>"
        "</kspace_encoding_step_1></encodingLimits><trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
    )


def _xml_bytes(raw) -> bytes:
    if isinstance(raw, np.ndarray):
        raw = raw.tobytes() if raw.dtype.kind in "SU" else raw.reshape(-1)[0]
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def _write_raw(f: h5py.File, group: str, xml: bytes, records: np.ndarray, attrs: dict) -> None:
    g = f.create_group(group)
    g.create_dataset("xml", data=[xml], dtype=h5py.special_dtype(vlen=bytes))
    g.create_dataset("data", data=records, maxshape=(None,))
    for key, value in attrs.items():  # acquisition, max, norm, patient_id: back to the fastMRI file on return
        g.attrs[f"fastmri_{key}"] = value


def _write_atomic(dst: Path, write) -> None:
    with replaced_on_success(dst) as tmp:
        with h5py.File(tmp, "w") as f:
            write(f)


class RawVolume(NamedTuple):
    """ISMRMRD raw data assembled into the fastMRI layout.

    kspace (slices, coils, readout, phase) complex64, zero-filled; mask (phase,) float32, the columns
    received in every slice; xml the ISMRMRD header; slices the `idx.slice` values in kspace order.
    noise (coils, N) complex64: the noise readouts' samples end to end, None without noise readouts.
    """

    kspace: np.ndarray
    mask: np.ndarray
    xml: bytes
    slices: list[int]
    attrs: dict
    noise: np.ndarray | None = None


def read_raw(path: str | os.PathLike, group: str = DEFAULT_GROUP) -> tuple[bytes, np.ndarray]:
    """The header XML and the acquisition records of an ISMRMRD raw HDF5 file's dataset group."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file (expected ISMRMRD raw HDF5)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc})") from None
    with f:
        if group not in f or "xml" not in f[group] or "data" not in f[group]:
            raise DataError(f"{path.name} has no {group}/xml and {group}/data (expected an ISMRMRD raw dataset group; "
                            f"groups: {sorted(f.keys())[:10]})")
        return _xml_bytes(f[group]["xml"][0]), f[group]["data"][()]


def read_ismrmrd(path: str | os.PathLike, group: str = DEFAULT_GROUP) -> RawVolume:
    """Reads an ISMRMRD raw HDF5 file (Cartesian, one encoding, 2-D slices) into the fastMRI layout.
    Readouts that are not image lines (NOT_IMAGING_BITS) are left out of kspace, noise readouts kept as
    `noise`; reversed readouts are flipped."""
    path = Path(path)
    xml, records = read_raw(path, group)
    with h5py.File(path, "r") as f:
        attrs = {k[len("fastmri_"):]: v for k, v in f[group].attrs.items() if k.startswith("fastmri_")}
    hdr = read_header_xml(xml, f"{path.name} {group}/xml")
    height, width = hdr.enc_size
    head = records["head"]
    skip = np.zeros(len(records), bool)
    for bit in NOT_IMAGING_BITS:
        skip |= (head["flags"] & np.uint64(1 << (bit - 1))) != 0
    keep = np.flatnonzero(~skip)
    if keep.size == 0:
        raise DataError(f"{path.name}: no imaging readouts in {group}/data")
    coils = int(head["active_channels"][keep[0]])
    slices = sorted({int(s) for s in head["idx"]["slice"][keep]})
    kspace = np.zeros((len(slices), coils, height, width), np.complex64)
    seen = np.zeros((len(slices), width), bool)
    where = {s: i for i, s in enumerate(slices)}
    for r in keep:
        h = head[r]
        samples, ch = int(h["number_of_samples"]), int(h["active_channels"])
        if (samples, ch) != (height, coils):
            raise DataError(f"{path.name} readout {r}: {ch} coils x {samples} samples, expected {coils} x {height} "
                            "(the first readout's coils, encodedSpace matrixSize x)")
        col = hdr.padding_left + int(h["idx"]["kspace_encode_step_1"])
        if not hdr.padding_left <= col < hdr.padding_right:
            raise DataError(f"{path.name} readout {r}: kspace_encode_step_1 {int(h['idx']['kspace_encode_step_1'])} "
                            f"outside the encoding limits 0..{hdr.padding_right - hdr.padding_left - 1}")
        s = where[int(h["idx"]["slice"])]
        line = np.asarray(records["data"][r], np.float32).view(np.complex64).reshape(coils, height)
        kspace[s, :, :, col] = line[:, ::-1] if int(h["flags"]) & flag("reverse") else line
        seen[s, col] = True
    return RawVolume(kspace, seen.all(0).astype(np.float32), xml, slices, attrs, _noise_samples(path, records, coils))


def _noise_samples(path: Path, records: np.ndarray, coils: int) -> np.ndarray | None:
    """The noise readouts' samples (coils, N) in file order; DataError naming the readout whose channels differ."""
    head = records["head"]
    rows = np.flatnonzero((head["flags"] & np.uint64(flag("noise"))) != 0)
    if rows.size == 0:
        return None
    parts = []
    for r in rows:
        ch, samples = int(head["active_channels"][r]), int(head["number_of_samples"][r])
        if ch != coils:
            raise DataError(f"{path.name} noise readout {r}: {ch} channels, expected {coils} "
                            "(the image readouts' coils)")
        parts.append(np.asarray(records["data"][r], np.float32).view(np.complex64).reshape(ch, samples))
    return np.concatenate(parts, axis=1)


def ismrmrd_to_fastmri(src: str | os.PathLike, dst: str | os.PathLike, group: str = DEFAULT_GROUP) -> Path:
    """Writes the ISMRMRD raw file src as a fastMRI-layout file dst: kspace, ismrmrd_header, `mask`
    (the columns received) and, when every column inside the encoding limits arrived, the RSS target."""
    from dnirecon.fastmri_io import center_crop
    from dnirecon.fftc import ifft2c, rss

    src, dst = Path(src), Path(dst)
    raw = read_ismrmrd(src, group)
    hdr = read_header_xml(raw.xml, f"{src.name} {group}/xml")

    def write(f: h5py.File) -> None:
        f.create_dataset("kspace", data=raw.kspace)
        f.create_dataset("ismrmrd_header", data=np.bytes_(raw.xml))
        f.create_dataset("mask", data=raw.mask)
        if raw.noise is not None:
            f.create_dataset("noise", data=raw.noise)
        if raw.mask[hdr.padding_left:hdr.padding_right].all():
            target = np.stack([center_crop(rss(ifft2c(k)), hdr.recon_size) for k in raw.kspace]).astype(np.float32)
            f.create_dataset("reconstruction_rss", data=target)
        for key, value in raw.attrs.items():
            f.attrs[key] = value

    _write_atomic(dst, write)
    return dst


def register_data_commands(dsub) -> None:
    """`dnirecon data to-ismrmrd|from-ismrmrd`: added to the `data` subcommands."""
    t = dsub.add_parser("to-ismrmrd", help="convert a fastMRI-layout file to ISMRMRD raw HDF5 (one readout per line)")
    t.add_argument("file", type=Path, help="fastMRI-layout FILE.h5")
    t.add_argument("--out", type=Path, required=True, help="ISMRMRD HDF5 to write")
    t.add_argument("--accel", type=int, default=None,
                   help="send only the lines of fastMRI's validation mask at this acceleration (default: all lines, "
                        "or the file's own mask)")
    t.add_argument("--group", default=DEFAULT_GROUP, help=f"dataset group (default {DEFAULT_GROUP})")
    t.set_defaults(func=_run_to_ismrmrd)
    b = dsub.add_parser("from-ismrmrd", help="convert ISMRMRD raw HDF5 to the fastMRI layout")
    b.add_argument("file", type=Path, help="ISMRMRD raw FILE.h5")
    b.add_argument("--out", type=Path, required=True, help="fastMRI-layout HDF5 to write")
    b.add_argument("--group", default=DEFAULT_GROUP, help=f"dataset group (default {DEFAULT_GROUP})")
    b.set_defaults(func=_run_from_ismrmrd)


def retrospective_masks(path: Path, accel: int) -> tuple[np.ndarray, np.ndarray]:
    """fastMRI's validation mask for a file (seeded by its name) and its fully sampled centre."""
    from dnirecon.subsample import center_fraction_for, mask_for

    with FastMRIVolume(path) as vol:
        hdr = vol.header
    width = hdr.enc_size[1]
    mask = mask_for(accel, seed=path.name, width=width, padding=(hdr.padding_left, hdr.padding_right))
    n_center = int(round(width * center_fraction_for(accel)))
    calib = np.zeros(width, np.float32)
    start = (width - n_center + 1) // 2
    calib[start:start + n_center] = 1
    return mask, calib * mask


def _run_to_ismrmrd(args) -> int:
    mask = calib = None
    if args.accel is not None:
        mask, calib = retrospective_masks(args.file, args.accel)
    out = fastmri_to_ismrmrd(args.file, args.out, mask=mask, calibration=calib, group=args.group)
    print(f"wrote {out}")
    return 0


def _run_from_ismrmrd(args) -> int:
    print(f"wrote {ismrmrd_to_fastmri(args.file, args.out, group=args.group)}")
    return 0
