"""The server under many, slow and hostile clients, and with its registry gone: real servers on loopback."""

from __future__ import annotations

import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnirecon.errors import ConfigError
from dnirecon.v1 import recon_pb2, recon_pb2_grpc
from dnirecon import wire
from service.client import ReconClient, reconstruct_file

from .conftest import free_port, register, synthetic_kspace, test_mask, write_baked_set, write_volume_file
from .test_lifecycle import SLOW_LAUNCHER

K, MASK = synthetic_kspace(1, 2, 32, 24, seed=5)[0], test_mask()
Code = grpc.StatusCode
MiB = 1024 * 1024
BIG_OPTIONS = [("grpc.max_send_message_length", 32 * MiB), ("grpc.max_receive_message_length", 32 * MiB)]


def metric(server, name: str, labels: str = "") -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class HeldStream:
    """A ReconstructStream whose requests the test sends one by one; its results are collected as they come."""

    def __init__(self, channel: grpc.Channel):
        self.requests: queue.Queue = queue.Queue()
        self.results: list = []
        self.error: grpc.RpcError | None = None
        self.call = recon_pb2_grpc.ReconstructionStub(channel).ReconstructStream(iter(self.requests.get, None), timeout=120)
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        try:
            for r in self.call:
                self.results.append(r)
        except grpc.RpcError as exc:
            self.error = exc

    def send(self, *msgs) -> None:
        for m in msgs:
            self.requests.put(m)

    def close(self) -> None:
        self.requests.put(None)

    def wait_results(self, n: int, timeout: float) -> list:
        end = time.monotonic() + timeout
        while len(self.results) < n and self.error is None and time.monotonic() < end:
            time.sleep(0.05)
        return self.results


def stream_messages(index: int, request_id: str = "", model: str = "") -> list:
    return list(wire.slice_messages(index, K, MASK, (32, 24), request_id=request_id, model=model))


# ---- many clients: a stream limit, control RPCs always answered -----------------------------------------

LIMITED = ("--max-workers", "16", "--drain-seconds", "1", "--warmup-shapes", "2x32x24")
LIMIT_ENV = {"DNIRECON_MAX_STREAMS": "8"}


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def test_health_and_control_rpcs_answer_within_100_ms_with_every_thread_asked_for_by_idle_streams(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), *LIMITED, env=LIMIT_ENV)
    channels = [grpc.insecure_channel(server.target) for _ in range(4)]
    streams = [HeldStream(channels[i % 4]) for i in range(16)]  # as many streams as the server has threads
    try:
        time.sleep(1.5)
        with grpc.insecure_channel(server.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = recon_pb2_grpc.ReconstructionStub(ch)
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
            calls = {
                "health": lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1),
                "list_models": lambda: stub.ListModels(recon_pb2.ListModelsRequest(), timeout=1),
                "server_info": lambda: stub.GetServerInfo(recon_pb2.ServerInfoRequest(), timeout=1),
                "reflection": lambda: list(reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=1)),
            }
            for name, call in calls.items():
                times = [_timed(call) for _ in range(5)]  # a deadline passed raises: the test fails
                assert statistics.median(times) < 0.1, (name, times)
    finally:
        for s in streams:
            s.close()
        for ch in channels:
            ch.close()


def test_a_stream_beyond_max_streams_is_refused_at_once_with_a_reason(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), *LIMITED, env=LIMIT_ENV)
    with grpc.insecure_channel(server.target) as ch:
        held = [HeldStream(ch) for _ in range(8)]
        time.sleep(1.0)
        assert metric(server, "dnirecon_streams_active") == 8
        extra = HeldStream(ch)
        extra.thread.join(5)
        assert extra.error is not None and extra.error.code() == Code.RESOURCE_EXHAUSTED
        assert "8 reconstruction calls already open" in extra.error.details() and "max_streams" in extra.error.details()
        with ReconClient(server.target) as client:  # the unary RPC counts against the same limit
            with pytest.raises(grpc.RpcError) as err:
                client.reconstruct_one(0, K, MASK, (32, 24), timeout=5)
            assert err.value.code() == Code.RESOURCE_EXHAUSTED
        held[0].close()
        held[0].thread.join(10)
        with ReconClient(server.target) as client:  # a slot freed is a slot taken
            (r,) = client.stream([(0, K, MASK)], (32, 24), timeout=30)
            assert r.HasField("image")
        for s in held[1:]:
            s.close()


# ---- memory: a budget for slices being assembled ------------------------------------------------------

# 1 coil x 65,280 x 512 complex64 = 255 MiB zero-filled; one column acquired per row touches every page of it
BIG_READOUT, BIG_PHASE = 65_280, 512
BIG_MASK = np.zeros(BIG_PHASE, np.float32)
BIG_MASK[0] = 1


