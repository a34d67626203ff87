"""Broken MRD sessions: each gets an ERR text or a clean close, the server stays SERVING on both
endpoints, and a good session right after succeeds."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnirecon.ismrmrd_io import fastmri_to_ismrmrd
from service.mrd_client import MrdResult, acquisition_bytes, read_raw, receive, stream
from service.mrd_protocol import MessageId, close_message, config_file_message, text_message

from .conftest import write_volume_file
from .test_mrd_e2e import start_mrd_server, undersampled_mask

PATIENT = "DOE^JOHN_4711"
SUBJECT = (f"<subjectInformation><patientName>{PATIENT}</patientName><patientID>PID-{PATIENT}</patientID>"
           "</subjectInformation>")


@pytest.fixture(scope="module")
def env(baked_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("mrdbad")
    path, _k = write_volume_file(d / "vol.h5", 3, seed=5)
    raw = fastmri_to_ismrmrd(path, d / "vol.mrd.h5", mask=undersampled_mask())
    xml, records = read_raw(raw)
    xml = xml.replace(b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">',
                      b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">' + SUBJECT.encode())
    s = start_mrd_server(baked_dir, d)
    try:
        yield s, xml, records
    finally:
        s.stop()


def header(xml: bytes) -> bytes:
    return text_message(xml.decode(), MessageId.HEADER)


def acqs(records) -> bytes:
    return b"".join(acquisition_bytes(r) for r in records)


def edited(records, fn):
    out = records.copy()
    fn(out)
    return out


def set_samples(r):
    r["head"]["number_of_samples"][0] = 31
    r["data"][0] = np.zeros(2 * 31 * 3, np.float32)


def set_step(r):
    r["head"]["idx"]["kspace_encode_step_1"][4] = 22  # limits 0..21


def set_nan(r):
    d = r["data"][7].copy()
    d[5] = np.nan
    r["data"][7] = d


def with_coils(xml: bytes, n: int) -> bytes:
    return xml.replace(b"<encoding>", f"<acquisitionSystemInformation><receiverChannels>{n}</receiverChannels>"
                                      f"</acquisitionSystemInformation><encoding>".encode())


CONFIG = config_file_message("dnirecon")
# (case, messages from (xml, records), expected ERR text (regex) or None for a clean close without one)
CASES = [
    ("unknown message id", lambda x, r: CONFIG + header(x) + struct.pack("<H", 999), r"ERR unknown message id 999, expected one of"),
    ("truncated message", lambda x, r: CONFIG + header(x) + acquisition_bytes(r[0])[:200], r"ERR truncated message"),
    ("length field 2^32-1", lambda x, r: CONFIG + struct.pack("<HI", MessageId.HEADER, 2**32 - 1),
     r"ERR HEADER of 4294967295 bytes, expected at most 4194304"),
    ("invalid XML header", lambda x, r: CONFIG + header(b"<ismrmrdHeader><encoding>") + acqs(r), r"ERR HEADER is not valid XML"),
    ("samples disagree with the header", lambda x, r: CONFIG + header(x) + acqs(edited(r, set_samples)),
     r"ERR acquisition 0: 31 samples, expected 32 \(HEADER encodedSpace matrixSize x\)"),
    ("coils disagree with the header", lambda x, r: CONFIG + header(with_coils(x, 4)) + acqs(r),
     r"ERR acquisition 0: 3 coils, expected 4 \(HEADER receiverChannels\)"),
    ("encode step outside the limits", lambda x, r: CONFIG + header(x) + acqs(edited(r, set_step)),
     r"ERR acquisition 4: kspace_encode_step_1 22 outside the encoding limits 0..21"),
    ("NaN data", lambda x, r: CONFIG + header(x) + acqs(edited(r, set_nan)), r"ERR acquisition 7: data holds NaN or Inf"),
    ("data before the header", lambda x, r: CONFIG + acqs(r[:3]), r"ERR ACQUISITION before the HEADER"),
    ("header before the config", lambda x, r: header(x) + acqs(r), r"ERR HEADER before a CONFIG_FILE or CONFIG_TEXT"),
    ("empty session", lambda x, r: b"", None),
    ("config and header only", lambda x, r: CONFIG + header(x) + close_message(), r"WRN no acquisitions received"),
    ("1 MB config text", lambda x, r: text_message("{" + " " * (1 << 20) + "}", MessageId.CONFIG_TEXT) + header(x),
     r"ERR CONFIG_TEXT of 1048578 bytes, expected at most 65536"),
    ("config text that is not JSON", lambda x, r: text_message("<gadgetronStreamConfiguration/>", MessageId.CONFIG_TEXT),
     r"ERR CONFIG_TEXT is not a JSON object of parameters"),
    ("alpha outside [0, 1]", lambda x, r: text_message('{"parameters": {"alpha": 7}}', MessageId.CONFIG_TEXT) + header(x) + acqs(r),
     r"ERR unknown alpha"),
    ("an image sent to the server", lambda x, r: CONFIG + header(x) + struct.pack("<H", MessageId.IMAGE) + b"\0" * 300,
     r"ERR IMAGE messages are not accepted"),
]


def raw_session(target: str, data: bytes, timeout: float = 30.0) -> MrdResult:
    """Sends data, half-closes, and reads what comes back until the server's CLOSE or end of connection."""
    host, port = target.rsplit(":", 1)
    result = MrdResult()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        receive(sock, result)
    return result


