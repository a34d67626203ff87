"""Acceptance 4 of issue 5: the server follows models:/interpsn@production in a real MLflow store."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request

from service.client import ReconClient

from .conftest import register, synthetic_kspace, test_mask, write_baked_set


def metric(server, name: str) -> str:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def test_alias_move_swaps_without_failed_request_and_broken_version_is_refused(tmp_path, onnx_models, start_server):
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = mc.create_experiment("bake", artifact_location=(tmp_path / "artifacts").as_uri())
    mc.create_registered_model("interpsn")
    baked = {a: p for a, p in onnx_models.items() if a is not None}
    v1 = register(mc, exp, write_baked_set(tmp_path / "v1", baked))
    v2 = register(mc, exp, write_baked_set(tmp_path / "v2", baked, continuous=onnx_models[None]))
    broken = write_baked_set(tmp_path / "v3", baked)
    (broken / "alpha_0.00.onnx").write_bytes(b"not an onnx graph")  # sha256 re-recorded: it downloads fine, fails to load
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["alphas"][0]["graphs"][0]["sha256"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    v3 = register(mc, exp, broken)
    mc.set_registered_model_alias("interpsn", "production", v1)

    server = start_server("--model-uri", "models:/interpsn@production", "--tracking-uri", uri,
                          "--cache-dir", str(tmp_path / "cache"), "--alias-poll-seconds", "0.5", "--drain-seconds", "2",
                          "--warmup-shapes", "2x32x24")
    k, mask = synthetic_kspace(1, 2, 32, 24, seed=9)[0], test_mask()
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def keep_asking():
        with ReconClient(server.target) as client:
            i = 0
            while not stop.is_set():
                try:
                    (r,) = client.stream([(i, k, mask)], (32, 24), alpha=0.3, timeout=30)
                    if r.HasField("error"):
                        failures.append(r.error.reason)
                    versions.append(r.model_version)
                except Exception as exc:  # any failed request fails the test
                    failures.append(repr(exc))
                i += 1

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        time.sleep(1.0)
        mc.set_registered_model_alias("interpsn", "production", v2)
        end = time.monotonic() + 60
        while (not versions or versions[-1] != v2) and time.monotonic() < end:
            time.sleep(0.2)
        assert versions[-1] == v2, server.log()
        with ReconClient(server.target) as client:
            assert client.list_models().models[0].continuous
        mc.set_registered_model_alias("interpsn", "production", v3)
        end = time.monotonic() + 60
        while 'outcome="refused"} 1.0' not in metric(server, "dnirecon_model_loads_total") and time.monotonic() < end:
            time.sleep(0.2)
        assert 'outcome="refused"} 1.0' in metric(server, "dnirecon_model_loads_total"), server.log()
        n = len(versions)
        time.sleep(1.5)
        assert len(versions) > n and set(versions[n:]) == {v2}  # the old set keeps serving
    finally:
        stop.set()
        worker.join()
    assert failures == []
    assert versions[0] == v1 and v1 in versions and v2 in versions and v3 not in versions
    # ordered: once v2 answered, v1 never again
    assert versions.index(v2) > max(i for i, v in enumerate(versions) if v == v1)
    assert (tmp_path / "cache" / "interpsn" / v1 / "manifest.json").is_file()
    assert f"version {v3} of interpsn refused" in server.log()
