"""The wire format of dnirecon.v1, shared by the server and the client: packing of the acquired
lines, chunking with CRC-32, and the message limits both sides set explicitly."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from dnirecon.v1 import recon_pb2

# 4 MiB (4,194,304) is gRPC's default message limit; a 4,000,000-byte chunk plus its header fits it.
MAX_CHUNK_BYTES = 4_000_000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
COMPLEX64_BYTES = 8

# Both sides pass these options so neither relies on gRPC's defaults.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def crc32(data: bytes) -> int:
    """zlib's CRC-32 (IEEE 802.3), the checksum named in recon.proto."""
    return zlib.crc32(data) & 0xFFFFFFFF


def mask_to_bytes(mask: np.ndarray) -> bytes:
    return np.ascontiguousarray(mask, dtype="<f4").tobytes()


def mask_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def pack_acquired(kspace: np.ndarray, mask: np.ndarray) -> bytes:
    """Acquired columns only: kspace (C, H, W) complex64 -> bytes of (C, H, n_acquired), C order, LE."""
    cols = np.flatnonzero(np.asarray(mask) > 0)
    # np.take gathers whole runs along the last axis; fancy indexing is 2-3x slower at 15x640x368
    return np.take(np.asarray(kspace, dtype="<c8"), cols, axis=-1).tobytes()


def unpack_acquired(payload: bytes, coils: int, readout: int, mask: np.ndarray) -> np.ndarray:
    """Inverse of pack_acquired: scatter the lines into a zero-filled (C, H, W) complex64 matrix."""
    cols = np.flatnonzero(mask > 0)
    lines = np.frombuffer(payload, dtype="<c8").reshape(coils, readout, cols.size)
    full = np.zeros((coils, readout, mask.size), dtype=np.complex64)
    full[..., cols] = lines
    return full


def expected_payload_bytes(coils: int, readout: int, mask: np.ndarray) -> int:
    return int(coils) * int(readout) * int(np.count_nonzero(mask > 0)) * COMPLEX64_BYTES


def make_header(
    slice_index: int,
    kspace_shape: tuple[int, int, int],
    mask: np.ndarray,
    recon_size: tuple[int, int],
    *,
    alpha: float | None = None,
    model: str = "",
    request_id: str = "",
) -> recon_pb2.SliceHeader:
    coils, readout, phase = (int(v) for v in kspace_shape)
    header = recon_pb2.SliceHeader(
        slice_index=slice_index,
        coils=coils,
        readout=readout,
        phase=phase,
        dtype=recon_pb2.COMPLEX64,
        mask=mask_to_bytes(mask),
        recon_height=int(recon_size[0]),
        recon_width=int(recon_size[1]),
        model=model,
        request_id=request_id,
        payload_bytes=expected_payload_bytes(coils, readout, np.asarray(mask)),
    )
    if alpha is not None:
        header.alpha = float(alpha)
    return header


def iter_chunks(slice_index: int, payload: bytes, chunk_bytes: int = MAX_CHUNK_BYTES) -> Iterator[recon_pb2.KspaceChunk]:
    """Splits payload into chunks of at most chunk_bytes, each with its CRC-32; the last is flagged."""
    view = memoryview(payload)
    n = max(1, -(-len(payload) // chunk_bytes))
    for seq in range(n):
        part = bytes(view[seq * chunk_bytes : (seq + 1) * chunk_bytes])
        yield recon_pb2.KspaceChunk(slice_index=slice_index, seq=seq, data=part, crc32=crc32(part), last=seq == n - 1)


def slice_messages(
    slice_index: int,
    kspace: np.ndarray,
    mask: np.ndarray,
    recon_size: tuple[int, int],
    *,
    alpha: float | None = None,
    model: str = "",
    request_id: str = "",
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[recon_pb2.StreamRequest]:
    """The StreamRequests for one slice: its header, then its acquired lines in chunks."""
    header = make_header(slice_index, kspace.shape, mask, recon_size, alpha=alpha, model=model, request_id=request_id)
    yield recon_pb2.StreamRequest(header=header)
    for chunk in iter_chunks(slice_index, pack_acquired(kspace, mask), chunk_bytes):
        yield recon_pb2.StreamRequest(chunk=chunk)


def image_from_result(result: recon_pb2.SliceResult) -> np.ndarray:
    img = result.image
    return np.frombuffer(img.data, dtype="<f4").reshape(tuple(img.shape)).astype(np.float32)
