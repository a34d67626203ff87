"""Wire packing, settings, baked-set verification and alpha selection, without a server."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dnirecon.errors import ConfigError, ModelError
from dnirecon import wire
from service.config import Settings, settings_from
from service.engine import Batcher, Job, ModelSet
from service.model_store import parse_model_uri, read_baked_set

from .conftest import ort_reference, synthetic_kspace, test_mask


def test_pack_sends_only_acquired_lines_and_unpack_zero_fills():
    k = synthetic_kspace(1, 3, 8, 24)[0]
    mask = test_mask()
    payload = wire.pack_acquired(k, mask)
    assert len(payload) == 3 * 8 * int(mask.sum()) * 8 == wire.expected_payload_bytes(3, 8, mask)
    full = wire.unpack_acquired(payload, 3, 8, mask)
    np.testing.assert_array_equal(full, k * mask)


@pytest.mark.parametrize("piece", [8, 13, 1000, 4_000_000])
def test_line_scatter_fed_in_pieces_of_any_size_equals_the_zero_filled_slice(piece):
    # The server scatters each chunk as it arrives; pieces that split a complex value (13 bytes) must
    # give the same matrix as one payload, and both the plain masked k-space.
    k = synthetic_kspace(1, 3, 8, 24)[0]
    mask = test_mask()
    payload = wire.pack_acquired(k, mask)
    scatter = wire.LineScatter(3, 8, mask)
    for i in range(0, len(payload), piece):
        assert scatter.finite
        scatter.feed(payload[i : i + piece])
    assert scatter.received_bytes == scatter.expected_bytes == len(payload)
    np.testing.assert_array_equal(scatter.result(), k * mask)
    # the chunks a client sends come from the array, not its bytes: same payload
    assert b"".join(c.data for c in wire.iter_chunks(0, wire.gather_acquired(k, mask), 100)) == payload


def test_line_scatter_flags_nan_and_refuses_a_wrong_size():
    k = synthetic_kspace(1, 3, 8, 24)[0]
    mask = test_mask()
    bad = k.copy()
    bad[2, 5, np.flatnonzero(mask)[-1]] = complex(0, np.nan)  # the last value of the payload
    scatter = wire.LineScatter(3, 8, mask)
    scatter.feed(wire.pack_acquired(bad, mask))
    assert not scatter.finite
    short = wire.LineScatter(3, 8, mask)
    short.feed(wire.pack_acquired(k, mask)[:-8])
    with pytest.raises(ValueError, match=f"{short.expected_bytes - 8} k-space bytes, expected {short.expected_bytes}"):
        short.result()
    with pytest.raises(ValueError, match="expected"):
        short.feed(b"\0" * 9)  # one byte more than is missing
    assert short.received_bytes == short.expected_bytes - 8  # a refused piece changes nothing


def test_line_scatter_memory_follows_the_bytes_that_arrive():
    """A header declaring the largest slice and one 8-byte chunk must not cost a payload-sized index
    (review finding: +257 MiB for 16x1024x2048 fully sampled, before any data)."""
    import tracemalloc

    mask = np.ones(2048, np.float32)
    tracemalloc.start()
    try:
        scatter = wire.LineScatter(16, 1024, mask)  # 256 MiB zero-filled (calloc: committed as touched)
        scatter.feed(b"\0" * 8)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    matrix = 16 * 1024 * 2048 * 8
    assert scatter.expected_bytes == matrix and peak < matrix + (1 << 20)  # the matrix, not a second one


def test_chunks_stay_within_limit_and_carry_crc32():
    payload = bytes(range(256)) * 40_000  # 10,240,000 bytes
    chunks = list(wire.iter_chunks(4, payload, wire.MAX_CHUNK_BYTES))
    assert [len(c.data) for c in chunks] == [4_000_000, 4_000_000, 2_240_000]
    assert [c.seq for c in chunks] == [0, 1, 2] and [c.last for c in chunks] == [False, False, True]
    assert b"".join(c.data for c in chunks) == payload
    assert all(c.crc32 == wire.crc32(c.data) for c in chunks)
    assert all(c.ByteSize() < wire.MAX_MESSAGE_BYTES for c in chunks)
    assert [len(c.data) for c in wire.iter_chunks(4, payload[:600_000])] == [262_144, 262_144, 75_712]  # the default
    with pytest.raises(ValueError, match="chunk_bytes is 4000001, expected 1 to 4000000"):
        next(wire.iter_chunks(4, payload, 4_000_001))


def test_settings_flags_win_over_environment():
    env = {"DNIRECON_GRPC_PORT": "6000", "DNIRECON_PROVIDERS": "cpu", "DNIRECON_WARMUP_SHAPES": "15x640x368,8x192x112",
           "DNIRECON_CUDNN_CONV_ALGO_SEARCH": "heuristic", "DNIRECON_ALIAS_POLL_SECONDS": "5",
           "DNIRECON_INTRA_OP_SPINNING": "false"}

    class Args:
        port = "7000"

    s = settings_from(Args(), env)
    assert s.grpc_port == 7000 and s.providers == ("cpu",) and s.alias_poll_seconds == 5.0 and not s.intra_op_spinning
    assert s.warmup_shapes == ((15, 640, 368), (8, 192, 112)) and s.cudnn_conv_algo_search == "HEURISTIC"
    assert Settings().model_uri == "models:/interpsn@production" and Settings().providers == ("cuda", "cpu")


@pytest.mark.parametrize("env,needle", [
    ({"DNIRECON_PROVIDERS": "gpu"}, "DNIRECON_PROVIDERS"),
    ({"DNIRECON_WARMUP_SHAPES": "15x640"}, "DNIRECON_WARMUP_SHAPES"),
    ({"DNIRECON_MAX_BATCH": "0"}, "DNIRECON_MAX_BATCH"),
    ({"DNIRECON_GRPC_PORT": "abc"}, "DNIRECON_GRPC_PORT"),
    ({"DNIRECON_INTRA_OP_SPINNING": "maybe"}, "DNIRECON_INTRA_OP_SPINNING"),
    ({"DNIRECON_CUDNN_CONV_ALGO_SEARCH": "FAST"}, "DNIRECON_CUDNN_CONV_ALGO_SEARCH"),
    ({"DNIRECON_TLS_CERT_FILE": "/x.pem"}, "DNIRECON_TLS_KEY_FILE"),
])
def test_bad_settings_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        settings_from(None, env)


def test_model_uri_forms():
    assert parse_model_uri("models:/interpsn@production") == ("interpsn", "production", None)
    assert parse_model_uri("models:/interpsn/3") == ("interpsn", None, "3")
    with pytest.raises(ConfigError, match="DNIRECON_MODEL_URI"):
        parse_model_uri("runs:/abc/model")


@pytest.mark.parametrize("field, value, message", [
    ("alpha", None, r"alphas\[0\].alpha is None, expected a number in \[0, 1\]"),
    ("alpha", "0.5", r"alphas\[0\].alpha is '0.5', expected a number"),
    ("alpha", True, r"alphas\[0\].alpha is True, expected a number"),
    ("file", 3, r"alphas\[0\].graphs\[0\].file is 3, expected a non-empty string"),
    ("sha256", None, r"alphas\[0\].graphs\[0\].sha256 is None, expected a non-empty string"),
    ("graphs", [], r"alphas\[0\].graphs is \[\], expected a list of 1 \{file, sha256\}"),
])
def test_a_malformed_manifest_value_is_a_model_error_naming_the_field(baked_dir, tmp_path, field, value, message):
    copy = tmp_path / "set"
    shutil.copytree(baked_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["alphas"][0]
    (entry["graphs"][0] if field in ("file", "sha256") else entry)[field] = value
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):  # was a TypeError traceback from float(None)
        read_baked_set(copy)


def test_baked_set_with_a_tampered_file_is_refused(baked_dir, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(baked_dir, copy)
    assert [a for a, _p in read_baked_set(copy).baked] == [0.0, 1.0]
    with open(copy / "alpha_1.00.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="alpha_1.00.onnx: sha256"):
        read_baked_set(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "other/2"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="'format'"):
        read_baked_set(copy)


def test_a_baked_set_of_the_older_one_graph_layout_is_refused_naming_the_format_field(baked_dir, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(baked_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "dnirecon.interpsn/1"
    manifest["alphas"] = [{"alpha": e["alpha"], **e.pop("graphs")[0]} for e in manifest["alphas"]]
    del manifest["cascade_sets"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"field 'format' is 'dnirecon.interpsn/1', expected 'dnirecon.interpsn/2'"
                                         r" \(an older layout .*bake the set again\)"):
        read_baked_set(copy)


@pytest.mark.parametrize("sets, message", [
    (None, r"field 'cascade_sets' is None"),
    ([{"accel": 8.0}, {"accel": 4.0}], r"cascade_sets accelerations are \[8.0, 4.0\], expected \[null\] or two"),
    ([{"accel": 4.0}], r"cascade_sets accelerations are \[4.0\]"),
])
def test_cascade_sets_that_route_nowhere_are_refused(baked_dir, tmp_path, sets, message):
    copy = tmp_path / "set"
    shutil.copytree(baked_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["cascade_sets"] = sets
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        read_baked_set(copy)


@pytest.fixture(scope="module")
def two_set_dir(onnx_models, tmp_path_factory):
    """A baked set with a 4x and an 8x graph per alpha: the stand-ins of alpha 0 and alpha 1 (gain 1
    and 2), so the image tells which graph ran."""
    a, b = onnx_models[0.0], onnx_models[1.0]
    from .conftest import write_baked_set

    return write_baked_set(tmp_path_factory.mktemp("two_sets"), {}, sets={4.0: {0.0: a, 1.0: a}, 8.0: {0.0: b, 1.0: b}})


def test_each_slice_runs_the_graph_of_the_set_nearest_its_acceleration(two_set_dir):
    b = read_baked_set(two_set_dir)
    assert b.baked[0][1] == ((4.0, two_set_dir / "alpha_0.00_4x.onnx"), (8.0, two_set_dir / "alpha_0.00_8x.onnx"))
    models = ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"])
    width = 64
    four, eight, five = (np.zeros(width, np.float32) for _ in range(3))
    four[::4] = 1  # 1 / fraction = 4
    eight[::8] = 1  # 8
    five[:11] = 1  # 64 / 11 = 5.82: past the split at sqrt(32) = 5.66, so the 8x set
    assert [models.cascade_set(m) for m in (four, eight, five)] == [0, 1, 1]
    k = synthetic_kspace(1, 2, 16, width, seed=3)
    ri = np.stack([k.real, k.imag], -1).astype(np.float32)
    one = models.select(0.0, four).model.run(ri * four[None, None, :, None], four[None])[0]
    two = models.select(0.0, eight).model.run(ri * four[None, None, :, None], four[None])[0]
    np.testing.assert_allclose(two, 2 * one, rtol=1e-5)  # the 8x graph is the gain-2 stand-in
    with pytest.raises(ValueError, match="a mask is needed"):
        models.select(0.0)


def test_the_routing_rule_splits_at_the_geometric_midpoint_and_sends_an_empty_mask_to_the_highest_set():
    from dnirecon.routing import nearest_set, served_range

    fractions = np.array([1.0, 0.25, 1 / 5.6, 1 / 5.7, 0.125, 0.01, 0.0])
    assert nearest_set(fractions, [4.0, 8.0]).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert nearest_set(fractions, []).tolist() == [0] * 7
    assert served_range([4.0, 8.0], 0) == (1.0, pytest.approx(32 ** 0.5))
    assert served_range([4.0, 8.0], 1) == (pytest.approx(32 ** 0.5), None)


def test_cuda_sessions_get_tf32_off_and_a_search_that_does_not_stall_an_unwarmed_shape():
    from service.engine import provider_list

    default = Settings()
    assert (default.use_tf32, default.cudnn_conv_algo_search) == (False, "HEURISTIC")
    assert provider_list(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}), "CPUExecutionProvider"]
    allowed = settings_from(None, {"DNIRECON_USE_TF32": "true", "DNIRECON_CUDNN_CONV_ALGO_SEARCH": "exhaustive"})
    assert provider_list(["CUDAExecutionProvider"], allowed.cudnn_conv_algo_search, allowed.use_tf32) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "1"})]
    with pytest.raises(ConfigError, match="DNIRECON_USE_TF32"):
        settings_from(None, {"DNIRECON_USE_TF32": "sometimes"})


def test_sessions_are_built_with_the_settings_provider_options(baked_dir):
    b = read_baked_set(baked_dir)
    models = ModelSet("m", "1", list(b.baked), None, ["CUDAExecutionProvider", "CPUExecutionProvider"], use_tf32=True,
                      cudnn_conv_algo_search="DEFAULT")
    for model in models.models():
        assert model.provider_options[0] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "1"})


def test_alpha_selection_nearest_baked_or_continuous(continuous_dir):
    b = read_baked_set(continuous_dir)
    baked_only = ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"])
    assert baked_only.select(0.4).alpha == 0.0 and baked_only.select(0.6).alpha == 1.0
    assert baked_only.select(None).alpha == 0.0
    with pytest.raises(ValueError):
        baked_only.select(-0.1)
    cont = ModelSet("m", "1", list(b.baked), b.continuous, ["CPUExecutionProvider"])
    sel = cont.select(0.3)
    assert sel.alpha == pytest.approx(0.3) and sel.feed_alpha == 0.3 and sel.model is cont.continuous[0]
    assert cont.select(1.0).feed_alpha is None  # a baked alpha uses its baked file


def test_requested_cuda_that_came_back_cpu_is_reported(baked_dir):
    b = read_baked_set(baked_dir)
    m = ModelSet("m", "1", list(b.baked), None, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert m.providers == ["CPUExecutionProvider"] and m.fallback  # no GPU on this machine


def test_batcher_batches_same_shape_and_skips_cancelled(continuous_dir):
    b = read_baked_set(continuous_dir)
    models = ModelSet("m", "1", list(b.baked), b.continuous, ["CPUExecutionProvider"])
    k = synthetic_kspace(3, 2, 32, 24, seed=5)
    mask = test_mask()
    ref, _ = ort_reference(b.continuous[0][1], k, mask, alpha=0.25)
    batcher = Batcher(max_batch=4, max_queue=8, wait_ms=200)
    zf = k * mask
    ri = np.stack([zf.real, zf.imag], -1).astype(np.float32)
    sel = models.select(0.25)
    futs = [batcher.submit(Job(sel, ri[i], mask)) for i in range(3)]
    cancelled = batcher.submit(Job(sel, ri[0], mask, is_cancelled=lambda: True))
    results = [f.result(timeout=30) for f in futs]
    assert max(r.batch_size for r in results) >= 2
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.image, ref[i], atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="cancelled"):
        cancelled.result(timeout=30)
    batcher.stop()


class _BlockingModel:
    """Stands in for an OnnxModel whose run waits until released."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def run(self, kspace, mask, alpha=None):
        self.release.wait(10)
        return np.zeros(kspace.shape[:1] + kspace.shape[2:4], np.float32), np.zeros(len(kspace), np.float32)


