"""Connection management on a real gRPC server, seen through a loopback TCP proxy that counts connections
and can go silent (it stops forwarding but keeps the sockets open, as a cut network path does):
keepalive on both sides, the server's ping policy, and the maximum connection age."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest

from service.client import ReconClient

from .conftest import synthetic_kspace, test_mask, write_volume_file

SIZE = (32, 24)


class SilenceableProxy:
    """127.0.0.1:port -> the server. freeze() stops all forwarding; nothing is closed."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.flowing = threading.Event()
        self.flowing.set()
        self.closing = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))  # read per connection: switchable
            self.connections += 1
            self.sockets += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self.flowing.wait()
                data = src.recv(65536)
                if not data or self.closing:
                    break
                self.flowing.wait()  # a chunk read just before freeze() is held, not forwarded
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def freeze(self) -> None:
        self.flowing.clear()

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.flowing.set()

    def __enter__(self) -> "SilenceableProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def active_streams(proc) -> float:
    return proc.metrics.registry.get_sample_value("dnirecon_streams_active")


@pytest.fixture
def serving(baked_dir, make_process):
    def start(**settings):
        proc = make_process(model_dir=baked_dir, warmup_shapes=((2, *SIZE),), **settings)
        proc.start()
        return proc

    return start


@pytest.mark.parametrize("max_age, connections", [(0.0, 1), (1.0, 2)])
def test_max_connection_age_moves_the_client_to_a_new_connection_and_lets_open_streams_finish(serving, max_age, connections):
    """Behind a Kubernetes Service, a new connection is how a client reaches a replica added since."""
    proc = serving(max_connection_age_seconds=max_age)
    k, mask = synthetic_kspace(4, 2, *SIZE, seed=21), test_mask()

    def slow_slices():  # the stream outlives the connection's age (1 s +- 10 %)
        for i in range(4):
            yield i, k[i], mask
            time.sleep(0.8)

    with SilenceableProxy(proc.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}") as client:
        first = list(client.stream(slow_slices(), SIZE, timeout=60))
        (after,) = client.stream([(0, k[0], mask)], SIZE, timeout=30)
    assert [(r.slice_index, r.HasField("error")) for r in first] == [(0, False), (1, False), (2, False), (3, False)]
    assert not after.HasField("error")
    assert proxy.connections == connections


def test_client_keepalive_fails_a_stream_whose_server_went_silent(serving):
    """Without pings the client would wait for its deadline (or, with none, for TCP: minutes to hours)."""
    proc = serving(min_client_ping_seconds=0.5)
    k, mask = synthetic_kspace(2, 2, *SIZE, seed=22), test_mask()
    silent = threading.Event()
    with SilenceableProxy(proc.port) as proxy, \
            ReconClient(f"127.0.0.1:{proxy.port}", keepalive_s=1.0, keepalive_timeout_s=1.0) as client:

        def slices():
            yield 0, k[0], mask
            assert silent.wait(30)
            yield 1, k[1], mask  # into a path that forwards nothing any more

        got = []
        with pytest.raises(grpc.RpcError) as err:
            for r in client.stream(slices(), SIZE, timeout=40):
                got.append(r.slice_index)
                proxy.freeze()
                t0 = time.monotonic()
                silent.set()
        waited = time.monotonic() - t0
    assert got == [0]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert waited < 15, f"the silent server was noticed after {waited:.1f} s (keepalive 1 s, timeout 1 s)"


def test_server_keepalive_frees_the_stream_of_a_client_gone_silent(serving):
    """The scanner's network path is cut mid-volume: the server closes the connection and ends the stream."""
    proc = serving(keepalive_seconds=1.0, keepalive_timeout_seconds=1.0)
    k, mask = synthetic_kspace(1, 2, *SIZE, seed=23), test_mask()
    release = threading.Event()
    with SilenceableProxy(proc.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}", keepalive_s=0) as client:

        def slices():
            yield 0, k[0], mask
            release.wait(60)  # the next slice never comes

        results = client.stream(slices(), SIZE, timeout=60)
        assert next(results).slice_index == 0
        assert active_streams(proc) == 1
        proxy.freeze()
        t0 = time.monotonic()
        while active_streams(proc) != 0 and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        waited = time.monotonic() - t0
        release.set()
    assert active_streams(proc) == 0, "the stream of the silent client is still open after 20 s"
    assert waited < 15


