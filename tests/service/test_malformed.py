"""Acceptance 2 of issue 5: each malformed input gets its per-slice error or stream status, and the
server stays SERVING and answers the next good slice."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from dnirecon.v1 import recon_pb2, recon_pb2_grpc
from dnirecon import wire
from service.client import ReconClient

from .conftest import synthetic_kspace, test_mask

K = synthetic_kspace(1, 2, 32, 24, seed=7)[0]
MASK = test_mask()


def good(index: int, **kw) -> list:
    return list(wire.slice_messages(index, K, MASK, (32, 24), **kw))


def header_of(msgs) -> recon_pb2.SliceHeader:
    return msgs[0].header


def with_header(**changes):
    msgs = good(0)
    h = header_of(msgs)
    for key, value in changes.items():
        setattr(h, key, value)
    return msgs


def with_payload(payload: bytes, declared: int | None = None):
    msgs = good(0)
    if declared is not None:
        header_of(msgs).payload_bytes = declared
    chunk = recon_pb2.KspaceChunk(slice_index=0, seq=0, data=payload, crc32=wire.crc32(payload), last=True)
    return [msgs[0], recon_pb2.StreamRequest(chunk=chunk)]


def with_value(value: float):
    k = K.copy()
    k[1, 5, 0] = value
    return list(wire.slice_messages(0, k, MASK, (32, 24)))


def bad_crc():
    msgs = good(0)
    msgs[1].chunk.crc32 ^= 1
    return msgs


def mask_bytes(mask):
    msgs = good(0)
    header_of(msgs).mask = wire.mask_to_bytes(mask)
    return msgs


def oversize_chunk():
    # a valid header for a slice of > 4,000,008 bytes, then one chunk of 4,000,008 bytes: under
    # gRPC's 4 MiB message limit, over the protocol's chunk limit
    n = int(MASK.sum())
    coils = -(-4_000_008 // (32 * n * 8))
    header = wire.make_header(0, (coils, 32, 24), MASK, (32, 24))
    data = np.zeros(500_001, np.complex64).tobytes()
    chunk = recon_pb2.KspaceChunk(slice_index=0, seq=0, data=data, crc32=wire.crc32(data), last=True)
    return [recon_pb2.StreamRequest(header=header), recon_pb2.StreamRequest(chunk=chunk)]


PAYLOAD = wire.pack_acquired(K, MASK)
Code = grpc.StatusCode

# (name, messages for the bad slice 0, expected per-slice error code)
SLICE_ERRORS = [
    ("coils_zero", lambda: with_header(coils=0), Code.INVALID_ARGUMENT),
    ("unsupported_dtype", lambda: with_header(dtype=recon_pb2.FLOAT32), Code.INVALID_ARGUMENT),
    ("mask_length_not_phase", lambda: with_header(phase=20), Code.INVALID_ARGUMENT),
    ("mask_not_binary", lambda: mask_bytes(MASK * 0.5), Code.INVALID_ARGUMENT),
    ("mask_empty", lambda: mask_bytes(MASK * 0), Code.INVALID_ARGUMENT),
    ("declared_bytes_disagree_with_mask", lambda: with_header(payload_bytes=len(PAYLOAD) - 8), Code.INVALID_ARGUMENT),
    ("too_few_bytes", lambda: with_payload(PAYLOAD[:-8]), Code.INVALID_ARGUMENT),
    ("too_many_bytes", lambda: with_payload(PAYLOAD + b"\0" * 8), Code.INVALID_ARGUMENT),
    ("bad_checksum", bad_crc, Code.DATA_LOSS),
    ("nan_in_kspace", lambda: with_value(math.nan), Code.INVALID_ARGUMENT),
    ("inf_in_kspace", lambda: with_value(math.inf), Code.INVALID_ARGUMENT),
    ("unknown_model", lambda: good(0, model="no-such-model"), Code.NOT_FOUND),
    ("alpha_outside_0_1", lambda: good(0, alpha=1.5), Code.INVALID_ARGUMENT),
    ("alpha_nan", lambda: good(0, alpha=math.nan), Code.INVALID_ARGUMENT),
    ("recon_size_larger_than_matrix", lambda: with_header(recon_height=64), Code.INVALID_ARGUMENT),
    ("declared_slice_too_large", lambda: with_header(coils=100000, readout=4096), Code.RESOURCE_EXHAUSTED),
    ("chunk_over_4000000_bytes", oversize_chunk, Code.RESOURCE_EXHAUSTED),
    ("duplicate_slice_index", lambda: good(1) + good(1), Code.ALREADY_EXISTS),
]


def _chunk(index, seq, data=b"\0" * 8, last=False):
    return recon_pb2.StreamRequest(chunk=recon_pb2.KspaceChunk(slice_index=index, seq=seq, data=data, crc32=wire.crc32(data), last=last))


# (name, messages, expected stream status)
STREAM_ERRORS = [
    ("chunk_without_header", lambda: [_chunk(0, 0, last=True)], Code.INVALID_ARGUMENT),
    ("chunks_out_of_order", lambda: [good(0)[0], _chunk(0, 1)], Code.INVALID_ARGUMENT),
    ("chunk_of_another_slice", lambda: [good(0)[0], _chunk(3, 0)], Code.INVALID_ARGUMENT),
    ("header_while_slice_open", lambda: [good(0)[0], good(1)[0]], Code.INVALID_ARGUMENT),
    ("stream_ends_inside_slice", lambda: [good(0)[0]], Code.INVALID_ARGUMENT),
    ("empty_request", lambda: [recon_pb2.StreamRequest()], Code.INVALID_ARGUMENT),
    # over the 16 MiB the server reads (4 MiB and over is answered per slice: test_pressure.py)
    ("message_over_16_mib", lambda: [good(0)[0], _chunk(0, 0, data=b"\0" * (17 * 1024 * 1024), last=True)], Code.RESOURCE_EXHAUSTED),
]


def assert_still_serving(server) -> None:
    with ReconClient(server.target) as client:
        assert client.health() == "SERVING"
        assert client.health("dnirecon.v1.Reconstruction") == "SERVING"
        (r,) = client.stream([(9, K, MASK)], (32, 24), timeout=30)
    assert r.slice_index == 9 and r.HasField("image")


@pytest.mark.parametrize("name,make,code", SLICE_ERRORS, ids=[c[0] for c in SLICE_ERRORS])
def test_malformed_slice_gets_error_result_and_stream_goes_on(server, name, make, code):
    msgs = make() + good(9)
    with grpc.insecure_channel(server.target, options=wire.CHANNEL_OPTIONS) as ch:
        results = list(recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(iter(msgs), timeout=30))
    errors = [r for r in results if r.HasField("error")]
    assert len(errors) == 1, results
    assert errors[0].error.code_name == code.name and errors[0].error.code == code.value[0]
    assert errors[0].error.reason
    goods = [r for r in results if r.HasField("image")]
    # the good slice after the bad one is answered on the same stream
    assert 9 in [r.slice_index for r in goods]
    assert len(results) == len({r.slice_index for r in results}) or name == "duplicate_slice_index"
    assert_still_serving(server)


@pytest.mark.parametrize("name,make,code", STREAM_ERRORS, ids=[c[0] for c in STREAM_ERRORS])
def test_broken_stream_ends_with_status(server, name, make, code):
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 32 * 1024 * 1024)]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(iter(make()), timeout=30))
    assert err.value.code() == code, err.value.details()
    assert_still_serving(server)


def test_unary_malformed_slice_gets_status(server):
    with ReconClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.reconstruct_one(0, K, MASK, (32, 24), alpha=2.0, timeout=30)
    assert err.value.code() == Code.INVALID_ARGUMENT and "alpha" in err.value.details()
    assert_still_serving(server)
