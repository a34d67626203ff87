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
# What the client sends by default. Smaller chunks let the server check and scatter one chunk while the
# next is on the wire: at 15x640x368 on 2 shared cores, gRPC added 69 ms a slice with 4,000,000-byte
# chunks, 58 ms with 1,000,000 and 51 ms with 256 KiB; 128 KiB was no better (docs/benchmarks.md).
DEFAULT_CHUNK_BYTES = 256 * 1024
COMPLEX64_BYTES = 8

# Both sides pass these options so neither relies on gRPC's defaults.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

# The client's keepalive: a ping after this many seconds without traffic, the connection given up (its
# calls fail UNAVAILABLE) when no answer comes within the timeout. A scanner waiting on a slow slice then
# learns of a dead server or network path in about 40 s, not after the kernel's TCP timeouts (minutes to
# hours). The server must allow pings this often (`dnirecon serve --min-client-ping-seconds`, default 10).
CLIENT_KEEPALIVE_S = 30.0
CLIENT_KEEPALIVE_TIMEOUT_S = 10.0


def _ms(seconds: float) -> int:
    return max(1, round(1000 * seconds))


def _ping_timeout(seconds: float) -> list[tuple[str, int]]:
    # gRPC 1.85 times an unanswered ping out after grpc.http2.ping_timeout_ms (default 60 s), not after
    # grpc.keepalive_timeout_ms alone (measured: 60.0 s with only the latter set to 1 s); set both
    return [("grpc.keepalive_timeout_ms", _ms(seconds)), ("grpc.http2.ping_timeout_ms", _ms(seconds))]


def client_keepalive_options(keepalive_s: float, timeout_s: float = CLIENT_KEEPALIVE_TIMEOUT_S) -> list[tuple[str, int]]:
    """Channel arguments of the client's keepalive; keepalive_s = 0 leaves gRPC's default (no pings)."""
    if not keepalive_s > 0:
        return []
    return [("grpc.keepalive_time_ms", _ms(keepalive_s)), *_ping_timeout(timeout_s),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC stops pinging after 2 pings without a data frame; a client waiting minutes for a slice sends none
            ("grpc.http2.max_pings_without_data", 0)]


def server_connection_options(s) -> list[tuple[str, int]]:
    """Channel arguments of the server's connection management, from service.config.Settings (which says
    what each does); 0 for its keepalive, maximum age or grace leaves gRPC's default (pings after 2 h,
    connections of any age, in-flight calls never cut)."""
    options = [("grpc.keepalive_permit_without_calls", 1),  # a client may ping a connection with no call on it
               ("grpc.http2.min_ping_interval_without_data_ms", _ms(s.min_client_ping_seconds)),
               ("grpc.http2.max_ping_strikes", 2),
               ("grpc.http2.max_pings_without_data", 0)]  # keep pinging a scanner that sends nothing for minutes
    if s.keepalive_seconds > 0:
        options += [("grpc.keepalive_time_ms", _ms(s.keepalive_seconds)), *_ping_timeout(s.keepalive_timeout_seconds)]
    if s.max_connection_age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", _ms(s.max_connection_age_seconds)))
        if s.max_connection_age_grace_seconds > 0:
            options.append(("grpc.max_connection_age_grace_ms", _ms(s.max_connection_age_grace_seconds)))
    return options


def crc32(data: bytes) -> int:
    """zlib's CRC-32 (IEEE 802.3), the checksum named in recon.proto."""
    return zlib.crc32(data) & 0xFFFFFFFF


def mask_to_bytes(mask: np.ndarray) -> bytes:
    return np.ascontiguousarray(mask, dtype="<f4").tobytes()