def big_slice_but_the_last_value(index: int) -> list:
    header = recon_pb2.SliceHeader(slice_index=index, coils=1, readout=BIG_READOUT, phase=BIG_PHASE, dtype=recon_pb2.COMPLEX64,
                                   mask=wire.mask_to_bytes(BIG_MASK), recon_height=32, recon_width=24,
                                   payload_bytes=BIG_READOUT * 8)
    lines = np.ones(BIG_READOUT - 1, np.complex64).tobytes()  # all but the last line
    chunks = list(wire.iter_chunks(index, lines, 256 * 1024))
    for c in chunks:
        c.last = False
    return [recon_pb2.StreamRequest(header=header)] + [recon_pb2.StreamRequest(chunk=c) for c in chunks]


def test_twenty_streams_declaring_255_mib_slices_stay_within_the_memory_budget_and_give_it_back(baked_dir, start_server):
    budget = 512 * MiB
    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "1", "--warmup-shapes", "2x32x24",
                          "--malloc-mmap-threshold", "131072", env={"DNIRECON_SLICE_MEMORY_BYTES": str(budget)})
    time.sleep(0.5)
    before = rss_bytes(server.proc.pid)
    streams = []
    with grpc.insecure_channel(server.target, options=BIG_OPTIONS) as ch:
        try:
            for i in range(20):
                s = HeldStream(ch)
                s.send(*big_slice_but_the_last_value(0))
                streams.append(s)
                time.sleep(0.3)
                rss = rss_bytes(server.proc.pid)
                assert rss < budget + 300 * MiB, f"{rss / MiB:.0f} MiB resident after {i + 1} streams"
            time.sleep(2.0)
            assert rss_bytes(server.proc.pid) < budget + 300 * MiB
            refused = [s for s in streams if s.results]
            assert len(refused) == 18  # 2 x 255 MiB fit 512 MiB
            for s in refused:
                (r,) = s.results
                assert r.error.code_name == "RESOURCE_EXHAUSTED" and "slice_memory_bytes=536870912" in r.error.reason
            assert metric(server, "dnirecon_slice_memory_reserved_bytes") == 2 * 255 * MiB
            # a refused slice fails alone: its stream goes on
            last = refused[-1]
            last.send(recon_pb2.StreamRequest(chunk=recon_pb2.KspaceChunk(
                slice_index=0, seq=len(big_slice_but_the_last_value(0)) - 1, data=b"\0" * 8, crc32=wire.crc32(b"\0" * 8), last=True)))
            last.send(*stream_messages(1))
            assert last.wait_results(2, 30)[-1].HasField("image")
        finally:
            for s in streams:
                s.call.cancel()
    time.sleep(2.0)
    assert metric(server, "dnirecon_slice_memory_reserved_bytes") == 0
    after = rss_bytes(server.proc.pid)
    assert after < 1.5 * before, f"{before / MiB:.0f} MiB resident before, {after / MiB:.0f} MiB after release"


# ---- slow clients: an idle timeout per open slice -------------------------------------------------------

def test_a_slice_idle_past_the_timeout_is_answered_with_the_timeout_error_and_its_memory_freed(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "1", "--warmup-shapes", "2x32x24",
                          env={"DNIRECON_SLICE_IDLE_SECONDS": "1"})
    with grpc.insecure_channel(server.target) as ch:
        s = HeldStream(ch)
        s.send(*stream_messages(0))  # a whole slice first: answered
        s.send(stream_messages(1)[0])  # the header of slice 1, then nothing
        s.thread.join(15)
        assert not s.thread.is_alive(), "stream still open 15 s after its slice went idle"
        by_index = {r.slice_index: r for r in s.results}
        assert by_index[0].HasField("image")
        err = by_index[1].error
        assert err.code_name == "DEADLINE_EXCEEDED" and "no message for slice 1 in 1 s (slice_idle_seconds)" in err.reason
        assert s.error.code() == Code.DEADLINE_EXCEEDED and "slice_idle_seconds" in s.error.details()
    assert metric(server, "dnirecon_slice_memory_reserved_bytes") == 0
    assert metric(server, "dnirecon_streams_active") == 0


# ---- hostile clients: log injection, long request ids, over-limit messages ---------------------------------

