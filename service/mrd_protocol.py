"""MRD (ISMRMRD) streaming protocol framing: message ids, bounded reads and the messages we write.

Every message starts with a little-endian uint16 id. Text messages carry a uint32 length, the config
file name a fixed 1024 bytes, an acquisition its 340-byte header then trajectory and data, an image
its 198-byte header, a uint64 attribute length, the attribute XML and the pixels. Every length a peer
sends is checked against a limit before anything is allocated.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from enum import IntEnum

import numpy as np
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.image import ImageHeader


class MessageId(IntEnum):
    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026


CONFIG_FILE_BYTES = 1024
ACQ_HEADER_BYTES = ctypes.sizeof(AcquisitionHeader)  # 340
IMAGE_HEADER_BYTES = ctypes.sizeof(ImageHeader)  # 198
WAVEFORM_HEADER_BYTES = 40
DATATYPE_USHORT, DATATYPE_FLOAT = 1, 5  # ISMRMRD image data types
IMTYPE_MAGNITUDE = 1

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class ProtocolError(Exception):
    """The peer broke the protocol; the session answers ERR and closes."""


class Disconnected(Exception):
    """The peer closed the connection (or it was lost) where a message, or its rest, was expected."""

    def __init__(self, mid_message: bool):
        super().__init__("connection closed mid-message" if mid_message else "connection closed")
        self.mid_message = mid_message


class Reader:
    """Reads whole messages' parts from a socket; timeouts surface as socket.timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.bytes_read = 0

    def exactly(self, n: int, mid_message: bool = True) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise Disconnected(mid_message or got > 0)
            got += k
        self.bytes_read += n
        return bytes(buf)

    def message_id(self) -> int:
        return _U16.unpack(self.exactly(2, mid_message=False))[0]

    def text(self, what: str, limit: int) -> str:
        """A uint32-length text (config text, header XML, TEXT), up to its first NUL."""
        n = _U32.unpack(self.exactly(4))[0]
        if n > limit:
            raise ProtocolError(f"{what} of {n} bytes, expected at most {limit}")
        return self.exactly(n).split(b"\0", 1)[0].decode("utf-8", "replace")

    def config_file(self) -> str:
        return self.exactly(CONFIG_FILE_BYTES).split(b"\0", 1)[0].decode("utf-8", "replace")

    def acquisition_header(self) -> AcquisitionHeader:
        return AcquisitionHeader.from_buffer_copy(self.exactly(ACQ_HEADER_BYTES))

    def acquisition_payload(self, head: AcquisitionHeader) -> tuple[np.ndarray, np.ndarray]:
        """trajectory (samples, dims) float32 and data (channels, samples) complex64 of a checked header."""
        s, c, d = head.number_of_samples, head.active_channels, head.trajectory_dimensions
        traj = np.frombuffer(self.exactly(4 * s * d), np.float32).reshape(s, d)
        data = np.frombuffer(self.exactly(8 * s * c), np.complex64).reshape(c, s)
        return traj, data

    def skip_waveform(self, limit: int) -> None:
        head = self.exactly(WAVEFORM_HEADER_BYTES)
        samples, channels = struct.unpack_from("<HH", head, 28)  # WaveformHeader offsets
        n = 4 * samples * channels
        if n > limit:
            raise ProtocolError(f"WAVEFORM of {n} bytes, expected at most {limit}")
        self.exactly(n)


def text_message(text: str, mid: MessageId = MessageId.TEXT) -> bytes:
    body = text.encode("utf-8")
    return _U16.pack(mid) + _U32.pack(len(body)) + body


def close_message() -> bytes:
    return _U16.pack(MessageId.CLOSE)


def config_file_message(name: str) -> bytes:
    body = name.encode("utf-8")
    if len(body) >= CONFIG_FILE_BYTES:
        raise ValueError(f"config name of {len(body)} bytes, expected fewer than {CONFIG_FILE_BYTES}")
    return _U16.pack(MessageId.CONFIG_FILE) + body.ljust(CONFIG_FILE_BYTES, b"\0")


def acquisition_message(head: AcquisitionHeader, data: np.ndarray, traj: np.ndarray | None = None) -> bytes:
    traj = np.zeros((head.number_of_samples, head.trajectory_dimensions), np.float32) if traj is None else traj
    return (_U16.pack(MessageId.ACQUISITION) + bytes(head) + np.ascontiguousarray(traj, "<f4").tobytes()
            + np.ascontiguousarray(data, "<c8").tobytes())


def image_message(head: ImageHeader, attributes: str, pixels: np.ndarray) -> bytes:
    """pixels (y, x) in the header's data type; head.matrix_size and data_type must match them."""
    attr = attributes.encode("utf-8")
    head.attribute_string_len = len(attr)
    return _U16.pack(MessageId.IMAGE) + bytes(head) + _U64.pack(len(attr)) + attr + np.ascontiguousarray(pixels).tobytes()


def read_image(reader: Reader, limit: int) -> tuple[ImageHeader, str, np.ndarray]:
    """The rest of an IMAGE message (after its id): header, attribute XML, pixels (channels, z, y, x)."""
    head = ImageHeader.from_buffer_copy(reader.exactly(IMAGE_HEADER_BYTES))
    n_attr = _U64.unpack(reader.exactly(8))[0]
    if n_attr > limit:
        raise ProtocolError(f"image attributes of {n_attr} bytes, expected at most {limit}")
    attributes = reader.exactly(n_attr).split(b"\0", 1)[0].decode("utf-8", "replace")
    dtypes = {DATATYPE_USHORT: np.uint16, DATATYPE_FLOAT: np.float32}
    if head.data_type not in dtypes:
        raise ProtocolError(f"image data_type {head.data_type}, expected {sorted(dtypes)}")
    x, y, z = head.matrix_size
    shape = (head.channels, z, y, x)
    n = int(np.prod(shape)) * np.dtype(dtypes[head.data_type]).itemsize
    if n > limit:
        raise ProtocolError(f"image of {n} bytes, expected at most {limit}")
    pixels = np.frombuffer(reader.exactly(n), dtypes[head.data_type]).reshape(shape)
    return head, attributes, pixels