def test_full_queue_pushes_back_instead_of_growing():
    from service.engine import QueueFull, Selection

    model = _BlockingModel()
    sel = Selection(model, 0.0, None)
    batcher = Batcher(max_batch=1, max_queue=2)
    k, mask = np.zeros((1, 4, 4, 2), np.float32), np.ones(4, np.float32)
    first = batcher.submit(Job(sel, k, mask))
    import time

    time.sleep(0.2)  # the worker has taken the first job and blocks in run()
    queued = [batcher.submit(Job(sel, k, mask), timeout=1) for _ in range(2)]
    with pytest.raises(QueueFull, match="2 slices"):
        batcher.submit(Job(sel, k, mask), timeout=0.2)
    assert batcher.depth() == 2
    model.release.set()
    assert all(f.result(timeout=10).image.shape == (4, 4) for f in [first, *queued])
    batcher.stop()


@pytest.mark.parametrize("env,needle", [
    ({"DNIRECON_STREAM_INFLIGHT": "0"}, "DNIRECON_STREAM_INFLIGHT / --stream-inflight is 0, expected an integer >= 1"),
    ({"DNIRECON_MAX_WORKERS": "0"}, "DNIRECON_MAX_WORKERS / --max-workers is 0, expected an integer >= 1"),
    ({"DNIRECON_MAX_SLICE_BYTES": "0"}, "DNIRECON_MAX_SLICE_BYTES / --max-slice-bytes is 0, expected an integer >= 1"),
    ({"DNIRECON_BATCH_WAIT_MS": "-1"}, "DNIRECON_BATCH_WAIT_MS / --batch-wait-ms is -1.0, expected a number >= 0"),
    ({"DNIRECON_BATCH_WAIT_MS": "nan"}, "DNIRECON_BATCH_WAIT_MS / --batch-wait-ms is nan"),
    ({"DNIRECON_GRPC_PORT": "65536"}, r"DNIRECON_GRPC_PORT / --port is 65536, expected a port in 0\.\.65535"),
    ({"DNIRECON_GRPC_PORT": "-1"}, r"DNIRECON_GRPC_PORT / --port is -1, expected a port in 0\.\.65535"),
    ({"DNIRECON_METRICS_PORT": "70000"}, r"DNIRECON_METRICS_PORT / --metrics-port is 70000, expected a port in 0\.\.65535"),
    ({"DNIRECON_DRAIN_SECONDS": "-2"}, "DNIRECON_DRAIN_SECONDS / --drain-seconds is -2.0, expected a number >= 0"),
    ({"DNIRECON_ALIAS_POLL_SECONDS": "0"}, "DNIRECON_ALIAS_POLL_SECONDS / --alias-poll-seconds is 0.0, expected a number > 0"),
    ({"DNIRECON_KEEPALIVE_SECONDS": "-1"}, "DNIRECON_KEEPALIVE_SECONDS / --keepalive-seconds is -1.0, expected a number >= 0"),
    ({"DNIRECON_KEEPALIVE_TIMEOUT_SECONDS": "0"},
     "DNIRECON_KEEPALIVE_TIMEOUT_SECONDS / --keepalive-timeout-seconds is 0.0, expected a number > 0"),
    ({"DNIRECON_MIN_CLIENT_PING_SECONDS": "nan"}, "DNIRECON_MIN_CLIENT_PING_SECONDS / --min-client-ping-seconds is nan"),
    ({"DNIRECON_MAX_CONNECTION_AGE_SECONDS": "-5"},
     "DNIRECON_MAX_CONNECTION_AGE_SECONDS / --max-connection-age-seconds is -5.0, expected a number >= 0"),
    ({"DNIRECON_MAX_CONNECTION_AGE_GRACE_SECONDS": "-1"},
     "DNIRECON_MAX_CONNECTION_AGE_GRACE_SECONDS / --max-connection-age-grace-seconds is -1.0, expected a number >= 0"),
])
def test_out_of_range_settings_name_flag_and_variable(env, needle):
    with pytest.raises(ConfigError, match=needle):
        settings_from(None, env)