def test_a_request_id_with_newline_and_esc_leaves_one_log_line_with_both_escaped(server):
    rid = "scan-7\n2026-12-06 00:00:00 INFO service.server: FORGED\x1b[31m"
    with grpc.insecure_channel(server.target) as ch:
        results = list(recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(
            iter(stream_messages(0, request_id=rid, model="no-such-model\n\x1b[2J")), timeout=30))
    assert results[0].error.code_name == "NOT_FOUND" and results[0].request_id == rid
    time.sleep(0.3)
    lines = [line for line in server.log().splitlines() if "FORGED" in line]
    assert len(lines) == 1, lines
    assert "scan-7\\n2026-12-06" in lines[0] and "FORGED\\x1b[31m" in lines[0] and "\x1b" not in server.log()
    assert "no-such-model\\n\\x1b[2J" in lines[0]


def test_a_request_id_over_the_maximum_is_refused_per_slice_and_never_logged_or_echoed_whole(server):
    rid = "r" * 1_000_000
    size = len(server.log())
    with grpc.insecure_channel(server.target, options=BIG_OPTIONS) as ch:
        results = list(recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(
            iter(stream_messages(0, request_id=rid) + stream_messages(1, request_id="ok")), timeout=30))
    by_index = {r.slice_index: r for r in results}
    assert by_index[0].error.code_name == "INVALID_ARGUMENT"
    assert "request_id has 1000000 characters, at most 256" in by_index[0].error.reason and by_index[0].request_id == ""
    assert by_index[1].HasField("image") and by_index[1].request_id == "ok"
    time.sleep(0.3)
    assert len(server.log()) - size < 2_000


def test_an_over_limit_message_after_a_good_slice_still_gets_that_slice_answered(baked_dir, start_server):
    server = start_server("--model-dir", str(baked_dir), "--drain-seconds", "1", "--warmup-shapes", "2x32x24",
                          "--max-batch", "1", launcher=SLOW_LAUNCHER.replace("time.sleep(3)", "time.sleep(0.5)"))
    big = b"\0" * (5 * MiB)  # a message over the protocol's 4 MiB
    over = recon_pb2.StreamRequest(chunk=recon_pb2.KspaceChunk(slice_index=1, seq=0, data=big, crc32=wire.crc32(big), last=True))
    msgs = stream_messages(0) + [stream_messages(1)[0], over] + stream_messages(2)
    with grpc.insecure_channel(server.target, options=BIG_OPTIONS) as ch:
        results = list(recon_pb2_grpc.ReconstructionStub(ch).ReconstructStream(iter(msgs), timeout=60))
    by_index = {r.slice_index: r for r in results}
    assert by_index[0].HasField("image") and by_index[2].HasField("image")
    assert by_index[1].error.code_name == "RESOURCE_EXHAUSTED" and "at most 4000000" in by_index[1].error.reason


# ---- the registry gone ---------------------------------------------------------------------------------

def _mlflow_db(tmp_path, onnx_models, versions: int) -> tuple[str, list[str]]:
    """A sqlite MLflow store with `versions` interpsn versions, production on the last."""
    import os

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = mc.create_experiment("bake", artifact_location=(tmp_path / "artifacts").as_uri())
    mc.create_registered_model("interpsn")
    baked = {a: p for a, p in onnx_models.items() if a is not None}
    made = [register(mc, exp, write_baked_set(tmp_path / f"v{i}", baked)) for i in range(versions)]
    mc.set_registered_model_alias("interpsn", "production", made[-1])
    return uri, made


def _mlflow_server(db_uri: str, port: int, tmp_path) -> subprocess.Popen:
    import os

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], env=env, cwd=tmp_path,
                            stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT)


def _wait(predicate, timeout: float, what: str, server) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} not within {timeout} s:\n{server.log()}")


def _health(server) -> str:
    try:
        with ReconClient(server.target) as client:
            return client.health(timeout=1)
    except grpc.RpcError:
        return "unreachable"


def test_registry_unreachable_with_a_warm_cache_serves_the_cached_version_stale_then_follows_the_alias(
        tmp_path, baked_dir, onnx_models, start_server):
    from .conftest import ServerProcess

    cache = tmp_path / "cache"
    shutil.copytree(baked_dir, cache / "interpsn" / "3")  # a verified version left by an earlier run
    port = free_port()
    t0 = time.monotonic()
    server = ServerProcess(["--model-uri", "models:/interpsn@production", "--tracking-uri", f"http://127.0.0.1:{port}",
                            "--cache-dir", str(cache), "--alias-poll-seconds", "1", "--drain-seconds", "1",
                            "--warmup-shapes", "2x32x24"], {"DNIRECON_REGISTRY_TIMEOUT_SECONDS": "5"}, tmp_path / "server.log")
    mlflow = None
    try:
        server.wait_serving(timeout=30)
        assert time.monotonic() - t0 < 30
        with ReconClient(server.target) as client:
            assert client.list_models().models[0].version == "3"
            (r,) = client.stream([(0, K, MASK)], (32, 24), timeout=30)
            assert r.HasField("image") and r.model_version == "3"
        assert metric(server, "dnirecon_model_stale") == 1.0
        assert "STALE" in server.log() and "serving version 3 from the cache" in server.log()
        # the registry comes back with production on version 2: the server moves to it
        db, made = _mlflow_db(tmp_path, onnx_models, 2)
        mlflow = _mlflow_server(db, port, tmp_path)

        def on_new_version():
            with ReconClient(server.target) as client:
                return client.list_models(timeout=2).models[0].version == made[-1]

        _wait(on_new_version, 60, "version 2 served", server)
        assert metric(server, "dnirecon_model_stale") == 0.0
        assert re.search(r"version 2 serves new streams .*\(.*download [\d.]+ s, verify [\d.]+ s, load [\d.]+ s, warmup [\d.]+ s\)",
                         server.log())
        assert metric(server, "dnirecon_model_swap_phase_seconds", '{phase="warmup"}') > 0
    finally:
        server.stop()
        if mlflow is not None:
            mlflow.terminate()
            mlflow.wait(30)


