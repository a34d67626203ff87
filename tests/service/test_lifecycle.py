"""SIGTERM drain, bearer token and mutual TLS against a real server process."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import grpc
import pytest

from service.client import ReconClient

from .conftest import ServerProcess, synthetic_kspace, test_mask

K, MASK = synthetic_kspace(1, 2, 32, 24, seed=11)[0], test_mask()


def test_sigterm_finishes_the_stream_in_flight_refuses_new_ones_and_exits(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "10")
    sent_first, go_on = threading.Event(), threading.Event()

    def slices():
        yield 0, K, MASK
        sent_first.set()
        go_on.wait(20)
        yield 1, K, MASK

    results, errors = [], []

    def run():
        try:
            with ReconClient(server.target) as client:
                results.extend(client.stream(slices(), (32, 24), timeout=60))
        except grpc.RpcError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert sent_first.wait(20)
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with ReconClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            list(client.stream([(0, K, MASK)], (32, 24), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.proc.poll() is None  # still draining
    go_on.set()
    t.join(30)
    assert errors == [] and sorted(r.slice_index for r in results) == [0, 1]
    assert server.proc.wait(timeout=20) == 0
    assert "draining" in server.log()


def test_bearer_token_is_required_when_configured(baked_dir, start_server, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    server = start_server("--model-dir", str(baked_dir), "--auth-token-file", str(tmp_path / "token"), "--drain-seconds", "1")
    for token in (None, "wrong"):
        with ReconClient(server.target, token=token) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.server_info()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with ReconClient(server.target, token="s3cret") as client:
        (r,) = client.stream([(0, K, MASK)], (32, 24), timeout=30)
        assert r.HasField("image")
        assert client.health() == "SERVING"  # probes need no token


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_mutual_tls(baked_dir, tmp_path):
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-copy_extensions", "copy", cwd=d)
    s = ServerProcess(["--model-dir", str(baked_dir), "--drain-seconds", "1", "--tls-cert-file", str(d / "server.pem"),
                       "--tls-key-file", str(d / "server.key"), "--tls-client-ca-file", str(d / "ca.pem")], {}, d / "tls.log")
    try:
        end = time.monotonic() + 60
        ok = None
        while time.monotonic() < end and ok is None:
            try:
                with ReconClient(s.target, root_cert=d / "ca.pem", client_cert=d / "client.pem", client_key=d / "client.key") as c:
                    if c.health() == "SERVING":
                        (ok,) = c.stream([(0, K, MASK)], (32, 24), timeout=30)
            except grpc.RpcError:
                time.sleep(0.3)
        assert ok is not None and ok.HasField("image"), s.log()
        with ReconClient(s.target, root_cert=d / "ca.pem") as c:  # no client certificate
            with pytest.raises(grpc.RpcError):
                c.health()
    finally:
        s.stop()


def test_cuda_requested_without_gpu_is_reported_loudly(baked_dir, start_server):
    import urllib.request

    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "1", "--providers", "cuda,cpu")
    with ReconClient(server.target) as client:
        info = client.server_info()
        (r,) = client.stream([(0, K, MASK)], (32, 24), timeout=30)
    assert list(info.requested_providers) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert list(info.providers) == ["CPUExecutionProvider"] and info.provider_fallback
    assert r.HasField("image")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert "dnirecon_provider_fallback 1.0" in text
    assert "ERROR service.engine: onnxruntime providers requested" in server.log()