@pytest.mark.parametrize("min_ping, connections", [(0.5, 1), (10.0, 2)])
def test_the_server_accepts_client_pings_at_its_minimum_interval_and_sends_goaway_to_faster_ones(serving, min_ping, connections):
    proc = serving(min_client_ping_seconds=min_ping)
    with SilenceableProxy(proc.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}", keepalive_s=1.0) as client:
        client.server_info(timeout=10)
        time.sleep(6)  # idle: pings each second; a server allowing one per 10 s strikes the 2nd to 4th (GOAWAY)
        client.server_info(timeout=10)
    assert proxy.connections == connections


def test_client_keepalive_settings_are_checked():
    from dnirecon.errors import ConfigError

    for bad in (dict(keepalive_s=-1.0), dict(keepalive_s=float("nan")), dict(keepalive_timeout_s=0.0)):
        with pytest.raises(ConfigError, match="keepalive"):
            ReconClient("127.0.0.1:1", **bad)


def six_slice_file(tmp_path):
    return write_volume_file(tmp_path / "file_synth_006.h5", 6, seed=31)


def drain_midway(old, proxy, new_port: int) -> None:
    """Each result of `old` takes 0.3 s; 0.2 s into its first one it drains (a rolling update) and the proxy
    sends new connections to new_port."""
    finish = old.servicer.finish
    started = threading.Event()

    def switch():
        proxy.target_port = new_port
        old.drain()

    def slow(item):
        if not started.is_set():
            started.set()
            threading.Timer(0.2, switch).start()
        time.sleep(0.3)
        return finish(item)

    old.servicer.finish = slow


def test_a_volume_cut_by_a_rolling_update_is_resumed_on_the_next_replica(serving, baked_dir, tmp_path):
    import numpy as np

    from dnirecon.fastmri_io import center_crop
    from dnirecon.subsample import mask_for
    from service.client import reconstruct_file

    from .conftest import ort_reference

    old, new = serving(drain_seconds=0.5), serving()
    path, k = six_slice_file(tmp_path)
    with SilenceableProxy(old.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}") as client:
        drain_midway(old, proxy, new.port)
        result = reconstruct_file(client, path, accel=4, timeout=60)
    answered = {proc: proc.metrics.registry.get_sample_value("dnirecon_slices_total", {"outcome": "ok"})
                for proc in (old, new)}
    assert result.errors == {}
    assert 0 < answered[old] < 6 and answered[old] + answered[new] >= 6, answered  # both replicas answered
    assert proxy.connections == 2
    mask = mask_for(4, seed=path.name, width=24, padding=(1, 23)).astype(np.float32)
    ref, ref_dc = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    np.testing.assert_allclose(result.images, center_crop(ref, (16, 16)), atol=1e-5, rtol=0)


def test_a_resumed_volume_never_mixes_model_versions(serving, baked_dir, tmp_path):
    import numpy as np

    from service.client import reconstruct_file
    from service.model_store import read_baked_set

    old, new = serving(drain_seconds=0.5), serving()
    new.install(read_baked_set(baked_dir, version="2"))  # the next replica serves another version
    path, _ = six_slice_file(tmp_path)
    with SilenceableProxy(old.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}") as client:
        drain_midway(old, proxy, new.port)
        result = reconstruct_file(client, path, accel=4, timeout=60)
    assert result.model.endswith("/local")
    assert result.errors and all(e.startswith("NOT_FOUND") and "version 2" in e for e in result.errors.values())
    answered = set(range(6)) - set(result.errors)
    assert answered and all(np.isfinite(result.dc_residual[i]) for i in answered)


def test_out_of_resumes_the_answered_slices_are_kept_and_the_rest_fail_unavailable(serving, tmp_path):
    from service.client import reconstruct_file

    old, new = serving(drain_seconds=0.5), serving()
    path, _ = six_slice_file(tmp_path)
    with SilenceableProxy(old.port) as proxy, ReconClient(f"127.0.0.1:{proxy.port}") as client:
        drain_midway(old, proxy, new.port)
        result = reconstruct_file(client, path, accel=4, timeout=60, resumes=0)
    answered = set(range(6)) - set(result.errors)
    assert 0 < len(answered) < 6 and all(e.startswith("UNAVAILABLE") for e in result.errors.values())
    assert proxy.connections == 1