def mask_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def gather_acquired(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Acquired columns only: kspace (C, H, W) complex64 -> (C, H, n_acquired) little-endian complex64."""
    cols = np.flatnonzero(np.asarray(mask) > 0)
    # np.take gathers whole runs along the last axis; fancy indexing is 2-3x slower at 15x640x368
    return np.take(np.asarray(kspace, dtype="<c8"), cols, axis=-1)


def pack_acquired(kspace: np.ndarray, mask: np.ndarray) -> bytes:
    """The bytes of gather_acquired: (C, H, n_acquired) complex64, C order, little-endian."""
    return gather_acquired(kspace, mask).tobytes()


class LineScatter:
    """Scatters packed acquired lines, fed in order in pieces of any size, into a zero-filled (C, H, W)
    complex64 matrix: the server feeds each chunk as it arrives, so only the last chunk's share of the
    work is left when the slice is complete.

    The scatter moves each complex64 as one int64 through a flat index: 11 ms at 15x640x368 against
    29 ms for ``full[..., cols] = lines`` (docs/benchmarks.md). The index is built per piece."""

    def __init__(self, coils: int, readout: int, mask: np.ndarray):
        self.shape = (int(coils), int(readout), int(np.asarray(mask).size))
        self._cols = np.flatnonzero(np.asarray(mask) > 0).astype(np.intp)
        self.expected_bytes = expected_payload_bytes(coils, readout, np.asarray(mask))
        # untouched pages of np.zeros are not committed: memory follows the bytes that arrive
        self._full = np.zeros(self.shape[0] * self.shape[1] * self.shape[2], dtype="<i8")
        self._placed = 0  # values scattered so far
        self._carry = b""  # bytes of a value split between two pieces
        self.finite = True  # False once a fed value holds NaN or Inf

    def _index(self, start: int, n: int) -> np.ndarray:
        """Flat positions in the matrix of payload values start .. start + n - 1 (built per piece, so
        a slice's memory grows with what arrives, not with what its header declares)."""
        m, width = self._cols.size, self.shape[2]
        first, offset = divmod(start, m)
        last = (start + n - 1) // m
        rows = np.arange(first, last + 1, dtype=np.intp)
        return (rows[:, None] * width + self._cols[None, :]).reshape(-1)[offset : offset + n]

    @property
    def received_bytes(self) -> int:
        return self._placed * COMPLEX64_BYTES + len(self._carry)

    def feed(self, data: bytes) -> None:
        """Scatters the next piece of the payload; raises ValueError past the expected size."""
        if self.received_bytes + len(data) > self.expected_bytes:
            raise ValueError(f"{self.received_bytes + len(data)} k-space bytes, expected {self.expected_bytes}")
        if self._carry:
            data = self._carry + bytes(data)
        n = len(data) // COMPLEX64_BYTES
        self._carry = bytes(data[n * COMPLEX64_BYTES :])
        if n:
            values = np.frombuffer(data, dtype="<i8", count=n)
            if self.finite and not np.isfinite(values.view("<f4")).all():
                self.finite = False
            self._full[self._index(self._placed, n)] = values
            self._placed += n

    def result(self) -> np.ndarray:
        """The zero-filled (C, H, W) complex64 matrix; raises ValueError if the payload is incomplete."""
        if self.received_bytes != self.expected_bytes:
            raise ValueError(f"{self.received_bytes} k-space bytes, expected {self.expected_bytes}")
        return self._full.view("<c8").reshape(self.shape)


def unpack_acquired(payload: bytes, coils: int, readout: int, mask: np.ndarray) -> np.ndarray:
    """Inverse of pack_acquired: scatter the lines into a zero-filled (C, H, W) complex64 matrix."""
    scatter = LineScatter(coils, readout, mask)
    scatter.feed(payload)
    return scatter.result()


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


def check_chunk_bytes(chunk_bytes: int) -> int:
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes is {chunk_bytes}, expected 1 to {MAX_CHUNK_BYTES}")
    return chunk_bytes


def iter_chunks(slice_index: int, payload, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[recon_pb2.KspaceChunk]:
    """Splits payload (bytes, or a C-contiguous array: copied once, chunk by chunk) into chunks of at
    most chunk_bytes (1 to MAX_CHUNK_BYTES), each with its CRC-32; the last is flagged."""
    check_chunk_bytes(chunk_bytes)
    if isinstance(payload, np.ndarray):
        view = memoryview(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
    else:
        view = memoryview(payload).cast("B")
    n = max(1, -(-len(view) // chunk_bytes))
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
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[recon_pb2.StreamRequest]:
    """The StreamRequests for one slice: its header, then its acquired lines in chunks."""
    header = make_header(slice_index, kspace.shape, mask, recon_size, alpha=alpha, model=model, request_id=request_id)
    yield recon_pb2.StreamRequest(header=header)
    for chunk in iter_chunks(slice_index, gather_acquired(kspace, mask), chunk_bytes):
        yield recon_pb2.StreamRequest(chunk=chunk)


def image_from_result(result: recon_pb2.SliceResult) -> np.ndarray:
    img = result.image
    return np.frombuffer(img.data, dtype="<f4").reshape(tuple(img.shape)).astype(np.float32)