def test_port_zero_means_any_port_or_no_metrics():
    s = settings_from(None, {"DNIRECON_GRPC_PORT": "0", "DNIRECON_METRICS_PORT": "0", "DNIRECON_BATCH_WAIT_MS": "0"})
    assert (s.grpc_port, s.metrics_port, s.batch_wait_ms) == (0, 0, 0.0)


def test_default_alpha_from_the_manifest_is_checked_at_load(baked_dir):
    b = read_baked_set(baked_dir)
    assert ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"], default_alpha=1).select(None).alpha == 1.0
    for bad in (1.5, "high", float("nan"), True):
        with pytest.raises(ModelError, match="default_alpha"):
            ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"], default_alpha=bad)


class _FixedModel:
    """Stands in for an OnnxModel: answers `extra` more images than the batch it is given."""

    def __init__(self, extra: int = 0):
        self.extra = extra
        self.path = type("P", (), {"name": "fixed.onnx"})()

    def run(self, kspace, mask, alpha=None):
        n = len(kspace) + self.extra
        return np.ones((n, *kspace.shape[2:4]), np.float32), np.zeros(n, np.float32)


def test_a_batch_with_the_wrong_output_size_fails_its_slices_and_the_worker_goes_on():
    from service.engine import Selection

    bad, good = Selection(_FixedModel(extra=1), 0.0, None), Selection(_FixedModel(), 0.0, None)
    k, mask = np.zeros((1, 4, 4, 2), np.float32), np.ones(4, np.float32)
    batcher = Batcher(max_batch=2, max_queue=8, wait_ms=300)
    futs = [batcher.submit(Job(bad, k, mask)) for _ in range(2)]
    for f in futs:
        with pytest.raises(ModelError, match="batch 3 .* expected 2"):
            f.result(timeout=10)
    short = Selection(_FixedModel(extra=-1), 0.0, None)  # fewer images than slices
    with pytest.raises(ModelError, match="expected 1"):
        batcher.submit(Job(short, k, mask)).result(timeout=10)
    assert batcher.submit(Job(good, k, mask)).result(timeout=10).image.shape == (4, 4)
    batcher.stop()


