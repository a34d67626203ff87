"""The MRD endpoint under the server's shared limits: call slots (max_streams), the memory budget for slices
being assembled (slice_memory_bytes) and the idle time of an open slice (slice_idle_seconds), on real
servers over loopback, beside gRPC streams holding the same limits."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnirecon.ismrmrd_io import fastmri_to_ismrmrd
from dnirecon import wire
from service.mrd_client import MrdResult, acquisition_bytes, read_raw, receive, stream
from service.mrd_protocol import close_message

from .conftest import synthetic_kspace, test_mask, write_volume_file
from .test_mrd_e2e import start_mrd_server, undersampled_mask
from .test_mrd_malformed import CONFIG, header, raw_session
from .test_pressure import HeldStream, metric

SLICE_BYTES = 3 * 32 * 24 * 8  # the test volume's zero-filled matrix: 3 coils x 32 x 24 complex64


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """(ISMRMRD XML, acquisition records) of 3 undersampled slices, 3 coils, 32x24."""
    d = tmp_path_factory.mktemp("mrdlim")
    path, _k = write_volume_file(d / "vol.h5", 3, seed=6)
    return read_raw(fastmri_to_ismrmrd(path, d / "vol.mrd.h5", mask=undersampled_mask()))


def messages(records) -> bytes:
    return b"".join(acquisition_bytes(r) for r in records)


def of_slice(records, index: int):
    return records[records["head"]["idx"]["slice"] == index]


def wait_metric(server, name: str, value: float, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while (got := metric(server, name)) != value and time.monotonic() < end:
        time.sleep(0.1)
    assert got == value, f"{name} is {got}, expected {value}"


def health(server) -> int:
    with grpc.insecure_channel(server.target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def connect(server) -> socket.socket:
    host, port = server.mrd_target.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


@pytest.fixture(scope="module")
def limited(baked_dir, tmp_path_factory):
    """A server allowing 3 calls or sessions at once, an open slice idle for at most 1 s."""
    s = start_mrd_server(baked_dir, tmp_path_factory.mktemp("mrdlimsrv"), "--max-streams", "3",
                         "--slice-idle-seconds", "1")
    try:
        yield s
    finally:
        s.stop()


# ---- call slots: MRD sessions and gRPC calls share max_streams -------------------------------------------

def test_mrd_sessions_beyond_max_streams_are_refused_with_err_and_a_grpc_stream_counts_against_the_same_limit(
        limited, volume):
    xml, records = volume
    wait_metric(limited, "dnirecon_reconstruct_calls_open", 0)
    with grpc.insecure_channel(limited.target) as ch:
        grpc_stream = HeldStream(ch)  # open, sending nothing
        wait_metric(limited, "dnirecon_reconstruct_calls_open", 1)
        sessions = [connect(limited) for _ in range(2)]
        try:
            for s in sessions:
                s.sendall(CONFIG)  # configured, then silent between slices: no idle close
            wait_metric(limited, "dnirecon_reconstruct_calls_open", 3)
            refused = raw_session(limited.mrd_target, CONFIG)
            assert refused.texts == ["ERR 3 reconstruction calls and MRD sessions already open on this server "
                                     "(max_streams); try again later or on another replica"]
            assert refused.closed and refused.images == []
            assert health(limited) == health_pb2.HealthCheckResponse.SERVING
            extra = HeldStream(ch)  # and a gRPC stream is refused for the MRD sessions
            extra.thread.join(10)
            assert extra.error is not None and extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "3 reconstruction calls already open" in extra.error.details()
        finally:
            for s in sessions:
                s.close()
        grpc_stream.close()
        grpc_stream.thread.join(10)
    wait_metric(limited, "dnirecon_reconstruct_calls_open", 0)
    good = stream(limited.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)  # slots given back
    assert good.errors == [] and good.closed and len(good.images) == 3


# ---- idle: an open slice waits at most slice_idle_seconds -------------------------------------------------

def test_an_idle_mrd_slice_is_closed_with_the_idle_error_after_slice_idle_seconds(limited, volume):
    xml, records = volume
    first = of_slice(records, 0)
    result = MrdResult()
    with connect(limited) as sock:
        sock.sendall(CONFIG + header(xml) + messages(first[:3]))  # slice 0 opened, then nothing
        receive(sock, result)
    assert result.texts == ["ERR no message for slice 0 in 1 s (slice_idle_seconds); its memory is freed and the "
                            "session ends"]
    assert result.closed and result.images == []
    wait_metric(limited, "dnirecon_slice_memory_reserved_bytes", 0)
    assert health(limited) == health_pb2.HealthCheckResponse.SERVING


def test_an_mrd_session_silent_between_slices_longer_than_slice_idle_seconds_goes_on(limited, volume):
    xml, records = volume
    result = MrdResult()
    with connect(limited) as sock:
        sock.sendall(CONFIG + header(xml) + messages(of_slice(records, 0)))  # slice 0 whole (LAST_IN_SLICE)
        time.sleep(2.5)  # 2.5x slice_idle_seconds with no slice open
        sock.sendall(messages(of_slice(records, 1)) + messages(of_slice(records, 2)) + close_message())
        receive(sock, result)
    assert result.errors == [] and result.closed
    assert [im.head.slice for im in result.images] == [0, 1, 2]


# ---- memory: MRD slices reserve from the budget the gRPC slices use ----------------------------------------

def test_an_mrd_slice_larger_than_the_budget_is_refused_with_err_and_the_session_goes_on(baked_dir, tmp_path, volume):
    xml, records = volume
    server = start_mrd_server(baked_dir, tmp_path, "--slice-memory-bytes", "10000")
    try:
        result = stream(server.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)
        assert result.images == [] and result.closed
        assert result.texts == [f"ERR slice {i}: {SLICE_BYTES} bytes zero-filled do not fit the memory for slices being "
                                f"assembled ({SLICE_BYTES} bytes asked, 10000 of 10000 left, slice_memory_bytes=10000); "
                                "its readouts are skipped and the session goes on" for i in range(3)]
        assert metric(server, "dnirecon_slice_memory_reserved_bytes") == 0
        assert health(server) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_a_grpc_slice_being_assembled_leaves_less_budget_to_mrd_slices_until_it_is_released(baked_dir, tmp_path, volume):
    xml, records = volume
    budget = 3 * SLICE_BYTES + 5000  # three MRD slices at once, but not beside the gRPC slice
    server = start_mrd_server(baked_dir, tmp_path, "--slice-memory-bytes", str(budget))
    try:
        big = synthetic_kspace(1, 8, 32, 24, seed=1)[0]  # 8 coils x 32 x 24: 49,152 bytes zero-filled
        with grpc.insecure_channel(server.target) as ch:
            held = HeldStream(ch)
            held.send(next(wire.slice_messages(0, big, test_mask(), (16, 16))))  # its header, no chunk yet
            wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 49_152)
            refused = stream(server.mrd_target, xml, (acquisition_bytes(r) for r in of_slice(records, 0)), timeout=60)
            assert refused.images == [] and refused.closed
            (text,) = refused.texts
            assert text.startswith(f"ERR slice 0: {SLICE_BYTES} bytes zero-filled do not fit") and \
                f"{budget - 49_152} of {budget} left, slice_memory_bytes={budget}" in text
            held.call.cancel()
            held.thread.join(10)
        wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 0)
        good = stream(server.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)
        assert good.errors == [] and len(good.images) == 3
        wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 0)  # released once the images are sent
    finally:
        server.stop()


def test_a_refused_slice_is_answered_alone_and_the_next_slice_is_reconstructed(baked_dir, tmp_path, volume):
    xml, records = volume
    server = start_mrd_server(baked_dir, tmp_path, "--slice-memory-bytes", str(SLICE_BYTES + 5000))
    try:
        with grpc.insecure_channel(server.target) as ch:
            held = HeldStream(ch)  # 2 coils x 32 x 24 = 12,288 bytes held while slice 0 arrives
            held.send(next(wire.slice_messages(0, synthetic_kspace(1, 2, 32, 24)[0], test_mask(), (16, 16))))
            wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 12_288)
            result = MrdResult()
            with connect(server) as sock:
                reader = threading.Thread(target=receive, args=(sock, result))
                reader.start()
                sock.sendall(CONFIG + header(xml) + messages(of_slice(records, 0)))
                end = time.monotonic() + 15
                while not result.texts and time.monotonic() < end:  # slice 0 answered before the memory is freed
                    time.sleep(0.05)
                held.call.cancel()
                wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 0)
                sock.sendall(messages(of_slice(records, 1)) + close_message())
                reader.join(30)
        assert [t.split(":")[0] for t in result.texts] == ["ERR slice 0"]
        assert [im.head.slice for im in result.images] == [1] and result.closed
        assert np.isfinite(result.images[0].image).all()
    finally:
        server.stop()
