"""Settings of `dnirecon serve`: each a flag and a DNIRECON_* (or MLFLOW_*) environment variable.

The deploy manifests set exactly these variable names; flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dnirecon.errors import ConfigError

PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
CUDNN_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
HEALTH_SERVICE_NAMES = ("", "dnirecon.v1.Reconstruction")
CONTROL_THREADS = 8  # gRPC threads kept free of reconstruction calls: health, reflection, ListModels, refusals


@dataclass(frozen=True)
class Settings:
    model_uri: str = "models:/interpsn@production"
    model_dir: Path | None = None
    tracking_uri: str | None = None
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "dnirecon")
    host: str = "[::]"
    grpc_port: int = 50051
    metrics_port: int = 9090
    mrd_port: int = 9002  # MRD (ISMRMRD streaming) for scanners; 0: off
    metrics_host: str = ""  # "": the --host address (a wildcard --host binds 0.0.0.0)
    providers: tuple[str, ...] = ("cuda", "cpu")
    intra_op_threads: int = 0  # 0: onnxruntime's default
    intra_op_spinning: bool = True  # onnxruntime's default; off helps when cores are few and shared
    cpu_mem_arena: bool = True  # onnxruntime's default; off: ~100 MiB smaller, ~7 % slower (docs/benchmarks.md)
    max_batch: int = 4
    max_queue: int = 64
    batch_wait_ms: float = 0.0  # 0: batch only what is already queued, never wait for company
    stream_inflight: int = 4  # slices of one stream being computed; more stops reading (push back)
    max_streams: int = 48  # reconstruction calls open at once; one more is refused RESOURCE_EXHAUSTED at once
    max_workers: int = 64  # gRPC threads: one per open call, so at least max_streams + CONTROL_THREADS
    slice_memory_bytes: int = 2 * 1024**3  # zero-filled matrices of the slices being assembled, all streams together
    slice_idle_seconds: float = 30.0  # an open slice with no message this long is answered DEADLINE_EXCEEDED
    registry_timeout_seconds: float = 10.0  # start-up waits this long for the registry before serving the cache
    # connections (dnirecon.wire.server_connection_options; docs/service.md "Connections"):
    keepalive_seconds: float = 60.0  # ping a connection quiet this long; 0: gRPC's 2 h
    keepalive_timeout_seconds: float = 20.0  # no answer: the connection is closed, its streams cancelled
    min_client_ping_seconds: float = 10.0  # clients pinging more often are sent GOAWAY (too_many_pings)
    max_connection_age_seconds: float = 0.0  # GOAWAY after this (+-10 %): clients reconnect, replicas rebalance; 0: never
    max_connection_age_grace_seconds: float = 0.0  # calls open at GOAWAY may run this long; 0: to their end
    alias_poll_seconds: float = 30.0
    drain_seconds: float = 20.0
    auth_token_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # HEURISTIC: a shape the warm-up did not cover runs at once; EXHAUSTIVE re-tunes every new shape
    cudnn_conv_algo_search: str = "HEURISTIC"
    use_tf32: bool = False  # TF32 MatMul/Conv on the CUDA provider: faster, ~1e-3 relative error
    warmup_shapes: tuple[tuple[int, int, int], ...] = ()
    max_slice_bytes: int = 256 * 1024 * 1024  # zero-filled complex64 matrix a slice may declare
    malloc_mmap_threshold: int = 128 * 1024  # glibc mmap threshold pinned at start (0: glibc's dynamic one)
    malloc_arena_max: int = 2  # glibc arenas (0: glibc's default, 8 per core)

    @property
    def metrics_address(self) -> str:
        """Where the Prometheus exporter listens: --metrics-host, else the gRPC host without brackets
        (a server bound to loopback does not expose its metrics on every interface)."""
        host = (self.metrics_host or self.host).strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return "0.0.0.0" if host in ("", "::", "0.0.0.0", "*") else host

    def __post_init__(self) -> None:
        for name in self.providers:
            if name not in PROVIDER_NAMES:
                raise ConfigError(
                    f"DNIRECON_PROVIDERS / --providers: unknown provider {name!r}, expected a comma list of {sorted(PROVIDER_NAMES)}"
                )
        if not self.providers:
            raise ConfigError("DNIRECON_PROVIDERS / --providers is empty, expected e.g. 'cuda,cpu'")
        if self.cudnn_conv_algo_search not in CUDNN_ALGO_SEARCH:
            raise ConfigError(
                f"DNIRECON_CUDNN_CONV_ALGO_SEARCH / --cudnn-conv-algo-search is {self.cudnn_conv_algo_search!r}, expected one of {CUDNN_ALGO_SEARCH}"
            )
        for opt, value, low in [
            ("DNIRECON_MAX_BATCH / --max-batch", self.max_batch, 1),
            ("DNIRECON_MAX_QUEUE / --max-queue", self.max_queue, 1),
            ("DNIRECON_STREAM_INFLIGHT / --stream-inflight", self.stream_inflight, 1),
            ("DNIRECON_MAX_STREAMS / --max-streams", self.max_streams, 1),
            ("DNIRECON_MAX_WORKERS / --max-workers", self.max_workers, 1),
            ("DNIRECON_SLICE_MEMORY_BYTES / --slice-memory-bytes", self.slice_memory_bytes, 1),
            ("DNIRECON_MAX_SLICE_BYTES / --max-slice-bytes", self.max_slice_bytes, 1),
            ("DNIRECON_INTRA_OP_THREADS / --intra-op-threads", self.intra_op_threads, 0),
            ("DNIRECON_MALLOC_MMAP_THRESHOLD / --malloc-mmap-threshold", self.malloc_mmap_threshold, 0),
            ("DNIRECON_MALLOC_ARENA_MAX / --malloc-arena-max", self.malloc_arena_max, 0),
        ]:
            if value < low:
                raise ConfigError(f"{opt} is {value}, expected an integer >= {low}")
        for opt, value, zero in [
            ("DNIRECON_GRPC_PORT / --port", self.grpc_port, "any free port, logged"),
            ("DNIRECON_METRICS_PORT / --metrics-port", self.metrics_port, "no metrics"),
            ("DNIRECON_MRD_PORT / --mrd-port", self.mrd_port, "no MRD endpoint"),
        ]:
            if not 0 <= value <= 65535:
                raise ConfigError(f"{opt} is {value}, expected a port in 0..65535 (0: {zero})")
        # `not (x >= 0)` is also true for NaN
        for opt, value, ok, expected in [
            ("DNIRECON_BATCH_WAIT_MS / --batch-wait-ms", self.batch_wait_ms, self.batch_wait_ms >= 0, ">= 0"),
            ("DNIRECON_ALIAS_POLL_SECONDS / --alias-poll-seconds", self.alias_poll_seconds, self.alias_poll_seconds > 0, "> 0"),
            ("DNIRECON_DRAIN_SECONDS / --drain-seconds", self.drain_seconds, self.drain_seconds >= 0, ">= 0"),
            ("DNIRECON_SLICE_IDLE_SECONDS / --slice-idle-seconds", self.slice_idle_seconds, self.slice_idle_seconds > 0, "> 0"),
            ("DNIRECON_REGISTRY_TIMEOUT_SECONDS / --registry-timeout-seconds", self.registry_timeout_seconds,
             self.registry_timeout_seconds > 0, "> 0"),
            ("DNIRECON_KEEPALIVE_SECONDS / --keepalive-seconds", self.keepalive_seconds, self.keepalive_seconds >= 0, ">= 0"),
            ("DNIRECON_KEEPALIVE_TIMEOUT_SECONDS / --keepalive-timeout-seconds", self.keepalive_timeout_seconds,
             self.keepalive_timeout_seconds > 0, "> 0"),
            ("DNIRECON_MIN_CLIENT_PING_SECONDS / --min-client-ping-seconds", self.min_client_ping_seconds,
             self.min_client_ping_seconds >= 0, ">= 0"),
            ("DNIRECON_MAX_CONNECTION_AGE_SECONDS / --max-connection-age-seconds", self.max_connection_age_seconds,
             self.max_connection_age_seconds >= 0, ">= 0"),
            ("DNIRECON_MAX_CONNECTION_AGE_GRACE_SECONDS / --max-connection-age-grace-seconds",
             self.max_connection_age_grace_seconds, self.max_connection_age_grace_seconds >= 0, ">= 0"),
        ]:
            if not ok:
                raise ConfigError(f"{opt} is {value}, expected a number {expected}")
        if self.max_workers < self.max_streams + CONTROL_THREADS:
            raise ConfigError(f"DNIRECON_MAX_WORKERS / --max-workers is {self.max_workers}, expected at least DNIRECON_MAX_STREAMS / "
                              f"--max-streams ({self.max_streams}) + {CONTROL_THREADS}: each open reconstruction call holds a "
                              f"gRPC thread, and health and control calls need threads of their own")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("DNIRECON_TLS_CERT_FILE and DNIRECON_TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("DNIRECON_TLS_CLIENT_CA_FILE (mutual TLS) needs DNIRECON_TLS_CERT_FILE and DNIRECON_TLS_KEY_FILE")

    @property
    def ort_providers(self) -> list[str]:
        return [PROVIDER_NAMES[p] for p in self.providers]


def parse_providers(text: str) -> tuple[str, ...]:
    return tuple(p.strip().lower() for p in text.split(",") if p.strip())


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """'15x640x368,8x192x112' -> ((15, 640, 368), (8, 192, 112)): coils x readout x phase."""
    shapes = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(
                f"DNIRECON_WARMUP_SHAPES / --warmup-shapes: {item!r} is not COILSxREADOUTxPHASE, e.g. '15x640x368'"
            )
        shapes.append(tuple(int(p) for p in parts))
    return tuple(shapes)


# (flag, env variable, Settings field, type, help)
_OPTIONS = [
    ("--model-uri", "DNIRECON_MODEL_URI", "model_uri", str, "MLflow model URI, models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("--model-dir", "DNIRECON_MODEL_DIR", "model_dir", Path, "local baked-set directory (offline; wins over --model-uri)"),
    ("--tracking-uri", "MLFLOW_TRACKING_URI", "tracking_uri", str, "MLflow tracking URI"),
    ("--cache-dir", "DNIRECON_CACHE_DIR", "cache_dir", Path, "download cache, keyed by name/version"),
    ("--host", "DNIRECON_GRPC_HOST", "host", str, "address to bind"),
    ("--port", "DNIRECON_GRPC_PORT", "grpc_port", int, "gRPC port"),
    ("--metrics-port", "DNIRECON_METRICS_PORT", "metrics_port", int, "Prometheus metrics port (0: off)"),
    ("--mrd-port", "DNIRECON_MRD_PORT", "mrd_port", int, "MRD (ISMRMRD streaming) port for scanners (0: off)"),
    ("--metrics-host", "DNIRECON_METRICS_HOST", "metrics_host", str,
     "address the metrics port binds (default: the --host address; 0.0.0.0 when that is a wildcard)"),
    ("--providers", "DNIRECON_PROVIDERS", "providers", parse_providers, "onnxruntime providers in order, e.g. cuda,cpu"),
    ("--intra-op-threads", "DNIRECON_INTRA_OP_THREADS", "intra_op_threads", int, "onnxruntime intra-op threads (0: default)"),
    ("--intra-op-spinning", "DNIRECON_INTRA_OP_SPINNING", "intra_op_spinning", parse_bool, "idle onnxruntime threads spin (true|false)"),
    ("--cpu-mem-arena", "DNIRECON_CPU_MEM_ARENA", "cpu_mem_arena", parse_bool,
     "onnxruntime's CPU memory arena (true|false; false: a smaller server, slower CPU compute)"),
    ("--max-batch", "DNIRECON_MAX_BATCH", "max_batch", int, "most slices computed in one run"),
    ("--max-queue", "DNIRECON_MAX_QUEUE", "max_queue", int, "most slices waiting for compute"),
    ("--batch-wait-ms", "DNIRECON_BATCH_WAIT_MS", "batch_wait_ms", float, "wait this long for slices to batch with"),
    ("--stream-inflight", "DNIRECON_STREAM_INFLIGHT", "stream_inflight", int, "slices of one stream in compute at once"),
    ("--max-streams", "DNIRECON_MAX_STREAMS", "max_streams", int,
     "reconstruction calls (streams and single-slice) open at once; more are refused RESOURCE_EXHAUSTED"),
    ("--max-workers", "DNIRECON_MAX_WORKERS", "max_workers", int,
     f"gRPC worker threads, at least --max-streams + {CONTROL_THREADS}"),
    ("--slice-memory-bytes", "DNIRECON_SLICE_MEMORY_BYTES", "slice_memory_bytes", int,
     "bytes of zero-filled k-space all slices being assembled may hold together; a header beyond it is refused"),
    ("--slice-idle-seconds", "DNIRECON_SLICE_IDLE_SECONDS", "slice_idle_seconds", float,
     "a slice with no message for this long is answered DEADLINE_EXCEEDED and its stream ended"),
    ("--registry-timeout-seconds", "DNIRECON_REGISTRY_TIMEOUT_SECONDS", "registry_timeout_seconds", float,
     "at start, wait this long for the registry before serving the newest verified version in --cache-dir"),
    ("--keepalive-seconds", "DNIRECON_KEEPALIVE_SECONDS", "keepalive_seconds", float,
     "ping a connection after this long without traffic (0: gRPC's 2 h)"),
    ("--keepalive-timeout-seconds", "DNIRECON_KEEPALIVE_TIMEOUT_SECONDS", "keepalive_timeout_seconds", float,
     "a ping unanswered this long closes the connection and cancels its streams"),
    ("--min-client-ping-seconds", "DNIRECON_MIN_CLIENT_PING_SECONDS", "min_client_ping_seconds", float,
     "shortest interval of client keepalive pings accepted (more often: GOAWAY too_many_pings)"),
    ("--max-connection-age-seconds", "DNIRECON_MAX_CONNECTION_AGE_SECONDS", "max_connection_age_seconds", float,
     "send GOAWAY to connections this old, so clients reconnect and spread over replicas (0: never)"),
    ("--max-connection-age-grace-seconds", "DNIRECON_MAX_CONNECTION_AGE_GRACE_SECONDS", "max_connection_age_grace_seconds",
     float, "after that GOAWAY, how long open calls may still run (0: to their end)"),
    ("--alias-poll-seconds", "DNIRECON_ALIAS_POLL_SECONDS", "alias_poll_seconds", float, "how often the alias is checked"),
    ("--drain-seconds", "DNIRECON_DRAIN_SECONDS", "drain_seconds", float, "after SIGTERM, time for in-flight work"),
    ("--auth-token-file", "DNIRECON_AUTH_TOKEN_FILE", "auth_token_file", Path, "require 'authorization: Bearer <token>'"),
    ("--tls-cert-file", "DNIRECON_TLS_CERT_FILE", "tls_cert_file", Path, "server certificate (PEM)"),
    ("--tls-key-file", "DNIRECON_TLS_KEY_FILE", "tls_key_file", Path, "server key (PEM)"),
    ("--tls-client-ca-file", "DNIRECON_TLS_CLIENT_CA_FILE", "tls_client_ca_file", Path, "CA for client certificates (mutual TLS)"),
    ("--cudnn-conv-algo-search", "DNIRECON_CUDNN_CONV_ALGO_SEARCH", "cudnn_conv_algo_search", str.upper, "EXHAUSTIVE|HEURISTIC|DEFAULT"),
    ("--use-tf32", "DNIRECON_USE_TF32", "use_tf32", parse_bool,
     "TF32 MatMul/Conv on the CUDA provider (true|false; true: faster on Ampere and later, ~1e-3 relative error)"),
    ("--warmup-shapes", "DNIRECON_WARMUP_SHAPES", "warmup_shapes", parse_shapes, "e.g. 15x640x368,8x192x112"),
    ("--max-slice-bytes", "DNIRECON_MAX_SLICE_BYTES", "max_slice_bytes", int, "largest zero-filled slice accepted"),
    ("--malloc-mmap-threshold", "DNIRECON_MALLOC_MMAP_THRESHOLD", "malloc_mmap_threshold", int,
     "bytes: glibc serves larger allocations from their own mappings, returned on free (0: glibc's dynamic threshold)"),
    ("--malloc-arena-max", "DNIRECON_MALLOC_ARENA_MAX", "malloc_arena_max", int,
     "glibc malloc arenas shared by all threads (0: glibc's default of 8 per core)"),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, env, _field, _type, help_text in _OPTIONS:
        parser.add_argument(flag, default=None, help=f"{help_text} [env {env}]")


def settings_from(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Flag value if given, else the environment variable, else the default."""
    environ = os.environ if environ is None else environ
    values = {}
    for flag, env, name, conv, _help in _OPTIONS:
        raw = getattr(args, flag.lstrip("-").replace("-", "_"), None) if args is not None else None
        if raw is None:
            raw = environ.get(env) or None
        if raw is None:
            continue
        try:
            values[name] = conv(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ConfigError(f"{flag} / {env} = {raw!r}: {exc}") from None
    return Settings(**values)


# RFC 6750's b64token: what may follow "Bearer " in an authorization header
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_TOKEN_CHARS = "letters, digits and -._~+/, then optional '='"


def parse_bearer_token(raw: bytes, where: str) -> str:
    """The bearer token in a token file's bytes (surrounding whitespace dropped), checked to be one RFC 6750
    token; `where` names the file and its flag in the ConfigError."""
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: byte {exc.start} is not ASCII; expected one bearer token ({_TOKEN_CHARS})") from None
    if not token:  # "Bearer " would then be the accepted credential
        raise ConfigError(f"{where}: empty, expected a token")
    if not _TOKEN_RE.fullmatch(token):
        bad = next((c for c in token if not _TOKEN_RE.fullmatch(c)), "=")
        raise ConfigError(f"{where}: {bad!r} cannot be in a bearer token; expected {_TOKEN_CHARS}")
    return token
