"""The gRPC servicer of dnirecon.v1 and the serving process around it.

The servicer validates, queues and hands slices to the engine's batcher; it knows nothing of the
network. Logs carry request ids and slice indices only, never patient data.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dnirecon.errors import ConfigError
from dnirecon.fastmri_io import center_crop
from dnirecon.v1 import recon_pb2, recon_pb2_grpc
from service import wire
from service.allocator import configure_malloc
from service.config import HEALTH_SERVICE_NAMES, Settings, parse_bearer_token
from service.engine import Batcher, Cancelled, Job, ModelSet, QueueFull, Selection, ShuttingDown, WarmupStopped
from service.model_store import BakedSet, MlflowStore, read_baked_set
from service.telemetry import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = recon_pb2.DESCRIPTOR.services_by_name["Reconstruction"].full_name
SERVER_VERSION = "0.1.0"
Code = grpc.StatusCode
POLL_S = 0.25  # how often a blocked wait checks that its call is still alive
STARTUP_JOIN_S = 2.0  # after a drain, how long a start-up still in progress gets to notice it


class SliceFault(Exception):
    """A malformed slice: answered with an error result, the stream goes on."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class StreamFault(Exception):
    """A broken stream: it ends with this status."""

    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class Served:
    """The model set being served: what the store gave and the sessions built from it."""

    baked: BakedSet
    models: ModelSet


class ModelHolder:
    """The current set; swapped whole, so a request keeps the set it started with."""

    def __init__(self) -> None:
        self._current: Served | None = None
        self._lock = threading.Lock()

    def get(self) -> Served | None:
        with self._lock:
            return self._current

    def swap(self, served: Served) -> Served | None:
        with self._lock:
            old, self._current = self._current, served
        return old


DEFAULT_WARMUP_SHAPE = (2, 64, 64)  # coils, readout, phase when no --warmup-shapes


def load_served(baked: BakedSet, settings: Settings, should_stop: Callable[[], bool] | None = None) -> Served:
    """Builds the sessions of a baked set and warms them; raises ModelError if either fails, and
    WarmupStopped once should_stop() is true between two warm-up runs."""
    models = ModelSet(
        baked.name,
        baked.version,
        list(baked.baked),
        baked.continuous,
        settings.ort_providers,
        intra_op_threads=settings.intra_op_threads,
        cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
        use_tf32=settings.use_tf32,
        default_alpha=baked.manifest.get("default_alpha"),
        spinning=settings.intra_op_spinning,
        cpu_mem_arena=settings.cpu_mem_arena,
    )
    models.warmup(list(settings.warmup_shapes) or [DEFAULT_WARMUP_SHAPE], max_batch=settings.max_batch, should_stop=should_stop)
    return Served(baked, models)


@dataclass
class ParsedHeader:
    header: recon_pb2.SliceHeader
    mask: np.ndarray
    served: Served
    selection: Selection


@dataclass
class Pending:
    """A slice handed to the batcher; its result goes back on the stream that sent it."""

    parsed: ParsedHeader
    t_last_chunk: float
    future: futures.Future
    release: Callable[[], None] = lambda: None  # frees the stream's slot once the result is handed to gRPC


class _End:
    pass


class _CallEnded(Exception):
    """The call was cancelled or its deadline passed while the reader waited."""


def _acquire(sem: threading.Semaphore, cancelled: threading.Event, context) -> None:
    """sem.acquire() that gives up (raising _CallEnded) once the call has ended."""
    while not sem.acquire(timeout=POLL_S):
        if cancelled.is_set() or not context.is_active():
            raise _CallEnded()


