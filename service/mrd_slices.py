"""MRD slices: the encoding a session's header declares, slice assembly from acquisitions, the noise
measurement that prewhitens them, and the MRD image built from a reconstruction.

Knows numpy and the ISMRMRD structures; nothing of sockets, gRPC or onnxruntime.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.image import ImageHeader
from ismrmrd.meta import Meta

from dnirecon.errors import DataError
from dnirecon.fastmri_io import read_header_xml
from dnirecon.ismrmrd_io import NOT_IMAGING_BITS
from dnirecon.noise import Whitener, bandwidth_scale, whitener
from service.limits import BudgetExceeded, Reservation
from service.logsafe import escape
from service.mrd_protocol import DATATYPE_FLOAT, DATATYPE_USHORT, IMTYPE_MAGNITUDE

NS = "{http://www.ismrm.org/ISMRMRD}"
# ISMRMRD acquisition flag bits, counted from 1 as in its ACQ_* constants
LAST_IN_SLICE, NOISE_MEASUREMENT, REVERSE = 8, 19, 22
USHORT_MAX_VALUE = 4095  # 12-bit range, as scanners store magnitude images
RESEARCH_COMMENT = "dnirecon: research use only, not for diagnosis"


def has_flag(head: AcquisitionHeader, bit: int) -> bool:
    return bool(head.flags & (1 << (bit - 1)))


class SessionError(Exception):
    """A session that cannot go on: its message goes back as ERR text, then CLOSE."""


class Encoding(NamedTuple):
    """What a session's ISMRMRD header declares for its first encoding.

    readout, phase: encodedSpace matrix (samples per readout, phase columns); recon: reconSpace (x, y);
    fov_mm: reconSpace field of view (x, y, z); padding_left: the column of kspace_encode_step_1 = 0;
    max_step: encodingLimits kspace_encoding_step_1 maximum; coils: receiverChannels (None: not given);
    noise_bandwidth: relativeReceiverNoiseBandwidth (1: not given), for noise sampled at another dwell time.
    """

    readout: int
    phase: int
    recon: tuple[int, int]
    fov_mm: tuple[float, float, float]
    padding_left: int
    max_step: int
    coils: int | None
    noise_bandwidth: float = 1.0


def parse_encoding(xml: str) -> Encoding:
    """The header's encoding; SessionError naming the element that is missing or wrong."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SessionError(f"HEADER is not valid XML ({exc})") from None
    try:
        hdr = read_header_xml(xml, "the HEADER message")
    except DataError as exc:
        raise SessionError(str(exc)) from None
    if root.find(f"{NS}encoding/{NS}trajectory") is not None and (root.findtext(f"{NS}encoding/{NS}trajectory") or "").strip() not in ("", "cartesian"):
        raise SessionError(f"HEADER encoding/trajectory is {_safe(root.findtext(f'{NS}encoding/{NS}trajectory'))}, expected cartesian")
    fov = []
    for axis in "xyz":
        text = root.findtext(f"{NS}encoding/{NS}reconSpace/{NS}fieldOfView_mm/{NS}{axis}")
        try:
            fov.append(float(text) if text else 0.0)
        except ValueError:
            raise SessionError(f"HEADER encoding/reconSpace/fieldOfView_mm/{axis} is {_safe(text)}, expected a number") from None
    coils_text = root.findtext(f"{NS}acquisitionSystemInformation/{NS}receiverChannels")
    try:
        coils = int(coils_text) if coils_text else None
    except ValueError:
        raise SessionError(f"HEADER acquisitionSystemInformation/receiverChannels is {_safe(coils_text)}, expected an integer") from None
    bw_text = root.findtext(f"{NS}acquisitionSystemInformation/{NS}relativeReceiverNoiseBandwidth")
    try:
        noise_bandwidth = float(bw_text) if bw_text else 1.0
    except ValueError:
        noise_bandwidth = math.nan
    if not (math.isfinite(noise_bandwidth) and noise_bandwidth > 0):
        raise SessionError(f"HEADER acquisitionSystemInformation/relativeReceiverNoiseBandwidth is {_safe(bw_text)}, "
                           "expected a number > 0")
    readout, phase = hdr.enc_size
    if not (0 < hdr.recon_size[0] <= readout and 0 < hdr.recon_size[1] <= phase):
        raise SessionError(f"HEADER reconSpace matrixSize {hdr.recon_size[0]}x{hdr.recon_size[1]}, expected within the "
                           f"encodedSpace matrix {readout}x{phase}")
    return Encoding(readout, phase, hdr.recon_size, (fov[0], fov[1], fov[2]), hdr.padding_left,
                    hdr.padding_right - hdr.padding_left - 1, coils, noise_bandwidth)


