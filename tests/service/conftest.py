"""Fixtures of the service tests: a small stand-in ONNX model honouring the artefact contract,
a baked-set directory, a synthetic fastMRI-layout volume and a real server subprocess.

Tests may import torch (to build the stand-in); the server process runs with torch blocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DNIRECON_TEST_CACHE", "/tmp/dnirecon-test-cache")) / "service"
BAKED_ALPHAS = (0.0, 1.0)


def _source_key() -> str:
    """Cache key: the stand-in's code and the torch version, so an edit re-exports."""
    import inspect
    from importlib.metadata import version

    code = inspect.getsource(_standin_module) + inspect.getsource(export_standin) + version("torch")
    return hashlib.sha256(code.encode()).hexdigest()[:12]


def _standin_module(alpha: float | None):
    """Zero-filled coil combine with a matmul centred DFT, scaled by 1 + alpha (a distinct image per alpha)."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(1.0 + (alpha or 0.0)))

        @staticmethod
        def _idft(n, like):
            # integer bounds from the symbolic size: float(n // 2) would freeze the traced size
            idx = torch.arange(-(n // 2), n - n // 2, device=like.device).to(torch.float32)
            prod = torch.remainder(idx[:, None] * idx[None, :], n)  # exact integers, small angles
            ang = 2 * torch.pi * prod / n
            scale = 1.0 / torch.sqrt(torch.tensor(float(1), device=like.device) * n)
            return torch.cos(ang) * scale, torch.sin(ang) * scale

        def forward(self, kspace, mask, alpha=None):
            h, w = kspace.shape[2], kspace.shape[3]
            m = mask[:, None, None, :]
            yr, yi = kspace[..., 0] * m, kspace[..., 1] * m
            hr, hi = self._idft(h, kspace)
            wr, wi = self._idft(w, kspace)
            ar, ai = hr @ yr - hi @ yi, hr @ yi + hi @ yr  # G_H y
            xr, xi = ar @ wr - ai @ wi, ar @ wi + ai @ wr  # (G_H y) G_W (G symmetric)
            gain = self.gain if alpha is None else 1.0 + alpha[0]
            image = torch.sqrt((xr * xr + xi * xi).sum(1)) * gain
            ynorm = torch.sqrt((yr * yr + yi * yi).sum((1, 2, 3)))
            dc = torch.abs(gain - 1.0) * ynorm / (ynorm + 1e-12)
            return image, dc

    return StandIn().eval()


def export_standin(path: Path, alpha: float | None) -> Path:
    import torch

    torch.set_num_threads(1)
    model = _standin_module(alpha)
    k = torch.randn(2, 3, 16, 12, 2)
    mk = torch.ones(2, 12)
    B, C, H, W = (torch.export.Dim.DYNAMIC,) * 4
    args = (k, mk) if alpha is not None else (k, mk, torch.tensor([0.5]))
    dyn = {"kspace": {0: B, 1: C, 2: H, 3: W}, "mask": {0: B, 1: W}}
    names = ["kspace", "mask"]
    if alpha is None:
        dyn["alpha"] = None
        names.append("alpha")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
    torch.onnx.export(model, args, str(tmp), dynamo=True, external_data=False, input_names=names,
                      output_names=["image", "dc_residual"], dynamic_shapes=dyn, optimize=True, verbose=False)
    os.replace(tmp, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_baked_set(directory: Path, onnx_files: dict, continuous: Path | None = None, preset: str = "test",
                    sets: dict | None = None) -> Path:
    """A baked-set directory (manifest.json + one ONNX per alpha) following docs/architecture.md; with
    `sets` {acceleration: {alpha: onnx file}} (and `continuous` {acceleration: file}) one graph per set
    of cascades instead."""
    directory.mkdir(parents=True, exist_ok=True)
    by_set = sets if sets is not None else {None: onnx_files}
    accels = list(by_set)
    entries = []
    for alpha in sorted(next(iter(by_set.values()))):
        graphs = []
        for accel in accels:
            name = f"alpha_{alpha:.2f}.onnx" if accel is None else f"alpha_{alpha:.2f}_{accel:g}x.onnx"
            (directory / name).write_bytes(Path(by_set[accel][alpha]).read_bytes())
            graphs.append({"file": name, "sha256": sha256(directory / name)})
        entries.append({"alpha": alpha, "graphs": graphs, "parity_max_err": 0.0, "metrics": {}})
    manifest = {"format": "dnirecon.interpsn/2", "preset": preset,
                "sources": {"sn": {"name": "sn", "version": "1"}, "sn-gan": {"name": "sn-gan", "version": "1"}},
                "cascade_sets": [{"accel": a} for a in accels], "alphas": entries}
    if continuous is not None:
        graphs = []
        for accel in accels:
            name = "continuous.onnx" if accel is None else f"continuous_{accel:g}x.onnx"
            src = continuous if sets is None else continuous[accel]
            (directory / name).write_bytes(Path(src).read_bytes())
            graphs.append({"file": name, "sha256": sha256(directory / name)})
        manifest["continuous"] = {"graphs": graphs, "max_err_vs_baked": 0.0}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


@pytest.fixture(scope="session")
def onnx_models() -> dict:
    """{0.0: path, 1.0: path, None: continuous path}, exported once and cached across runs."""
    out = CACHE / _source_key()
    files = {a: out / f"alpha_{a:.2f}.onnx" for a in BAKED_ALPHAS}
    files[None] = out / "continuous.onnx"
    for alpha, path in files.items():
        if not path.exists():
            export_standin(path, alpha)
    return files


@pytest.fixture(scope="session")
def baked_dir(onnx_models, tmp_path_factory) -> Path:
    return write_baked_set(tmp_path_factory.mktemp("baked"), {a: p for a, p in onnx_models.items() if a is not None})


@pytest.fixture(scope="session")
def continuous_dir(onnx_models, tmp_path_factory) -> Path:
    return write_baked_set(tmp_path_factory.mktemp("baked_cont"), {a: p for a, p in onnx_models.items() if a is not None},
                           continuous=onnx_models[None])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server runs with torch made unimportable: a service that imported it would fail to start.
LAUNCHER = "import sys; sys.modules['torch'] = None; from service.cli import main; sys.exit(main(sys.argv[1:]))"


class ServerProcess:
    def __init__(self, args: list[str], env: dict, log_path: Path, launcher: str = LAUNCHER):
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.target = f"127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--mrd-port", "0", "--providers", "cpu", "--intra-op-threads", "1",
             *args],
            cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_serving(self, timeout: float = 60.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(args: list[str], env: dict, log_path: Path, launcher: str = LAUNCHER, attempts: int = 3) -> ServerProcess:
    """A server process, SERVING. free_port() releases its ports before the server binds them, and an
    outgoing connection on this machine can take one in between (seen once in CI: the metrics port):
    a server that exits because it could not bind is started again on other ports."""
    for attempt in range(attempts):
        s = ServerProcess(args, env, log_path.with_suffix(f".{attempt}.log") if attempt else log_path, launcher)
        try:
            s.wait_serving()
            return s
        except RuntimeError:
            s.stop()
            if attempt == attempts - 1 or s.proc.returncode != 2 or "cannot bind" not in s.log():
                raise
    raise AssertionError("attempts must be >= 1")


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(*args: str, env: dict | None = None, launcher: str = LAUNCHER) -> ServerProcess:
        s = launch(list(args), env or {}, tmp_path / f"server{len(servers)}.log", launcher)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def make_process():
    """Builds in-process ServiceProcesses on a free loopback port (no metrics port, 0.5 s drain);
    those built are drained at teardown. Keyword arguments override the Settings."""
    from service.config import Settings
    from service.server import ServiceProcess

    procs = []

    def make(**overrides):
        settings = Settings(**{"host": "127.0.0.1", "grpc_port": free_port(), "metrics_port": 0, "mrd_port": 0, "providers": ("cpu",),
                               "intra_op_threads": 1, "drain_seconds": 0.5, "malloc_mmap_threshold": 0,
                               "malloc_arena_max": 0, **overrides})
        proc = ServiceProcess(settings)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.drain()


@pytest.fixture(scope="session")
def server(baked_dir, tmp_path_factory):
    """One server on the baked set for the session (drain 2 s so teardown is quick)."""
    s = launch(["--model-dir", str(baked_dir), "--drain-seconds", "2", "--warmup-shapes", "3x32x24",
                "--max-batch", "4"], {}, tmp_path_factory.mktemp("srv") / "server.log")
    try:
        yield s
    finally:
        s.stop()


def synthetic_kspace(n_slices=3, coils=3, h=32, w=24, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((n_slices, coils, h, w)) + 1j * rng.standard_normal((n_slices, coils, h, w))
    return k.astype(np.complex64)


def test_mask(w=24) -> np.ndarray:
    m = np.zeros(w, np.float32)
    m[::3] = 1
    m[w // 2 - 2 : w // 2 + 2] = 1
    return m


test_mask.__test__ = False  # a helper, not a test


def ort_reference(path: Path, kspace: np.ndarray, mask: np.ndarray, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """In-process onnxruntime on zero-filled kspace (S,C,H,W) complex64 -> image (S,H,W), dc (S,)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zf = kspace * mask[None, None, None, :]
    ri = np.stack([zf.real, zf.imag], -1).astype(np.float32)
    feeds = {"kspace": ri, "mask": np.repeat(mask[None], len(kspace), 0).astype(np.float32)}
    if alpha is not None:
        feeds["alpha"] = np.array([alpha], np.float32)
    image, dc = sess.run(["image", "dc_residual"], feeds)
    return image, dc


HEADER_XML = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>32</x><y>24</y><z>1</z></matrixSize></encodedSpace>
<reconSpace><matrixSize><x>16</x><y>16</y><z>1</z></matrixSize></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>21</maximum><center>11</center></kspace_encoding_step_1></encodingLimits>
</encoding></ismrmrdHeader>"""


def write_volume_file(path: Path, slices: int, seed: int) -> tuple[Path, np.ndarray]:
    """A fully sampled fastMRI-layout volume (3 coils, 32x24, phase columns [1, 23) acquired, recon 16x16)
    at path; -> (path, its k-space)."""
    import h5py

    k = synthetic_kspace(slices, 3, 32, 24, seed=seed)
    k[..., 0] = 0
    k[..., 23] = 0
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k)
        f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER_XML))
        f.create_dataset("reconstruction_rss", data=np.zeros((slices, 16, 16), np.float32))
        f.attrs["acquisition"] = "CORPD_FBK"
    return path, k


def register(client, exp_id: str, directory) -> str:
    """One interpsn version: the baked set logged as run artifacts, registered from the run's artifact URI."""
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(directory), artifact_path="baked")
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version("interpsn", source=f"{run.info.artifact_uri}/baked", run_id=run.info.run_id)
    return str(mv.version)