class ReconstructionServicer(recon_pb2_grpc.ReconstructionServicer):
    def __init__(self, holder: ModelHolder, batcher: Batcher, settings: Settings, metrics: Metrics, token: str | None = None):
        self.holder, self.batcher, self.settings, self.metrics = holder, batcher, settings, metrics
        self.token = token
        self.draining = threading.Event()

    # ---- shared checks -------------------------------------------------------------------------
    def _admit(self, context, rpc: str) -> None:
        self.metrics.requests.labels(rpc=rpc).inc()
        if self.token is not None:
            meta = dict(context.invocation_metadata())
            given = meta.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                self._abort(context, Code.UNAUTHENTICATED, "missing or wrong 'authorization: Bearer <token>' metadata")
        if self.draining.is_set():
            self._abort(context, Code.UNAVAILABLE, "server is shutting down")

    def _abort(self, context, code: grpc.StatusCode, reason: str) -> None:
        self.metrics.errors.labels(code=code.name).inc()
        context.abort(code, reason)

    def parse_header(self, h: recon_pb2.SliceHeader, served: Served | None) -> ParsedHeader:
        """Validates one slice's header against served, the set its call started with; SliceFault
        names what is wrong."""
        bad = Code.INVALID_ARGUMENT
        if h.dtype != recon_pb2.COMPLEX64:
            raise SliceFault(bad, f"dtype {recon_pb2.DType.Name(h.dtype) if h.dtype in recon_pb2.DType.values() else h.dtype} unsupported, expected COMPLEX64")
        if min(h.coils, h.readout, h.phase) == 0:
            raise SliceFault(bad, f"sizes coils={h.coils} readout={h.readout} phase={h.phase}, expected all > 0")
        full = h.coils * h.readout * h.phase * wire.COMPLEX64_BYTES
        if full > self.settings.max_slice_bytes:
            raise SliceFault(Code.RESOURCE_EXHAUSTED, f"slice of {full} bytes zero-filled exceeds max_slice_bytes={self.settings.max_slice_bytes}")
        if len(h.mask) != 4 * h.phase:
            raise SliceFault(bad, f"mask has {len(h.mask)} bytes, expected {4 * h.phase} (phase={h.phase} float32 values)")
        mask = wire.mask_from_bytes(h.mask)
        if not np.isin(mask, (0.0, 1.0)).all():
            raise SliceFault(bad, "mask has values other than 0 and 1")
        if not mask.any():
            raise SliceFault(bad, "mask has no acquired column")
        expected = wire.expected_payload_bytes(h.coils, h.readout, mask)
        if h.payload_bytes != expected:
            raise SliceFault(bad, f"payload_bytes is {h.payload_bytes}, mask and sizes give {expected}")
        if not (0 < h.recon_height <= h.readout and 0 < h.recon_width <= h.phase):
            raise SliceFault(bad, f"recon size {h.recon_height}x{h.recon_width}, expected within the {h.readout}x{h.phase} matrix")
        if served is None:
            raise StreamFault(Code.UNAVAILABLE, "no model loaded yet")
        b = served.baked
        alias = b.uri.rsplit("@", 1)[1] if "@" in b.uri else None
        known = {"", b.name, b.uri, f"{b.name}/{b.version}"} | ({alias, f"{b.name}@{alias}"} if alias else set())
        if h.model not in known:
            raise SliceFault(Code.NOT_FOUND, f"model {h.model!r} is not served (serving {b.name} version {b.version})")
        alpha = h.alpha if h.HasField("alpha") else None
        try:
            selection = served.models.select(alpha, mask)
        except ValueError as exc:
            raise SliceFault(bad, f"unknown alpha: {exc}") from None
        return ParsedHeader(h, mask, served, selection)

    def decode(self, parsed: ParsedHeader, scatter: wire.LineScatter) -> tuple[np.ndarray, np.ndarray]:
        """The lines scattered so far -> zero-filled kspace (C,H,W,2) float32 and mask (W,)."""
        h = parsed.header
        if scatter.received_bytes != h.payload_bytes:
            raise SliceFault(Code.INVALID_ARGUMENT, f"received {scatter.received_bytes} k-space bytes, header declared {h.payload_bytes}")
        if not scatter.finite:
            raise SliceFault(Code.INVALID_ARGUMENT, "k-space holds NaN or Inf")
        ri = scatter.result().view(np.float32).reshape(h.coils, h.readout, h.phase, 2)
        return ri, parsed.mask

    @staticmethod
    def scatter_for(parsed: ParsedHeader) -> wire.LineScatter:
        h = parsed.header
        return wire.LineScatter(h.coils, h.readout, parsed.mask)

    def submit(self, parsed: ParsedHeader, scatter: wire.LineScatter, context, cancelled: threading.Event) -> futures.Future:
        kspace, mask = self.decode(parsed, scatter)
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        job = Job(parsed.selection, kspace, mask, deadline=deadline, is_cancelled=cancelled.is_set)
        try:
            return self.batcher.submit(job, timeout=min(remaining or 5.0, 5.0))
        except QueueFull as exc:
            raise SliceFault(Code.RESOURCE_EXHAUSTED, str(exc)) from None
        except ShuttingDown as exc:
            raise SliceFault(Code.UNAVAILABLE, str(exc)) from None

    # ---- results -------------------------------------------------------------------------------
    def error_result(self, index: int, request_id: str, code: grpc.StatusCode, reason: str) -> recon_pb2.SliceResult:
        self.metrics.errors.labels(code=code.name).inc()
        self.metrics.slices.labels(outcome="error").inc()
        log.info("request %s slice %d: %s %s", request_id, index, code.name, reason)
        return recon_pb2.SliceResult(
            slice_index=index, request_id=request_id,
            error=recon_pb2.SliceError(code=code.value[0], code_name=code.name, reason=reason),
        )

    def finish(self, pending: Pending) -> recon_pb2.SliceResult:
        p = pending.parsed
        h = p.header
        try:
            r = pending.future.result()
        except Cancelled as exc:
            return self.error_result(h.slice_index, h.request_id, Code.CANCELLED, str(exc))
        except ShuttingDown as exc:
            return self.error_result(h.slice_index, h.request_id, Code.UNAVAILABLE, str(exc))
        except Exception as exc:  # an onnxruntime failure on this slice
            log.error("request %s slice %d: compute failed: %s", h.request_id, h.slice_index, type(exc).__name__)
            return self.error_result(h.slice_index, h.request_id, Code.INTERNAL, f"compute failed: {type(exc).__name__}")
        sel = p.selection
        try:
            image = np.ascontiguousarray(center_crop(r.image, (h.recon_height, h.recon_width)), dtype="<f4")
            result = recon_pb2.SliceResult(
                slice_index=h.slice_index, request_id=h.request_id,
                image=recon_pb2.Image(data=image.tobytes(), shape=list(image.shape), dtype=recon_pb2.FLOAT32),
                alpha=sel.alpha, model_name=p.served.baked.name, model_version=p.served.baked.version,
                queue_ms=1e3 * r.queue_s, compute_ms=1e3 * r.compute_s, dc_residual=r.dc_residual, batch_size=r.batch_size,
            )
        except Exception as exc:  # e.g. a model image smaller than the recon size: this slice fails, not the stream
            log.error("request %s slice %d: result failed: %s: %s", h.request_id, h.slice_index, type(exc).__name__, exc)
            return self.error_result(h.slice_index, h.request_id, Code.INTERNAL, f"result failed: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - pending.t_last_chunk
        result.server_ms = 1e3 * elapsed
        self.metrics.latency.observe(elapsed)
        self.metrics.slices.labels(outcome="ok").inc()
        # baked alphas are few; the continuous model takes any float, so it shares one label
        self.metrics.alpha_served.labels(alpha="continuous" if sel.feed_alpha is not None else f"{sel.alpha:.4g}").inc()
        return result

    # ---- RPCs ----------------------------------------------------------------------------------
    def ReconstructStream(self, request_iterator, context):
        self._admit(context, "ReconstructStream")
        self.metrics.streams_active.inc()
        try:
            served = self.holder.get()  # every slice of this stream uses this set, even if another is swapped in
            out: queue.Queue = queue.Queue()
            cancelled = threading.Event()
            context.add_callback(cancelled.set)
            reader = threading.Thread(
                target=self._read_stream, args=(request_iterator, context, out, cancelled, served), name="stream-reader", daemon=True
            )
            reader.start()
            while True:
                try:
                    item = out.get(timeout=POLL_S)
                except queue.Empty:
                    if not context.is_active():  # cancelled, past its deadline, or cut at the end of a drain
                        # or its connection was lost (a keepalive ping unanswered: --keepalive-seconds)
                        log.info("stream from %s ended before its last result: cancelled, past its deadline, "
                                 "connection lost or drained", context.peer())
                        cancelled.set()
                        return
                    continue
                if isinstance(item, _End):
                    return
                if isinstance(item, StreamFault):
                    self._abort(context, item.code, item.reason)
                if isinstance(item, Pending):
                    pending, item = item, self.finish(item)
                    yield item
                    # gRPC asks for the next result once this one is written: only then is the slot free, so a
                    # client that does not read its results stops the server reading, computing and holding more
                    pending.release()
                    continue
                yield item
        finally:
            self.metrics.streams_active.dec()

    def _read_stream(self, request_iterator, context, out: queue.Queue, cancelled: threading.Event, served: Served | None) -> None:
        inflight = threading.Semaphore(self.settings.stream_inflight)
        open_: dict | None = None  # the slice whose chunks are arriving
        seen: set[int] = set()

        def done(pending: Pending) -> None:
            out.put(pending)  # its slot is released by the response generator, after the result is sent

        try:
            for msg in request_iterator:
                kind = msg.WhichOneof("item")
                if kind == "header":
                    h = msg.header
                    if open_ is not None:
                        raise StreamFault(Code.INVALID_ARGUMENT, f"header of slice {h.slice_index} while slice {open_['index']} still open (no last chunk)")
                    open_ = {"index": h.slice_index, "rid": h.request_id, "seq": 0, "scatter": None, "parsed": None, "failed": False}
                    try:
                        if h.slice_index in seen:
                            raise SliceFault(Code.ALREADY_EXISTS, f"slice index {h.slice_index} already sent on this stream")
                        open_["parsed"] = self.parse_header(h, served)
                    except SliceFault as fault:
                        open_["failed"] = True
                        out.put(self.error_result(h.slice_index, h.request_id, fault.code, fault.reason))
                    seen.add(h.slice_index)
                elif kind == "chunk":
                    c = msg.chunk
                    t_chunk = time.perf_counter()  # the last chunk's own scatter counts in its slice's server time
                    if open_ is None:
                        raise StreamFault(Code.INVALID_ARGUMENT, f"chunk of slice {c.slice_index} without a header before it")
                    if c.slice_index != open_["index"] or c.seq != open_["seq"]:
                        raise StreamFault(
                            Code.INVALID_ARGUMENT,
                            f"chunk out of order: got slice {c.slice_index} seq {c.seq}, expected slice {open_['index']} seq {open_['seq']}",
                        )
                    open_["seq"] += 1
                    if not open_["failed"]:
                        try:
                            self._take_chunk(open_, c)
                            if c.last:
                                scatter, open_["scatter"] = open_["scatter"], None
                                t_last = t_chunk
                                parsed = open_["parsed"]
                                _acquire(inflight, cancelled, context)  # push back: stop reading while this stream has enough in compute
                                try:
                                    fut = self.submit(parsed, scatter, context, cancelled)
                                except BaseException:
                                    inflight.release()
                                    raise
                                pending = Pending(parsed, t_last, fut, inflight.release)
                                fut.add_done_callback(lambda _f, p=pending: done(p))
                        except SliceFault as fault:
                            open_["failed"] = True
                            open_["scatter"] = None
                            out.put(self.error_result(c.slice_index, open_["rid"], fault.code, fault.reason))
                    if c.last:
                        open_ = None
                else:
                    raise StreamFault(Code.INVALID_ARGUMENT, "empty StreamRequest: expected a header or a chunk")
            if open_ is not None:
                raise StreamFault(Code.INVALID_ARGUMENT, f"stream ended inside slice {open_['index']} (no last chunk)")
        except StreamFault as fault:
            # the slices before the fault were good: their results go out before the stream's status
            self._wait_inflight(inflight, cancelled, context)
            out.put(fault)
            return
        except (grpc.RpcError, _CallEnded) as exc:  # the call ended under us (cancelled, deadline, message too large)
            log.debug("stream reader stopped: %s", type(exc).__name__)
            out.put(_End())
            return
        except Exception as exc:
            if cancelled.is_set() or not context.is_active():
                log.debug("stream reader stopped: %s", type(exc).__name__)
                out.put(_End())
            else:  # a bug: the client must not take the stream for complete
                log.exception("stream reader failed")
                out.put(StreamFault(Code.INTERNAL, f"server error reading the stream: {type(exc).__name__}"))
            return
        self._wait_inflight(inflight, cancelled, context)
        out.put(_End())

    def _wait_inflight(self, inflight: threading.Semaphore, cancelled: threading.Event, context) -> None:
        """Until every slice of this stream handed to compute has had its result sent (or the call ended)."""
        try:
            for _ in range(self.settings.stream_inflight):
                _acquire(inflight, cancelled, context)
        except _CallEnded:
            pass

    def _take_chunk(self, open_: dict, c: recon_pb2.KspaceChunk) -> None:
        data = c.data  # upb copies a bytes field on every access (2.8 ms for 4 MB): read it once
        if len(data) > wire.MAX_CHUNK_BYTES:
            raise SliceFault(Code.RESOURCE_EXHAUSTED, f"chunk seq {c.seq} has {len(data)} bytes, at most {wire.MAX_CHUNK_BYTES}")
        if wire.crc32(data) != c.crc32:
            raise SliceFault(Code.DATA_LOSS, f"chunk seq {c.seq}: crc32 mismatch (zlib.crc32 of data)")
        if open_["scatter"] is None:  # the zero-filled matrix, filled as the chunks arrive
            open_["scatter"] = self.scatter_for(open_["parsed"])
        self.feed(open_["parsed"], open_["scatter"], data)

    @staticmethod
    def feed(parsed: ParsedHeader, scatter: wire.LineScatter, data: bytes) -> None:
        try:
            scatter.feed(data)
        except ValueError:
            raise SliceFault(Code.INVALID_ARGUMENT, f"more k-space bytes than the header declared ({parsed.header.payload_bytes})") from None

    def Reconstruct(self, request, context):
        self._admit(context, "Reconstruct")
        h = request.header
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        try:
            data = request.data  # read once: upb copies a bytes field on every access
            if len(data) > wire.MAX_CHUNK_BYTES:
                raise SliceFault(Code.RESOURCE_EXHAUSTED, f"{len(data)} bytes in one message, at most {wire.MAX_CHUNK_BYTES}: use ReconstructStream")
            if wire.crc32(data) != request.crc32:
                raise SliceFault(Code.DATA_LOSS, "crc32 mismatch (zlib.crc32 of data)")
            parsed = self.parse_header(h, self.holder.get())
            t_last = time.perf_counter()
            scatter = self.scatter_for(parsed)
            self.feed(parsed, scatter, data)
            fut = self.submit(parsed, scatter, context, cancelled)
        except (SliceFault, StreamFault) as fault:
            self.error_result(h.slice_index, h.request_id, fault.code, fault.reason)
            context.abort(fault.code, fault.reason)
        while not futures.wait([fut], timeout=POLL_S).done:  # the Future's own failure is reported by finish()
            if not context.is_active():
                left = context.time_remaining()
                self._abort(context, Code.DEADLINE_EXCEEDED if left is not None and left <= 0 else Code.CANCELLED,
                            "call ended during compute")
        result = self.finish(Pending(parsed, t_last, fut))
        if result.HasField("error"):
            context.abort(_code(result.error.code), result.error.reason)
        return result

    def ListModels(self, request, context):
        self._admit(context, "ListModels")
        served = self.holder.get()
        if served is None:
            return recon_pb2.ListModelsResponse()
        b = served.baked
        return recon_pb2.ListModelsResponse(models=[recon_pb2.ServedModel(
            name=b.name, version=b.version, uri=b.uri, alphas=served.models.alphas,
            continuous=served.models.continuous is not None, preset=b.preset, sha256=b.manifest_sha256,
        )])

    def GetServerInfo(self, request, context):
        self._admit(context, "GetServerInfo")
        import onnxruntime

        served = self.holder.get()
        return recon_pb2.ServerInfo(
            requested_providers=self.settings.ort_providers,
            providers=served.models.providers if served else [],
            provider_fallback=bool(served and served.models.fallback),
            onnxruntime_version=onnxruntime.__version__,
            max_batch=self.settings.max_batch, max_queue=self.settings.max_queue,
            max_chunk_bytes=wire.MAX_CHUNK_BYTES, max_message_bytes=wire.MAX_MESSAGE_BYTES,
            model_name=served.baked.name if served else "", model_version=served.baked.version if served else "",
            server_version=SERVER_VERSION,
        )


def _code(value: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == value)


def _read(path) -> bytes:
    try:
        return open(path, "rb").read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def load_initial(settings: Settings) -> tuple[BakedSet, MlflowStore | None]:
    """The set to serve first: --model-dir if given, else the MLflow model URI."""
    if settings.model_dir is not None:
        return read_baked_set(settings.model_dir, uri=str(settings.model_dir)), None
    store = MlflowStore(settings.tracking_uri, settings.cache_dir)
    return store.load(settings.model_uri), store


class ServiceProcess:
    """The server with its health, reflection, metrics, model holder, batcher and alias follower."""

    def __init__(self, settings: Settings):
        self.settings = settings
        token = None
        if settings.auth_token_file:
            token = parse_bearer_token(_read(settings.auth_token_file),
                                       f"DNIRECON_AUTH_TOKEN_FILE / --auth-token-file {settings.auth_token_file}")
        # before the gRPC and onnxruntime threads start allocating (service/allocator.py says why)
        applied = configure_malloc(settings.malloc_mmap_threshold, settings.malloc_arena_max)
        log.info("glibc malloc: mmap threshold %s, arena max %s",
                 settings.malloc_mmap_threshold if applied["mmap_threshold"] else "default",
                 settings.malloc_arena_max if applied["arena_max"] else "default")
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
            options=[*wire.CHANNEL_OPTIONS, ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
                     *wire.server_connection_options(settings)],
        )
        self.port = self._bind()
        self.metrics = Metrics()
        self.holder = ModelHolder()
        self.batcher = Batcher(settings.max_batch, settings.max_queue, settings.batch_wait_ms, metrics=self.metrics)
        self.servicer = ReconstructionServicer(self.holder, self.batcher, settings, self.metrics, token)
        self.health = health.HealthServicer()
        recon_pb2_grpc.add_ReconstructionServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), self.server
        )
        self.follower = None
        self.stopped = threading.Event()
        self.shutdown = threading.Event()  # set when draining begins, also during start-up
        self._lock = threading.Lock()  # orders SERVING / follower start against drain
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _bind(self) -> int:
        """Adds the gRPC port; ConfigError naming the settings when it cannot be bound."""
        s = self.settings
        address = f"{s.host}:{s.grpc_port}"
        try:
            if s.tls_cert_file:
                creds = grpc.ssl_server_credentials(
                    [(_read(s.tls_key_file), _read(s.tls_cert_file))],
                    root_certificates=_read(s.tls_client_ca_file) if s.tls_client_ca_file else None,
                    require_client_auth=s.tls_client_ca_file is not None,
                )
                port = self.server.add_secure_port(address, creds)
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.49 raises where older versions returned 0
            port = 0
        if port == 0:
            raise ConfigError(f"DNIRECON_GRPC_PORT / --port (with DNIRECON_GRPC_HOST / --host): cannot bind {address}, "
                              f"expected a free port on an address of this host")
        return port

    def _set_health(self, status) -> None:
        for name in HEALTH_SERVICE_NAMES:
            self.health.set(name, status)

    def install(self, baked: BakedSet, should_stop: Callable[[], bool] | None = None) -> None:
        """Load and warm beside the current set, then swap; raises if the set is refused (the caller counts it)."""
        served = load_served(baked, self.settings, should_stop)
        self.holder.swap(served)
        self.metrics.model_loads.labels(outcome="ok").inc()
        m = served.models
        self.metrics.set_model(baked.name, baked.version, m.providers, m.fallback)
        log.info("serving %s version %s (alphas %s, continuous %s) on %s",
                 baked.name, baked.version, m.alphas, m.continuous is not None, m.providers)

    def refused(self, version: str, exc: Exception) -> None:
        """The alias follower's on_refused: one count per refused version, whether fetch or load refused it."""
        self.metrics.model_loads.labels(outcome="refused").inc()

    def follow(self, store: MlflowStore, version: str):
        """The (unstarted) alias follower: installs new versions, counts refused ones."""
        from service.model_store import AliasFollower

        return AliasFollower(store, self.settings.model_uri, version, self.settings.alias_poll_seconds, self.install,
                             on_refused=self.refused)

    def _stopping(self, step: str) -> bool:
        if self.shutdown.is_set():
            log.info("shutdown requested during start-up: %s skipped", step)
        return self.shutdown.is_set()

    def start(self) -> None:
        """Metrics, gRPC port (NOT_SERVING), model load and warm-up, then SERVING; a drain begun
        meanwhile skips the remaining steps and SERVING is never set."""
        if self.settings.metrics_port:
            try:
                self.metrics.serve(self.settings.metrics_port, self.settings.metrics_address)
            except OSError as exc:
                raise ConfigError(f"DNIRECON_METRICS_PORT / --metrics-port, DNIRECON_METRICS_HOST / --metrics-host: cannot "
                                  f"bind {self.settings.metrics_address}:{self.settings.metrics_port} ({exc.strerror or exc}), "
                                  "expected a free port on an address of this host") from None
        self.server.start()
        log.info("gRPC listening on port %d (health NOT_SERVING until the model is warm)", self.port)
        if self._stopping("model download"):
            return
        baked, store = load_initial(self.settings)
        if self._stopping("model load and warm-up"):
            return
        try:
            self.install(baked, should_stop=self.shutdown.is_set)
        except WarmupStopped as exc:
            log.info("shutdown requested during start-up: %s; SERVING skipped", exc)
            return
        except Exception as exc:
            self.refused(baked.version, exc)
            raise
        with self._lock:
            if self._stopping("SERVING"):
                return
            if store is not None and parse_model_uri_alias(self.settings.model_uri):
                self.follower = self.follow(store, baked.version).start()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING")

    def drain(self) -> None:
        """SIGTERM: NOT_SERVING, refuse new calls, let in-flight ones finish within drain_seconds;
        slices still queued near its end are answered UNAVAILABLE, then the remaining calls are cut."""
        with self._lock:
            if self.shutdown.is_set():  # a second signal
                return
            self.shutdown.set()
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            self.servicer.draining.set()
            follower = self.follower
        grace = self.settings.drain_seconds
        log.info("draining: health NOT_SERVING, finishing in-flight requests within %.0f s", grace)
        if follower:
            follower.stop()
        done = self.server.stop(grace=grace)
        # fail the queue while the calls are still open, so their clients get an answer per slice
        if not done.wait(max(0.0, grace - min(1.0, grace / 2))):
            self.batcher.stop()
        done.wait()
        self.batcher.stop()
        self.stopped.set()

    def run_forever(self) -> None:
        """start() in a thread, so that a signal is handled while a download or a warm-up run is in
        progress (the main thread runs Python's signal handlers, and a native call does not return
        to them). A server stopped before it was ready exits without waiting for that call."""
        def on_signal(signum, _frame):
            threading.Thread(target=self.drain, name="drain", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        failed: list[BaseException] = []

        def startup() -> None:
            try:
                self.start()
            except BaseException as exc:
                failed.append(exc)
                self.stopped.set()

        starting = threading.Thread(target=startup, name="startup", daemon=True)
        starting.start()
        self.stopped.wait()
        if failed:
            self.server.stop(None)
            self.batcher.stop()
            raise failed[0]
        starting.join(STARTUP_JOIN_S)
        if starting.is_alive():
            # A download or one onnxruntime warm-up run (minutes at the paper preset on a CPU) that
            # nothing can interrupt; the server never served, so there is nothing left to finish.
            log.info("stopped during start-up; not waiting for the model download or warm-up run in progress")
            logging.shutdown()
            os._exit(0)
        log.info("stopped")


def parse_model_uri_alias(uri: str) -> bool:
    from service.model_store import parse_model_uri

    return parse_model_uri(uri)[1] is not None


def serve(settings: Settings) -> int:
    ServiceProcess(settings).run_forever()
    return 0