def _safe(text: object, limit: int = 64) -> str:
    """A peer's string quoted for an ERR text or a log line: control characters escaped, cut at `limit`."""
    return f"'{escape(str(text), limit)}'"


safe = _safe


class SliceKey(NamedTuple):
    slice: int
    contrast: int
    phase: int
    repetition: int
    set: int
    average: int

    @staticmethod
    def of(head: AcquisitionHeader) -> "SliceKey":
        i = head.idx
        return SliceKey(i.slice, i.contrast, i.phase, i.repetition, i.set, i.average)


@dataclass
class Slice:
    """One slice being filled: kspace (coils, readout, phase) complex64, the columns received, and the
    header of its first imaging readout (its geometry goes into the image)."""

    key: SliceKey
    kspace: np.ndarray
    mask: np.ndarray
    geometry: AcquisitionHeader
    readouts: int = 0
    t_last: float = 0.0  # time.perf_counter() when its last readout arrived
    reservation: Reservation | None = None  # its matrix's share of the memory budget, until its image is sent

    def release(self) -> None:
        """Gives its bytes back to the memory budget (once, however often it is called)."""
        if self.reservation is not None:
            self.reservation.release()

    def kspace_ri(self) -> np.ndarray:
        """(coils, readout, phase, 2) float32: real/imag in a last axis, the engine's input."""
        return self.kspace.view(np.float32).reshape(*self.kspace.shape, 2)


class Refused(NamedTuple):
    """A slice whose matrix the memory budget could not hold: its readouts are dropped until it ends."""

    key: SliceKey
    nbytes: int
    detail: str  # BudgetExceeded's text: bytes asked and left


