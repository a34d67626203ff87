"""SIGTERM drain, bearer token and mutual TLS against a real server process."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest

from dnirecon import wire
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


# The server with a slow model stand-in: each batch sleeps 3 s first (warm-up, outside the batcher, does not).
SLOW_LAUNCHER = """import sys, threading, time
sys.modules['torch'] = None
import service.engine as engine
run = engine.OnnxModel.run
def slow(self, *args, **kw):
    if threading.current_thread().name.startswith('batcher'):
        time.sleep(3)
    return run(self, *args, **kw)
engine.OnnxModel.run = slow
from service.cli import main
sys.exit(main(sys.argv[1:]))"""


def test_sigterm_with_slices_queued_answers_them_unavailable_and_exits(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "1.5", "--max-batch", "1",
                          "--warmup-shapes", "2x32x24", launcher=SLOW_LAUNCHER)
    results: dict[str, list] = {"a": [], "b": []}
    errors: dict[str, grpc.StatusCode] = {}

    def run(name, n):
        try:
            with ReconClient(server.target) as client:
                results[name].extend(client.stream(((i, K, MASK) for i in range(n)), (32, 24), timeout=60))
        except grpc.RpcError as exc:
            errors[name] = exc.code()

    # stream a: one slice, in compute for 3 s; stream b: three slices queued behind it, nothing of b
    # ever reaches compute (before the fix b's handler waited for them forever and the process hung)
    threads = [threading.Thread(target=run, args=("a", 1)), threading.Thread(target=run, args=("b", 3))]
    threads[0].start()
    time.sleep(0.5)
    threads[1].start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0, server.log()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    assert "b" not in errors and sorted(r.slice_index for r in results["b"]) == [0, 1, 2], (results, errors)
    assert all(r.error.code_name == "UNAVAILABLE" and "shutting down" in r.error.reason for r in results["b"])
    assert results["a"] or errors["a"] == grpc.StatusCode.UNAVAILABLE  # cut at the end of the drain


def test_empty_token_file_is_refused(baked_dir, make_process, tmp_path):
    from dnirecon.errors import ConfigError

    (tmp_path / "token").write_text(" \n")
    with pytest.raises(ConfigError, match=f"--auth-token-file {tmp_path / 'token'}: empty, expected a token"):
        make_process(model_dir=baked_dir, auth_token_file=tmp_path / "token")


@pytest.mark.parametrize("content, needle", [
    (b"s3cr\xe9t\n", "byte 4 is not ASCII"),
    (b"two words\n", "' ' cannot be in a bearer token"),
    (b"tok\r\nen", "'\\r' cannot be in a bearer token"),
])
def test_a_token_file_that_is_not_one_bearer_token_is_refused(baked_dir, make_process, tmp_path, content, needle):
    """Not a traceback (UnicodeDecodeError) and not a token that no header can carry."""
    from dnirecon.errors import ConfigError

    (tmp_path / "token").write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(f"--auth-token-file {tmp_path / 'token'}: {needle}")):
        make_process(model_dir=baked_dir, auth_token_file=tmp_path / "token")


def test_a_base64_token_with_padding_is_accepted():
    from service.config import parse_bearer_token

    assert parse_bearer_token(b"  aGVsbG8-._~+/w==\n", "f") == "aGVsbG8-._~+/w=="


def test_busy_ports_are_config_errors_naming_the_setting(baked_dir, make_process):
    import socket

    from dnirecon.errors import ConfigError

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"DNIRECON_GRPC_PORT / --port .*cannot bind 127.0.0.1:{port}"):
            make_process(model_dir=baked_dir, grpc_port=port)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = make_process(model_dir=baked_dir, metrics_port=port)
        with pytest.raises(ConfigError, match=f"DNIRECON_METRICS_PORT / --metrics-port, DNIRECON_METRICS_HOST / "
                                              f"--metrics-host: cannot bind 127.0.0.1:{port}"):
            proc.start()  # the gRPC host is 127.0.0.1, so the metrics port binds there too


@pytest.mark.parametrize("step", ["load_initial", "load_served"])
def test_sigterm_during_start_up_skips_the_rest_and_never_serves(baked_dir, make_process, monkeypatch, step):
    from grpc_health.v1 import health_pb2

    import service.server as srv

    proc = make_process(model_dir=baked_dir, warmup_shapes=((2, 32, 24),))
    real = getattr(srv, step)

    def then_sigterm(*args):
        out = real(*args)
        proc.drain()  # what the SIGTERM handler's thread runs
        return out

    monkeypatch.setattr(srv, step, then_sigterm)
    proc.start()
    status = proc.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING and proc.stopped.is_set()
    if step == "load_initial":
        assert proc.holder.get() is None  # no load and warm-up after the signal


def test_sigterm_during_warm_up_stops_before_the_next_run_and_never_serves(baked_dir, make_process, monkeypatch):
    from grpc_health.v1 import health_pb2

    import service.engine as engine

    proc = make_process(model_dir=baked_dir, warmup_shapes=((2, 32, 24), (2, 16, 24)), max_batch=2)
    runs = []
    real = engine.OnnxModel.run

    def run_then_sigterm(self, *args, **kw):
        runs.append(args[0].shape)
        out = real(self, *args, **kw)
        if len(runs) == 1:
            proc.drain()  # what the SIGTERM handler's thread runs
        return out

    monkeypatch.setattr(engine.OnnxModel, "run", run_then_sigterm)
    proc.start()
    # 2 baked alphas x 2 batch sizes x 2 shapes = 8 runs without the signal; one with it
    assert len(runs) == 1 and proc.holder.get() is None and proc.stopped.is_set()
    status = proc.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


# Warm-up runs that outlast any drain: the first one sleeps 120 s, like a paper-preset run on a CPU.
HUNG_WARMUP_LAUNCHER = """import sys, threading, time
sys.modules['torch'] = None
import service.engine as engine
run = engine.OnnxModel.run
def hung(self, *args, **kw):
    time.sleep(120)
    return run(self, *args, **kw)
