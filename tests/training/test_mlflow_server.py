"""One run against a real `mlflow server --workers 1` on loopback: log, register, load back over HTTP."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from training import tracking
from training.train import train_model

pytestmark = pytest.mark.mlflow_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path, monkeypatch):
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.exists():
        exe = shutil.which("mlflow")
    if not exe:
        pytest.skip("mlflow executable not found next to the interpreter")
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not become healthy: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-server")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group only
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_unet_run_registers_through_a_tracking_server(tiny_data, tmp_path, mlflow_server):
    result = train_model("unet", tiny_data, preset="cpu", epochs=1, progress=False, out_dir=tmp_path / "ck")
    assert result.version == "1"
    mv = tracking.client().get_model_version("unet", "1")
    assert mv.source.startswith("mlflow-artifacts:") and mv.tags["preset"] == "cpu"
    loaded = tracking.load_registered_model("unet", "champion")
    assert loaded.version == "1" and loaded.config["kind"] == "unet"