def test_warmup_runs_max_batch_and_refuses_a_graph_fixed_at_batch_one(baked_dir):
    b = read_baked_set(baked_dir)
    models = ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"])
    models.warmup([(2, 16, 12)], max_batch=3)  # the stand-in has a dynamic batch

    class BatchOfOne(_FixedModel):
        def run(self, kspace, mask, alpha=None):
            return super().run(kspace[:1], mask[:1], alpha)

    models.baked[0] = (0.0, [BatchOfOne()])
    models.warmup([(2, 16, 12)], max_batch=1)
    with pytest.raises(ModelError, match=r"batch 3 .* expected \(3, 16, 12\)"):
        models.warmup([(2, 16, 12)], max_batch=3)


def test_stopped_batcher_fails_queued_jobs_and_refuses_new_ones():
    from service.engine import Selection, ShuttingDown

    model = _BlockingModel()
    sel = Selection(model, 0.0, None)
    batcher = Batcher(max_batch=1, max_queue=4)
    k, mask = np.zeros((1, 4, 4, 2), np.float32), np.ones(4, np.float32)
    running = batcher.submit(Job(sel, k, mask))
    import time

    time.sleep(0.2)  # the worker is in run()
    queued = [batcher.submit(Job(sel, k, mask)) for _ in range(2)]
    batcher.stop()
    for f in queued:
        with pytest.raises(ShuttingDown, match="shutting down"):
            f.result(timeout=1)
    with pytest.raises(ShuttingDown):
        batcher.submit(Job(sel, k, mask))
    model.release.set()
    assert running.result(timeout=10).image.shape == (4, 4)  # the batch in compute still finishes


