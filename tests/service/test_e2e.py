"""Acceptance 1, 3 and 6 of issue 5 over loopback with a real server process."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

import grpc
import h5py
import numpy as np
import pytest

from dnirecon.fastmri_io import center_crop
from dnirecon.subsample import mask_for
from dnirecon import wire
from service.client import ReconClient, reconstruct_file, write_outputs

from .conftest import ROOT, ort_reference, synthetic_kspace, test_mask, write_volume_file


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory):
    """A fully sampled fastMRI-layout volume: 3 slices, 3 coils, 32x24, phase columns [1, 23) acquired."""
    return write_volume_file(tmp_path_factory.mktemp("vol") / "file_synth_001.h5", 3, seed=1)


def test_file_streamed_equals_in_process_onnxruntime(server, baked_dir, volume_file, tmp_path):
    path, k = volume_file
    mask = mask_for(4, seed=path.name, width=24, padding=(1, 23)).astype(np.float32)
    ref, ref_dc = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    with ReconClient(server.target) as client:
        result = reconstruct_file(client, path, accel=4)
    assert result.errors == {}
    assert result.images.shape == (3, 16, 16)
    np.testing.assert_allclose(result.images, center_crop(ref, (16, 16)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.dc_residual, ref_dc, atol=1e-6)
    # only the acquired lines travel: a quarter-ish of the zero-filled matrix at 4x
    assert result.bytes_sent == 3 * 3 * 32 * int(mask.sum()) * 8 < 0.5 * k.nbytes
    h5, pngs = write_outputs(result, path, tmp_path / "out")
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(f["reconstruction"][()], result.images)
    assert len(pngs) == 3 and all(p.stat().st_size > 0 for p in pngs)


def test_each_slice_comes_back_once_matched_to_its_index(server, baked_dir):
    k = synthetic_kspace(5, 2, 32, 24, seed=2)
    mask = test_mask()
    ref, _ = ort_reference(baked_dir / "alpha_1.00.onnx", k, mask)
    order = [3, 0, 4, 1, 2]
    with ReconClient(server.target) as client:
        results = list(client.stream(((i, k[i], mask) for i in order), (32, 24), alpha=0.9, timeout=60))
    assert sorted(r.slice_index for r in results) == [0, 1, 2, 3, 4]
    for r in results:
        assert r.alpha == pytest.approx(1.0) and r.model_version == "local"
        np.testing.assert_allclose(wire.image_from_result(r), ref[r.slice_index], atol=1e-5, rtol=0)


def test_multi_chunk_slice_reassembles(server, baked_dir):
    k = synthetic_kspace(1, 4, 32, 24, seed=3)
    mask = test_mask()
    ref, _ = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    with ReconClient(server.target) as client:
        (r,) = client.stream([(0, k[0], mask)], (32, 24), chunk_bytes=1000, timeout=30)
    np.testing.assert_allclose(wire.image_from_result(r), ref[0], atol=1e-5, rtol=0)


def test_unary_rpc_and_info(server, baked_dir):
    k = synthetic_kspace(1, 2, 32, 24, seed=4)
    mask = test_mask()
    ref, _ = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    with ReconClient(server.target) as client:
        r = client.reconstruct_one(7, k[0], mask, (16, 16), timeout=30)
        info = client.server_info()
        models = client.list_models()
    assert r.slice_index == 7 and r.compute_ms > 0
    np.testing.assert_allclose(wire.image_from_result(r), center_crop(ref[0], (16, 16)), atol=1e-5, rtol=0)
    assert list(info.providers) == ["CPUExecutionProvider"] and not info.provider_fallback
    assert [round(a, 3) for a in models.models[0].alphas] == [0.0, 1.0] and not models.models[0].continuous


def test_eight_concurrent_streams_lose_duplicate_and_mix_nothing(server, baked_dir):
    mask = test_mask()
    volumes = [synthetic_kspace(4, 2, 32, 24, seed=100 + s) for s in range(8)]
    refs = [ort_reference(baked_dir / "alpha_0.00.onnx", v, mask)[0] for v in volumes]
    got: dict[int, list] = {}
    errors = []

    def run(s):
        try:
            with ReconClient(server.target) as client:
                got[s] = list(client.stream(((i, volumes[s][i], mask) for i in range(4)), (32, 24),
                                            request_id=f"stream-{s}", timeout=120))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for s in range(8):
        assert sorted(r.slice_index for r in got[s]) == [0, 1, 2, 3]
        for r in got[s]:
            assert r.request_id == f"stream-{s}"
            np.testing.assert_allclose(wire.image_from_result(r), refs[s][r.slice_index], atol=1e-5, rtol=0)


def test_metrics_report_requests_providers_and_model(server):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'dnirecon_providers{provider="CPUExecutionProvider"} 1.0' in text
    assert 'dnirecon_model_served{name=' in text and "dnirecon_slice_latency_seconds_bucket" in text
    assert "dnirecon_provider_fallback 0.0" in text
    malloc = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("dnirecon_malloc_bytes{")}
    assert set(malloc) == {"in_use", "free", "mapped"} and malloc["in_use"] > 1e6  # glibc, read at scrape


def test_reflection_client_calls_the_service_from_descriptors_alone(server):
    """A client without dnirecon's stubs: descriptors from reflection, messages built dynamically."""
    code = f"""
import sys, numpy as np, zlib, grpc
sys.modules['dnirecon'] = None  # none of our code
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
ch = grpc.insecure_channel('{server.target}')
db = ProtoReflectionDescriptorDatabase(ch)
assert 'dnirecon.v1.Reconstruction' in db.get_services(), db.get_services()
pool = DescriptorPool(db)
svc = pool.FindServiceByName('dnirecon.v1.Reconstruction')
m = svc.FindMethodByName('Reconstruct')
Req, Res = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
k = (np.ones((1, 8, 4)) + 0j).astype('<c8').tobytes()
mask = np.array([1, 0, 0, 0, 0, 0, 0, 0], '<f4')
req = Req()
h = req.header
h.slice_index, h.coils, h.readout, h.phase, h.dtype = 5, 1, 8, 8, 1
h.mask, h.recon_height, h.recon_width, h.payload_bytes = mask.tobytes(), 8, 8, len(k) // 4
req.data = k[: len(k) // 4]
req.crc32 = zlib.crc32(req.data)
call = ch.unary_unary('/dnirecon.v1.Reconstruction/Reconstruct', request_serializer=Req.SerializeToString,
                      response_deserializer=Res.FromString)
res = call(req, timeout=30)
assert res.slice_index == 5 and list(res.image.shape) == [8, 8], res
status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service='dnirecon.v1.Reconstruction'))
print('OK', res.image.shape, health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "OK [8, 8] SERVING" in out.stdout


def test_cli_reconstruct_writes_hdf5_and_pngs(server, volume_file, tmp_path):
    path, _ = volume_file
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from service.cli import main; sys.exit(main(sys.argv[1:]))",
         "client", "reconstruct", str(path), "--server", server.target, "--accel", "4", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "file_synth_001.recon.h5").is_file()
    assert len(list((tmp_path / "file_synth_001").glob("*.png"))) == 3


def test_continuous_model_serves_any_alpha_under_one_metric_label(continuous_dir, start_server):
    server = start_server("--model-dir", str(continuous_dir), "--drain-seconds", "1", "--warmup-shapes", "2x32x24")
    k = synthetic_kspace(2, 2, 32, 24, seed=12)
    mask = test_mask()
    ref, ref_dc = ort_reference(continuous_dir / "continuous.onnx", k, mask, alpha=0.3)
    with ReconClient(server.target) as client:
        results = sorted(client.stream(((i, k[i], mask) for i in range(2)), (32, 24), alpha=0.3, timeout=30),
                         key=lambda r: r.slice_index)
        list(client.stream([(0, k[0], mask)], (32, 24), alpha=0.7, timeout=30))
        (baked,) = client.stream([(0, k[0], mask)], (32, 24), alpha=1.0, timeout=30)
    for r in results:
        assert r.alpha == pytest.approx(0.3) and r.dc_residual == pytest.approx(ref_dc[r.slice_index], abs=1e-6)
        np.testing.assert_allclose(wire.image_from_result(r), ref[r.slice_index], atol=1e-5, rtol=0)
    assert baked.alpha == 1.0
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    served = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("dnirecon_alpha_served_total{")}
    assert served == {"continuous": 3.0, "1": 1.0}  # one label for any continuous alpha: bounded cardinality


def test_a_stream_keeps_the_model_version_it_started_with(baked_dir, make_process):
    from service.model_store import read_baked_set

    proc = make_process(model_dir=baked_dir, warmup_shapes=((2, 32, 24),))
    proc.start()
    k, mask = synthetic_kspace(3, 2, 32, 24, seed=14), test_mask()
    swapped = threading.Event()

    def slices():
        yield 0, k[0], mask
        assert swapped.wait(30)
        yield 1, k[1], mask

    results = []
    with ReconClient(f"127.0.0.1:{proc.port}") as client:
        for r in client.stream(slices(), (32, 24), timeout=60):
            results.append(r)
            if r.slice_index == 0:  # between the slices of this stream another version comes in
                proc.install(read_baked_set(baked_dir, version="2"))
                swapped.set()
        (after,) = client.stream([(2, k[2], mask)], (32, 24), timeout=30)
    assert [(r.slice_index, r.model_version) for r in results] == [(0, "local"), (1, "local")]
    assert after.model_version == "2"  # a new stream gets the new set


def test_an_unexpected_reader_failure_ends_the_stream_internal(baked_dir, make_process):
    proc = make_process(model_dir=baked_dir, warmup_shapes=((2, 32, 24),))
    proc.start()

    def broken(*args):
        raise RuntimeError("bug")

    proc.servicer.parse_header = broken
    with ReconClient(f"127.0.0.1:{proc.port}") as client:
        with pytest.raises(grpc.RpcError) as err:
            list(client.stream([(0, synthetic_kspace(1, 2, 32, 24)[0], test_mask())], (32, 24), timeout=30))
    assert err.value.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in err.value.details()


def test_cli_rpc_errors_print_code_and_details_without_traceback(capsys):
    from service.cli import main

    from .conftest import free_port

    assert main(["client", "info", "--server", f"127.0.0.1:{free_port()}", "--timeout", "10"]) == 1
    err = capsys.readouterr().err
    assert "dnirecon client: error: UNAVAILABLE: " in err and "Traceback" not in err


def test_cli_info_honours_timeout(capsys):
    import socket
    import time

    from service.cli import main

    with socket.socket() as silent:  # accepts the connection, never answers: only the deadline ends the call
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t0 = time.monotonic()
        rc = main(["client", "info", "--server", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5"])
    assert rc == 1 and time.monotonic() - t0 < 10
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().err


@pytest.mark.parametrize("flag,env", [("--token-file", "DNIRECON_CLIENT_TOKEN_FILE"), ("--ca-file", "DNIRECON_CLIENT_CA_FILE"),
                                      ("--cert-file", "DNIRECON_CLIENT_CERT_FILE"), ("--key-file", "DNIRECON_CLIENT_KEY_FILE")])
def test_cli_missing_connection_file_names_it(capsys, tmp_path, flag, env):
    from service.cli import main

    missing = tmp_path / "missing.pem"
    assert main(["client", "info", "--server", "127.0.0.1:1", flag, str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} / {env} {missing}: cannot read" in err and "Traceback" not in err


def test_cli_token_file_that_is_not_a_bearer_token_is_named(capsys, tmp_path):
    from service.cli import main

    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe t\x00o\x00k\x00")  # a UTF-16 file
    assert main(["client", "info", "--server", "127.0.0.1:1", "--token-file", str(token)]) == 2
    err = capsys.readouterr().err
    assert f"--token-file / DNIRECON_CLIENT_TOKEN_FILE {token}: byte 0 is not ASCII" in err and "Traceback" not in err


def test_deadline_ends_the_call_and_the_server_goes_on(server):
    k, mask = synthetic_kspace(1, 2, 32, 24, seed=13)[0], test_mask()

    def slow():
        yield 0, k, mask
        threading.Event().wait(2.0)  # the client stalls past its deadline
        yield 1, k, mask

    with ReconClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            list(client.stream(slow(), (32, 24), timeout=0.5))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        (r,) = client.stream([(0, k, mask)], (32, 24), timeout=30)
    assert r.HasField("image")


def test_synthetic_volume_from_training_synth_streams_like_in_process(server, baked_dir, tmp_path):
    synth = pytest.importorskip("training.synth")
    from dnirecon.fastmri_io import FastMRIVolume

    (path,) = synth.synthesize(tmp_path, synth.SynthConfig(volumes_per_contrast=1, slices=3, coils=3, recon_size=(16, 16),
                                                           contrasts=("pd",)))
    with FastMRIVolume(path) as vol:
        k = np.stack([vol.kspace(i) for i in range(vol.num_slices)])
        hdr = vol.header
    mask = mask_for(4, seed=path.name, width=k.shape[-1], padding=(hdr.padding_left, hdr.padding_right)).astype(np.float32)
    ref, _ = ort_reference(baked_dir / "alpha_0.00.onnx", k, mask)
    with ReconClient(server.target) as client:
        result = reconstruct_file(client, path, accel=4)
    assert result.errors == {} and result.images.shape == (3, *hdr.recon_size)
    np.testing.assert_allclose(result.images, center_crop(ref, hdr.recon_size), atol=1e-5 * ref.max(), rtol=0)


def test_a_failure_producing_the_requests_is_raised_as_it_is(server):
    """gRPC turns an exception in the request iterator into 'UNKNOWN: Exception iterating requests!';
    the client raises the exception itself (a corrupt slice of a file names the file and slice)."""
    from dnirecon.errors import DataError

    k, mask = synthetic_kspace(1, 2, 32, 24)[0], test_mask()

    def slices():
        yield 0, k, mask
        raise DataError("scan.h5: slice 1 of 'kspace' cannot be read (corrupt chunk)")

    with ReconClient(server.target) as client:
        with pytest.raises(DataError, match="scan.h5: slice 1"):
            list(client.stream(slices(), (32, 24), timeout=30))
        with pytest.raises(ValueError, match="chunk_bytes is 5000000, expected 1 to 4000000"):
            client.stream([(0, k, mask)], (32, 24), chunk_bytes=5_000_000)
        (r,) = client.stream([(0, k, mask)], (32, 24), timeout=30)  # the channel is fine afterwards
        assert r.HasField("image")