engine.OnnxModel.run = hung
from service.cli import main
sys.exit(main(sys.argv[1:]))"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_server_stuck_in_one_warm_up_run(baked_dir, tmp_path, sig):
    from .conftest import ServerProcess as Proc

    server = Proc(["--model-dir", str(baked_dir), "--drain-seconds", "1", "--warmup-shapes", "2x32x24"], {},
                  tmp_path / "server.log", HUNG_WARMUP_LAUNCHER)
    try:
        deadline = time.monotonic() + 60
        while "gRPC listening" not in server.log():
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        time.sleep(0.5)  # inside the sleeping warm-up run
        t0 = time.monotonic()
        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10  # drain (1 s) + 2 s for start-up, not the 120 s run
        assert "stopped during start-up" in server.log() and "SERVING" not in server.log().replace("NOT_SERVING", "")
    finally:
        server.stop()


class _Store:
    """Stands in for MlflowStore: the alias points at .version, whose baked set is the directory dirs[version]."""

    def __init__(self, dirs: dict):
        self.dirs, self.version = dirs, None

    def resolve(self, name, alias, version):
        return self.version, str(self.dirs[self.version])

    def fetch(self, name, version, source, uri, timings=None):
        from service.model_store import read_baked_set

        return read_baked_set(source, name=name, version=version, uri=uri)

    def remember_served(self, uri, version):
        pass