def test_registry_unreachable_with_an_empty_cache_stays_not_serving_and_retries(tmp_path, onnx_models):
    from .conftest import ServerProcess

    port = free_port()
    server = ServerProcess(["--model-uri", "models:/interpsn@production", "--tracking-uri", f"http://127.0.0.1:{port}",
                            "--cache-dir", str(tmp_path / "cache"), "--alias-poll-seconds", "1", "--drain-seconds", "1",
                            "--warmup-shapes", "2x32x24"], {"DNIRECON_REGISTRY_TIMEOUT_SECONDS": "2"}, tmp_path / "server.log")
    mlflow = None
    try:
        _wait(lambda: server.log().count("NOT_SERVING: models:/interpsn@production cannot be served") >= 2, 30,
              "two start-up attempts", server)
        assert server.proc.poll() is None and _health(server) == "NOT_SERVING"
        db, made = _mlflow_db(tmp_path, onnx_models, 1)
        mlflow = _mlflow_server(db, port, tmp_path)
        server.wait_serving(timeout=60)
        with ReconClient(server.target) as client:
            assert client.list_models().models[0].version == made[-1]
        assert metric(server, "dnirecon_model_stale") == 0.0
    finally:
        server.stop()
        if mlflow is not None:
            mlflow.terminate()
            mlflow.wait(30)


# ---- the client says what it does with a file ----------------------------------------------------------

def _undersampled_file(tmp_path):
    import h5py

    path, k = write_volume_file(tmp_path / "under.h5", 2, seed=3)
    with h5py.File(path, "r+") as f:
        data = f["kspace"][...]
        data[..., 2:22:2] = 0  # every other column inside the encoding limits [1, 23) never acquired
        f["kspace"][...] = data
    return path


def test_accel_on_an_already_undersampled_file_is_an_error_naming_the_file_and_why(tmp_path, server):
    path = _undersampled_file(tmp_path)
    with ReconClient(server.target) as client:
        with pytest.raises(ConfigError, match=r"under\.h5: --accel 4 cannot apply: the k-space is already undersampled "
                                              r"\(12 of the 22 columns inside the encoding limits acquired"):
            reconstruct_file(client, path, accel=4)


def test_an_undersampled_file_without_accel_is_sent_with_its_acquired_columns_and_says_so(tmp_path, server):
    path = _undersampled_file(tmp_path)
    plans = []
    with ReconClient(server.target) as client:
        result = reconstruct_file(client, path, on_plan=plans.append)
    assert not result.errors and "already undersampled" in result.sampling
    (plan,) = plans
    assert not plan.fully_sampled and int(plan.mask.sum()) == 12


def test_re_undersample_keeps_the_acquired_columns_the_accel_mask_also_holds(tmp_path):
    import h5py

    from service.client import plan_sampling

    path = _undersampled_file(tmp_path)
    with h5py.File(path) as f:
        k0 = f["kspace"][0]
    acquired = (np.abs(k0) > 0).any(axis=(0, 1))
    plan = plan_sampling(k0, (1, 23), 8, path.name, re_undersample=True)
    assert plan.mask.sum() > 0 and not (plan.mask.astype(bool) & ~acquired).any()
    assert "re-undersampled with fastMRI's 8x mask" in plan.text


def test_a_fully_sampled_file_says_which_mask_is_sent(tmp_path):
    from service.client import plan_sampling

    path, k = write_volume_file(tmp_path / "full.h5", 1, seed=4)
    plan = plan_sampling(k[0], (1, 23), None, path.name)
    assert plan.fully_sampled and "fully sampled" in plan.text and "4x" in plan.text
    assert f"{int(plan.mask.sum())} of 24 columns" in plan.text