def test_client_certificate_without_ca_is_an_error_and_a_plaintext_token_warns(caplog):
    from service.client import ReconClient

    with pytest.raises(ConfigError, match="--cert-file / --key-file .* need --ca-file"):
        ReconClient("127.0.0.1:1", client_cert=b"cert", client_key=b"key")
    with pytest.raises(ConfigError, match="--cert-file and --key-file .* together"):
        ReconClient("127.0.0.1:1", root_cert=b"ca", client_cert=b"cert")
    with caplog.at_level("WARNING", logger="service.client"):
        ReconClient("127.0.0.1:1", token="t").close()
    assert "bearer token to 127.0.0.1:1 over an insecure channel" in caplog.text


def test_a_result_that_does_not_fit_its_header_fails_that_slice_internal(baked_dir):
    from concurrent.futures import Future

    import grpc

    from service.config import Settings
    from service.engine import JobResult, Selection
    from service.server import ModelHolder, ParsedHeader, Pending, ReconstructionServicer, Served
    from service.telemetry import Metrics

    servicer = ReconstructionServicer(ModelHolder(), None, Settings(), Metrics())
    header = wire.make_header(3, (2, 32, 24), test_mask(), (16, 16))
    fut = Future()
    fut.set_result(JobResult(np.zeros((8, 8), np.float32), 0.0, 0.0, 0.0, 1))  # smaller than the 16x16 recon size
    parsed = ParsedHeader(header, test_mask(), Served(read_baked_set(baked_dir), None), Selection(None, 0.0, None))
    r = servicer.finish(Pending(parsed, 0.0, fut))
    assert r.slice_index == 3 and r.error.code_name == grpc.StatusCode.INTERNAL.name and "centre-crop" in r.error.reason


