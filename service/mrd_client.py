"""`dnirecon client mrd`: streams an ISMRMRD raw HDF5 file to an MRD endpoint the way a scanner does,
and writes the images that come back to ISMRMRD HDF5 and PNG.

Torch-free, like the rest of the scanner-side client.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnirecon.errors import DataError
from dnirecon.files import replaced_on_success, write_png
from dnirecon.ismrmrd_io import flag, read_raw
from service.mrd_protocol import (ACQ_HEADER_BYTES, Disconnected, MessageId, ProtocolError, Reader, close_message,
                                  config_file_message, read_image, text_message)

DEFAULT_SERVER = "localhost:9002"
MAX_IMAGE_BYTES = 256 * 1024 * 1024


@dataclass
class MrdImage:
    head: object  # ismrmrd.ImageHeader
    attributes: str
    pixels: np.ndarray  # (channels, z, y, x) as received

    @property
    def image(self) -> np.ndarray:
        """(x, y) = (readout, phase) float32, the orientation of dnirecon's gRPC images; uint16 pixels
        are divided by the DnireconScale the server put in the meta."""
        img = self.pixels[0, 0].T.astype(np.float32)
        if self.head.data_type == 1:
            from ismrmrd.meta import Meta

            scale = float(Meta.deserialize(self.attributes).get("DnireconScale", 1.0))
            img = img / scale
        return img

    @property
    def meta(self) -> dict:
        from ismrmrd.meta import Meta

        return dict(Meta.deserialize(self.attributes)) if self.attributes else {}


@dataclass
class MrdResult:
    images: list[MrdImage] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False  # the server sent CLOSE
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[str]:
        return [t for t in self.texts if t.startswith("ERR")]


def acquisition_bytes(record) -> bytes:
    """One MRD ACQUISITION message from an HDF5 record (header, traj, data as float32)."""
    head = record["head"].tobytes()
    assert len(head) == ACQ_HEADER_BYTES
    return (int(MessageId.ACQUISITION).to_bytes(2, "little") + head
            + np.asarray(record["traj"], "<f4").tobytes() + np.asarray(record["data"], "<f4").tobytes())


def parse_address(address: str, default_port: int = 9002) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise DataError(f"--server {address!r}: expected HOST:PORT") from None


def stream(address: str, xml: bytes, messages, *, config: str = "dnirecon", params: dict | None = None,
           timeout: float = 300.0) -> MrdResult:
    """One MRD session: config, header, the acquisition messages, CLOSE; collects what comes back."""
    result = MrdResult()
    host, port = parse_address(address)
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receiver = threading.Thread(target=receive, args=(sock, result), daemon=True)
        receiver.start()
        try:
            if params:
                sock.sendall(text_message(json.dumps({"parameters": {"config": config, **params}}), MessageId.CONFIG_TEXT))
            else:
                sock.sendall(config_file_message(config))
            sock.sendall(text_message(xml.decode("utf-8", "replace"), MessageId.HEADER))
            for m in messages:
                sock.sendall(m)
                result.bytes_sent += len(m)
            sock.sendall(close_message())
        except OSError:
            pass  # the server closed early (an ERR text says why); what it sent is read below
        receiver.join(timeout)
    result.seconds = time.perf_counter() - t0
    return result


def receive(sock: socket.socket, result: MrdResult) -> None:
    """Reads what the server sends until its CLOSE or the end of the connection into result."""
    r = Reader(sock)
    try:
        while True:
            mid = r.message_id()
            if mid == MessageId.CLOSE:
                result.closed = True
                return
            if mid == MessageId.TEXT:
                result.texts.append(r.text("TEXT", 1 << 20))
            elif mid == MessageId.IMAGE:
                result.images.append(MrdImage(*read_image(r, MAX_IMAGE_BYTES)))
            else:
                result.texts.append(f"ERR client: unexpected message id {mid} from the server")
                return
    except (Disconnected, OSError, ProtocolError) as exc:
        result.texts.append(f"ERR client: {exc}")
    finally:
        result.bytes_received = r.bytes_read


class Connection:
    """An MRD session driven message by message (the bench sends a slice, then waits for its image)."""

    def __init__(self, address: str, xml: bytes, *, config: str = "dnirecon", timeout: float = 300.0):
        host, port = parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock)
        self.sock.sendall(config_file_message(config) + text_message(xml.decode("utf-8", "replace"), MessageId.HEADER))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_image(self) -> tuple[MrdImage, int]:
        """The next image and the bytes its message took; DataError on an ERR text or CLOSE."""
        while True:
            start = self.reader.bytes_read
            mid = self.reader.message_id()
            if mid == MessageId.IMAGE:
                image = MrdImage(*read_image(self.reader, MAX_IMAGE_BYTES))
                return image, self.reader.bytes_read - start
            if mid == MessageId.TEXT:
                text = self.reader.text("TEXT", 1 << 20)
                if text.startswith("ERR"):
                    raise DataError(f"MRD server: {text}")
                continue
            raise DataError(f"MRD server sent message {mid} where an image was expected")

    def close(self) -> None:
        try:
            self.sock.sendall(close_message())
            while (mid := self.reader.message_id()) != MessageId.CLOSE:
                if mid == MessageId.TEXT:
                    self.reader.text("TEXT", 1 << 20)
                elif mid == MessageId.IMAGE:
                    read_image(self.reader, MAX_IMAGE_BYTES)
                else:
                    break
        except (OSError, Disconnected, ProtocolError):
            pass
        finally:
            self.sock.close()


def stream_file(address: str, path: str | os.PathLike, *, group: str = "dataset", config: str = "dnirecon",
                params: dict | None = None, timeout: float = 300.0) -> MrdResult:
    xml, records = read_raw(path, group)
    noise = (records["head"]["flags"] & np.uint64(flag("noise"))) != 0
    records = np.concatenate([records[noise], records[~noise]])  # a scanner sends its noise measurement first
    return stream(address, xml, (acquisition_bytes(rec) for rec in records), config=config, params=params, timeout=timeout)


def write_outputs(result: MrdResult, source: Path, out_dir: Path) -> tuple[Path, list[Path]]:
    """ISMRMRD HDF5 (group `dataset`, one image_<series> per series; written whole, then renamed) and a PNG per image."""
    import ismrmrd

    target = out_dir / f"{source.stem}.mrd.h5"
    with replaced_on_success(target) as tmp:
        with ismrmrd.Dataset(str(tmp), "dataset", mode="w") as dset:
            for im in result.images:
                img = ismrmrd.Image(im.head, im.attributes)
                img.data.ravel()[:] = im.pixels.ravel()
                dset.append_image(f"image_{im.head.image_series_index}", img)
    png_dir = out_dir / source.stem
    png_dir.mkdir(exist_ok=True)
    return target, [write_png(im.pixels[0, 0], png_dir / f"image_{im.head.image_series_index}_{im.head.image_index:03d}"
                                                          f"_slice_{im.head.slice:03d}.png") for im in result.images]