@dataclass
class SliceAssembler:
    """Places imaging readouts by kspace_encode_step_1 into the zero-filled matrix of their slice. A
    slice closes on LAST_IN_SLICE, when a readout of other counters arrives, and at the end (flush).

    reserve(nbytes) -> Reservation (or BudgetExceeded) is asked for each new slice's matrix; a refused
    slice is reported once (Refused) and its readouts skipped."""

    enc: Encoding
    max_slice_bytes: int
    reserve: Callable[[int], Reservation] | None = None
    coils: int | None = None
    current: Slice | None = None
    skipping: SliceKey | None = None  # the refused slice whose readouts are being dropped
    readouts: int = 0
    ignored: int = 0
    skipped: int = 0

    @property
    def open_key(self) -> SliceKey | None:
        """The counters of the slice being received (assembled or skipped), None between slices."""
        return self.current.key if self.current is not None else self.skipping

    @property
    def slice_bytes(self) -> int:
        return (self.coils or 0) * self.enc.readout * self.enc.phase * 8

    def check_header(self, n: int, head: AcquisitionHeader) -> bool:
        """Checks readout n's header before its data is read; False for a readout left out of the image."""
        if any(has_flag(head, b) for b in NOT_IMAGING_BITS):
            return False
        if head.number_of_samples != self.enc.readout:
            raise SessionError(f"acquisition {n}: {head.number_of_samples} samples, expected {self.enc.readout} "
                               "(HEADER encodedSpace matrixSize x)")
        coils = self.coils or self.enc.coils or head.active_channels
        if head.active_channels != coils or coils == 0:
            raise SessionError(f"acquisition {n}: {head.active_channels} coils, expected {coils} "
                               + ("(HEADER receiverChannels)" if self.enc.coils else "(the first acquisition's)"))
        if self.coils is None:
            size = coils * self.enc.readout * self.enc.phase * 8
            if size > self.max_slice_bytes:
                raise SessionError(f"a slice of {coils}x{self.enc.readout}x{self.enc.phase} complex64 is {size} bytes, "
                                   f"more than max_slice_bytes={self.max_slice_bytes}")
            self.coils = coils
        step = head.idx.kspace_encode_step_1
        if step > self.enc.max_step:
            raise SessionError(f"acquisition {n}: kspace_encode_step_1 {step} outside the encoding limits "
                               f"0..{self.enc.max_step}")
        if head.discard_pre or head.discard_post:
            raise SessionError(f"acquisition {n}: discard_pre {head.discard_pre} / discard_post {head.discard_post}, "
                               "expected 0 (readouts are used whole)")
        return True

    def add(self, n: int, head: AcquisitionHeader, data: np.ndarray, now: float) -> list[Slice | Refused]:
        """Places readout n (data (coils, samples) complex64); returns the slices it closed and the one it
        could not open (Refused), in order."""
        if not np.isfinite(data).all():
            raise SessionError(f"acquisition {n}: data holds NaN or Inf")
        closed: list[Slice | Refused] = []
        key = SliceKey.of(head)
        last = has_flag(head, LAST_IN_SLICE)
        if self.current is not None and self.current.key != key:
            closed.append(self.current)
            self.current = None
        if self.skipping is not None and self.skipping != key:
            self.skipping = None
        if self.skipping == key:
            self.skipped += 1
            self.skipping = None if last else key
            return closed
        if self.current is None:
            reservation = None
            if self.reserve is not None:
                try:
                    reservation = self.reserve(self.slice_bytes)
                except BudgetExceeded as exc:
                    closed.append(Refused(key, self.slice_bytes, str(exc)))
                    self.skipped += 1
                    self.skipping = None if last else key
                    return closed
            shape = (self.coils, self.enc.readout, self.enc.phase)
            self.current = Slice(key, np.zeros(shape, np.complex64), np.zeros(self.enc.phase, np.float32), head,
                                 reservation=reservation)
        s = self.current
        col = self.enc.padding_left + head.idx.kspace_encode_step_1
        s.kspace[:, :, col] = data[:, ::-1] if has_flag(head, REVERSE) else data
        s.mask[col] = 1.0
        s.readouts += 1
        s.t_last = now
        self.readouts += 1
        if last:
            closed.append(s)
            self.current = None
        return closed

    def flush(self) -> list[Slice]:
        out = [self.current] if self.current is not None else []
        self.current, self.skipping = None, None
        return out

    def abandon(self) -> None:
        """The session ended inside a slice: its matrix and its share of the budget are freed."""
        if self.current is not None:
            self.current.release()
        self.current, self.skipping = None, None


@dataclass
class NoiseMeasurement:
    """A session's noise readouts (ACQ_IS_NOISE_MEASUREMENT) before its first imaging readout, turned into the
    prewhitening of every slice when that readout arrives.

    Each readout's samples are reserved from the memory budget (reserve, as slices are) until the whitener
    is made or the session ends; max_bytes bounds them all (the server's max_slice_bytes)."""

    enc: Encoding
    max_bytes: int
    reserve: Callable[[int], Reservation] | None = None
    parts: list = field(default_factory=list)
    reservations: list = field(default_factory=list)
    nbytes: int = 0
    readouts: int = 0
    dwell_us: float = 0.0
    result: Whitener | None = None
    late: int = 0  # noise readouts after the first imaging readout: not used

    def check_header(self, n: int, head: AcquisitionHeader) -> None:
        """Checks noise readout n before its data is read: channels as the header (or the first noise
        readout) says, some samples, and room in max_bytes and the memory budget."""
        coils = self.enc.coils or (self.parts[0].shape[0] if self.parts else None)
        c, samples = head.active_channels, head.number_of_samples
        if c == 0 or samples == 0:
            raise SessionError(f"acquisition {n}: noise readout of {c} channels x {samples} samples, expected "
                               "the receiver's channels and at least one sample")
        if coils is not None and c != coils:
            raise SessionError(f"acquisition {n}: noise readout of {c} channels, expected {coils} "
                               + ("(HEADER receiverChannels)" if self.enc.coils else "(the first noise readout's)"))
        size = 8 * c * samples
        if self.nbytes + size > self.max_bytes:
            raise SessionError(f"acquisition {n}: noise readouts of more than {self.max_bytes} bytes "
                               "(max_slice_bytes), expected a noise measurement smaller than a slice")
        if self.reserve is not None:
            try:
                self.reservations.append(self.reserve(size))
            except BudgetExceeded as exc:
                raise SessionError(f"acquisition {n}: noise readouts do not fit the memory for slices being "
                                   f"assembled ({exc}); the session ends") from None
        self.nbytes += size

    def add(self, n: int, head: AcquisitionHeader, data: np.ndarray) -> None:
        if not np.isfinite(data).all():
            raise SessionError(f"acquisition {n}: noise readout holds NaN or Inf")
        if not self.parts:
            self.dwell_us = float(head.sample_time_us)
        self.parts.append(data)
        self.readouts += 1

    def whitener_for(self, head: AcquisitionHeader) -> Whitener | None:
        """At the first imaging readout (head): the whitener for its channels and dwell time, None without
        noise readouts; SessionError for noise that cannot whiten these data. Frees the samples."""
        if not self.parts:
            return None
        try:
            scale = bandwidth_scale(self.dwell_us, float(head.sample_time_us), self.enc.noise_bandwidth)
            self.result = whitener(self.parts, coils=head.active_channels, where="noise readouts", scale=scale)
        except DataError as exc:
            raise SessionError(str(exc)) from None
        finally:
            self.release()
        return self.result

    def release(self) -> None:
        self.parts = []
        for r in self.reservations:
            r.release()
        self.reservations = []