def test_outputs_are_copied_out_of_the_onnxruntime_arena(baked_dir):
    """onnxruntime returns CPU outputs as views of its arena; held by the server while the next batch
    runs, they fragment it and RSS creeps up (docs/benchmarks.md). run() must hand back owned arrays."""
    b = read_baked_set(baked_dir)
    model = ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"]).baked[0][1][0]
    kspace = synthetic_kspace(2, 4, 16, 12)
    mask = np.stack([test_mask(12)] * 2)
    image, dc = model.run(np.stack([kspace.real, kspace.imag], -1).astype(np.float32), mask)
    for name, arr in (("image", image), ("dc_residual", dc)):
        assert arr.flags["OWNDATA"] or (arr.base is not None and arr.base.flags["OWNDATA"]), name
        assert isinstance(arr.base, (type(None), np.ndarray)), f"{name} is a view of {type(arr.base)}"
    assert image.shape == (2, 16, 12) and dc.shape == (2,)


def test_the_cpu_memory_arena_can_be_turned_off_with_the_same_images(baked_dir):
    assert Settings().cpu_mem_arena and not settings_from(None, {"DNIRECON_CPU_MEM_ARENA": "false"}).cpu_mem_arena
    b = read_baked_set(baked_dir)
    on, off = (ModelSet("m", "1", list(b.baked), None, ["CPUExecutionProvider"], cpu_mem_arena=a).baked[0][1][0] for a in (True, False))
    assert on.session.get_session_options().enable_cpu_mem_arena
    assert not off.session.get_session_options().enable_cpu_mem_arena
    kspace = synthetic_kspace(2, 4, 16, 12)
    ri, mask = np.stack([kspace.real, kspace.imag], -1).astype(np.float32), np.stack([test_mask(12)] * 2)
    np.testing.assert_array_equal(on.run(ri, mask)[0], off.run(ri, mask)[0])


@pytest.mark.parametrize("host, metrics_host, address", [
    ("[::]", "", "0.0.0.0"), ("0.0.0.0", "", "0.0.0.0"), ("127.0.0.1", "", "127.0.0.1"), ("[::1]", "", "::1"),
    ("127.0.0.1", "0.0.0.0", "0.0.0.0"), ("[::]", "10.1.2.3", "10.1.2.3"),
])
def test_metrics_bind_the_grpc_host_unless_told_otherwise(host, metrics_host, address):
    assert Settings(host=host, metrics_host=metrics_host).metrics_address == address
    env = {"DNIRECON_GRPC_HOST": host, "DNIRECON_METRICS_HOST": metrics_host}
    assert settings_from([], env).metrics_address == address