def test_refused_versions_are_counted_once_whether_fetch_or_load_refused_them(baked_dir, onnx_models, make_process, tmp_path):
    import hashlib
    import json
    import shutil

    from .conftest import write_baked_set

    tampered = tmp_path / "tampered"  # the sha256 check at fetch refuses it
    shutil.copytree(baked_dir, tampered)
    with open(tampered / "alpha_1.00.onnx", "ab") as f:
        f.write(b"\0")
    broken = write_baked_set(tmp_path / "broken", {a: p for a, p in onnx_models.items() if a is not None})
    (broken / "alpha_0.00.onnx").write_bytes(b"not an onnx graph")  # verifies, onnxruntime refuses it
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["alphas"][0]["graphs"][0]["sha256"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))

    proc = make_process(model_uri="models:/interpsn@production", warmup_shapes=((2, 32, 24),))
    store = _Store({"2": tampered, "3": broken, "4": baked_dir})
    follower = proc.follow(store, "1")

    def loads(outcome):
        return proc.metrics.registry.get_sample_value("dnirecon_model_loads_total", {"outcome": outcome}) or 0.0

    store.version = "2"
    follower.check_once()
    follower.check_once()  # not retried until the alias moves
    assert loads("refused") == 1.0
    store.version = "3"
    follower.check_once()
    assert loads("refused") == 2.0
    store.version = "4"
    follower.check_once()
    assert (loads("refused"), loads("ok")) == (2.0, 1.0) and proc.holder.get().baked.version == "4"


# Each batch sleeps 0.4 s first, so slices are still in compute when the stream breaks.
PACED_LAUNCHER = SLOW_LAUNCHER.replace("time.sleep(3)", "time.sleep(0.4)")


def test_a_stream_fault_still_delivers_the_good_slices_before_it(baked_dir, start_server):
    """A scanner whose acquisition aborts inside a slice keeps the slices it had sent whole (before,
    the fault went out at once and the computed results were dropped)."""
    from dnirecon.v1 import recon_pb2_grpc

    server = start_server("--model-dir", str(baked_dir), "--max-batch", "1", "--warmup-shapes", "2x32x24",
                          "--drain-seconds", "1", launcher=PACED_LAUNCHER)

    def requests():
        for i in range(3):
            yield from wire.slice_messages(i, K, MASK, (32, 24))
        yield next(wire.slice_messages(3, K, MASK, (32, 24)))  # slice 3's header, then the stream ends

    results = []
    with grpc.insecure_channel(server.target, options=wire.CHANNEL_OPTIONS) as ch:
        with pytest.raises(grpc.RpcError) as err:
            for r in recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(requests(), timeout=60):
                results.append(r)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inside slice 3" in err.value.details()
    assert sorted(r.slice_index for r in results) == [0, 1, 2] and all(r.HasField("image") for r in results)


def test_a_client_that_does_not_read_its_results_stops_the_server_computing_more(baked_dir, start_server):
    """--stream-inflight bounds results computed and not yet sent, not only those in compute. The
    client's HTTP/2 window stays at its initial 64 KiB (no BDP probing), so unread 256 KiB results
    block the server's writes instead of filling a window grown to megabytes."""
    from dnirecon.v1 import recon_pb2_grpc

    server = start_server("--model-dir", str(baked_dir), "--stream-inflight", "2", "--warmup-shapes", "2x256x256",
                          "--drain-seconds", "1")
    k, mask = synthetic_kspace(1, 2, 256, 256, seed=3)[0], test_mask(256)
    pulled = []

    def requests():
        for i in range(30):
            pulled.append(i)
            yield from wire.slice_messages(i, k, mask, (256, 256))

    def computed() -> float:  # slices through onnxruntime so far (warm-up runs are not counted)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        return float(re.search(r"^dnirecon_batch_size_sum (\S+)$", text, re.M).group(1))

    options = [*wire.CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(server.target, options=options) as ch:
        results = recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(requests(), timeout=120)
        time.sleep(4)  # reading nothing
        held, done = len(pulled), computed()
        got = sorted(r.slice_index for r in results)
    # 2 slots, plus the result whose write is blocked and one the generator holds: 4 at most
    assert done <= 4, f"the server computed {done:.0f} slices ({held} read from the client) while none of its results was read"
    assert got == list(range(30)) and computed() == 30