@dataclass
class Provenance:
    model: str
    version: str
    alpha: float
    dc_residual: float
    extra: dict = field(default_factory=dict)


def build_image(s: Slice, image: np.ndarray, enc: Encoding, prov: Provenance, index: int, *, series: int = 1,
                datatype: str = "float32") -> tuple[ImageHeader, str, np.ndarray]:
    """The MRD image of a slice: image (readout, phase) float32 already cropped to the recon matrix ->
    header (geometry of the slice's readouts, field of view from reconSpace), meta XML, pixels (y, x)."""
    g = s.geometry
    head = ImageHeader()
    head.version = 1
    head.measurement_uid = g.measurement_uid
    x, y = image.shape
    head.matrix_size[:] = (x, y, 1)
    head.field_of_view[:] = enc.fov_mm
    head.channels = 1
    for name in ("position", "read_dir", "phase_dir", "slice_dir", "patient_table_position", "physiology_time_stamp"):
        getattr(head, name)[:] = getattr(g, name)[:]
    head.acquisition_time_stamp = g.acquisition_time_stamp
    head.slice, head.contrast, head.phase = s.key.slice, s.key.contrast, s.key.phase
    head.repetition, head.set, head.average = s.key.repetition, s.key.set, s.key.average
    head.image_type = IMTYPE_MAGNITUDE
    head.image_index = index
    head.image_series_index = series
    meta = Meta({
        "DataRole": "Image",
        "ImageProcessingHistory": ["DNIRECON", "INTERPSN"],
        "SequenceDescriptionAdditional": "DNIRECON",
        "ImageComments": f"interpSN alpha={prov.alpha:.4g}; {RESEARCH_COMMENT}",
        "Keep_image_geometry": 1,
        "ImageRowDir": [f"{v:.18f}" for v in g.read_dir],
        "ImageColumnDir": [f"{v:.18f}" for v in g.phase_dir],
        "DnireconModel": prov.model,
        "DnireconModelVersion": prov.version,
        "DnireconAlpha": f"{prov.alpha:.6g}",
        "DnireconDcResidual": f"{prov.dc_residual:.6g}",
        "DnireconReadouts": s.readouts,
        **prov.extra,
    })
    pixels = np.ascontiguousarray(image.T, np.float32)  # MRD pixels are (y, x), x along read_dir
    if datatype == "uint16":
        top = float(pixels.max()) if pixels.size else 0.0
        scale = USHORT_MAX_VALUE / top if top > 0 and math.isfinite(top) else 1.0
        pixels = np.clip(np.rint(pixels * scale), 0, np.iinfo(np.uint16).max).astype("<u2")
        meta["DnireconScale"] = f"{scale:.9g}"  # pixel = image * scale
        head.data_type = DATATYPE_USHORT
    else:
        head.data_type = DATATYPE_FLOAT
    return head, meta.serialize(), pixels
