"""Start and stop a `dnirecon serve` process on loopback: used by the demo, the benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dnirecon.errors import DniReconError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float, proc: subprocess.Popen | None = None,
                 service: str = "") -> None:
    """Polls grpc.health.v1 until SERVING; raises with the server's exit code if it died first."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise DniReconError(f"server at {address} exited with code {proc.returncode} before SERVING")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise DniReconError(f"server at {address} was not SERVING within {timeout:.0f} s")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM (its drain path) when the process that started it dies, even by
    SIGKILL, so a killed demo, bench or test run leaves no server behind holding a port and memory."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def popen_tied_to_parent(cmd: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen whose child is sent SIGTERM when this process dies (Linux; elsewhere plain Popen).
    Call it from the thread that lives as long as the child: the kernel ties the signal to that thread."""
    if sys.platform.startswith("linux"):
        kwargs.setdefault("preexec_fn", _die_with_parent)
    return subprocess.Popen(cmd, **kwargs)


class ServerProcess:
    """A `dnirecon serve` subprocess; stops with SIGTERM (the drain path) and reports its exit code."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None,
                 port: int | None = None, metrics_port: int | None = None, ready_timeout: float = 300.0):
        self.ready_timeout = ready_timeout  # how long start() waits for SERVING
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.mrd_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.env.update({"DNIRECON_GRPC_PORT": str(self.port), "DNIRECON_METRICS_PORT": str(self.metrics_port),
                         "DNIRECON_MRD_PORT": str(self.mrd_port)})
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "commands.cli", "serve", *self.args]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.proc = popen_tied_to_parent(cmd, env=self.env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        try:
            wait_serving(self.address, self.ready_timeout, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait: the server drains in-flight work and exits 0."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log:
            self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