def assert_serving(server, xml, records) -> None:
    with grpc.insecure_channel(server.target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    good = stream(server.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)
    assert good.errors == [] and good.closed and len(good.images) == 3


@pytest.mark.parametrize("case,build,expected", CASES, ids=[c[0] for c in CASES])
def test_a_broken_session_gets_err_or_a_clean_close_and_the_server_goes_on(env, case, build, expected):
    server, xml, records = env
    result = raw_session(server.mrd_target, build(xml, records))
    assert result.images == []
    if expected is None:
        assert [t for t in result.texts if not t.startswith("ERR client")] == []
    else:
        assert any(re.match(expected, t) for t in result.texts), result.texts
        assert result.closed, f"no CLOSE after {result.texts}"
    assert_serving(server, xml, records)


def test_a_connection_dropped_mid_slice_leaves_the_server_serving(env):
    server, xml, records = env
    host, port = server.mrd_target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(CONFIG + header(xml) + acqs(records[:5]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST: the peer is gone
    sock.close()
    assert_serving(server, xml, records)


def test_two_interleaved_sessions_each_get_their_own_images(env):
    server, xml, records = env
    host, port = server.mrd_target.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
    results = [MrdResult(), MrdResult()]
    readers = [threading.Thread(target=receive, args=(s, r)) for s, r in zip(socks, results)]
    for t in readers:
        t.start()
    parts = [CONFIG, header(xml)] + [acquisition_bytes(r) for r in records] + [close_message()]
    for part in parts:  # one message to each in turn
        for s in socks:
            s.sendall(part)
    for t in readers:
        t.join(60)
    for s in socks:
        s.close()
    for r in results:
        assert r.errors == [] and r.closed and [im.head.slice for im in r.images] == [0, 1, 2]
    np.testing.assert_array_equal(results[0].images[1].pixels, results[1].images[1].pixels)


def test_the_log_holds_no_patient_field(env):
    server, xml, records = env
    stream(server.mrd_target, xml, (acquisition_bytes(r) for r in records), timeout=60)
    raw_session(server.mrd_target, config_file_message("x\x1b[31m" + "y" * 500))
    log = server.log()
    assert "mrd session" in log
    assert PATIENT not in log and "patientName" not in log
    assert "\x1b[31m" not in log and "y" * 100 not in log


def test_an_mrd_listener_that_stops_without_a_drain_sets_health_not_serving(make_process, baked_dir):
    from .conftest import free_port

    proc = make_process(model_dir=baked_dir, mrd_port=free_port(), warmup_shapes=((3, 32, 24),))
    proc.start()

    def health() -> int:
        with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status

    assert health() == health_pb2.HealthCheckResponse.SERVING
    proc.mrd.sock.shutdown(socket.SHUT_RDWR)  # accept() fails as it would on a broken listener
    proc.mrd._thread.join(5)
    assert not proc.mrd._thread.is_alive()
    assert health() == health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_config_name_with_newline_and_esc_leaves_one_escaped_log_line(env):
    server, _xml, _records = env
    name = "scan-9\n2026-12-06 00:00:00 INFO service.mrd_server: FORGED\x1b[31m"
    result = raw_session(server.mrd_target, config_file_message(name))
    assert result.texts and result.texts[0].startswith("ERR unknown config 'scan-9\\n2026-12-06")
    time.sleep(0.3)
    lines = [line for line in server.log().splitlines() if "FORGED" in line]
    assert len(lines) == 1, lines
    assert "scan-9\\n2026-12-06" in lines[0] and "FORGED\\x1b[31m" in lines[0] and "\x1b" not in server.log()
