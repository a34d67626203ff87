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

from dnirecon.errors import ConfigError, ModelError
from dnirecon.fastmri_io import center_crop
from dnirecon.v1 import recon_pb2, recon_pb2_grpc
from dnirecon import wire
from service.allocator import configure_malloc
from service.config import HEALTH_SERVICE_NAMES, Settings, parse_bearer_token
from service.limits import MAX_REQUEST_ID_CHARS, BudgetExceeded, ByteBudget, Reservation, Slots
from service.logsafe import escape
from service.engine import Batcher, Cancelled, Job, ModelSet, QueueFull, Selection, ShuttingDown, WarmupStopped
from service.model_store import BakedSet, MlflowStore, parse_model_uri, read_baked_set
from service.telemetry import Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = recon_pb2.DESCRIPTOR.services_by_name["Reconstruction"].full_name
SERVER_VERSION = "0.1.0"
Code = grpc.StatusCode
POLL_S = 0.25  # how often a blocked wait checks that its call is still alive
STARTUP_JOIN_S = 2.0  # after a drain, how long a start-up still in progress gets to notice it
# The server reads messages up to 4x the protocol's 4 MiB, so that one over the protocol's limit is answered
# per slice (its chunk is over max_chunk_bytes) after the slices before it; gRPC ends a stream whose message
# is larger than this at once, without the results still to come.
SERVER_MAX_RECEIVE_BYTES = 4 * wire.MAX_MESSAGE_BYTES
SERVER_MESSAGE_OPTIONS = [("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
                          ("grpc.max_receive_message_length", SERVER_MAX_RECEIVE_BYTES)]


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


def load_served(baked: BakedSet, settings: Settings, should_stop: Callable[[], bool] | None = None,
                timings: dict[str, float] | None = None) -> Served:
    """Builds the sessions of a baked set and warms them; raises ModelError if either fails, and
    WarmupStopped once should_stop() is true between two warm-up runs. timings, if given, gets the
    seconds of "load" (sessions built) and "warmup"."""
    timings = {} if timings is None else timings
    t0 = time.monotonic()
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
    t1 = time.monotonic()
    timings["load"] = t1 - t0
    models.warmup(list(settings.warmup_shapes) or [DEFAULT_WARMUP_SHAPE], max_batch=settings.max_batch, should_stop=should_stop)
    timings["warmup"] = time.monotonic() - t1
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


class _OpenSlice:
    """The slice whose chunks are arriving on a stream: what its header declared and what it holds."""

    def __init__(self, index: int, request_id: str):
        self.index, self.rid = index, request_id
        self.seq = 0
        self.parsed: ParsedHeader | None = None
        self.scatter: wire.LineScatter | None = None
        self.reservation: Reservation | None = None
        self.nbytes = 0
        self.failed = False  # answered with an error: its remaining chunks are read and dropped
        self.touched = time.monotonic()  # its last message, for slice_idle_seconds

    def drop(self) -> None:
        """Fails the slice and frees its matrix and its share of the memory budget."""
        self.failed = True
        self.scatter = None
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None


class _StreamState:
    """What a stream's reader thread and its response generator share, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: _OpenSlice | None = None
        self.outstanding = 0  # slices handed to compute whose result is not yet sent
        self.closed = False  # the stream is ending (idle): the reader hands nothing more to compute


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
        self.slots = Slots(settings.max_streams, on_change=metrics.calls_open.set)
        self.budget = ByteBudget(settings.slice_memory_bytes, on_change=metrics.slice_memory_reserved.set)
        metrics.slice_memory_budget.set(settings.slice_memory_bytes)

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

    def _take_slot(self, context) -> None:
        """One of max_streams reconstruction calls, or RESOURCE_EXHAUSTED at once."""
        if not self.slots.take():
            self._abort(context, Code.RESOURCE_EXHAUSTED,
                        f"{self.slots.limit} reconstruction calls already open on this server (max_streams); "
                        "retry later or on another replica")

    def reserve(self, parsed: ParsedHeader) -> Reservation:
        """The slice's zero-filled matrix out of the memory budget shared by all streams, or a SliceFault."""
        h = parsed.header
        nbytes = h.coils * h.readout * h.phase * wire.COMPLEX64_BYTES
        try:
            return self.budget.reserve(nbytes)
        except BudgetExceeded:
            raise SliceFault(Code.RESOURCE_EXHAUSTED,
                             f"slice of {nbytes} bytes zero-filled does not fit the memory for slices being assembled: "
                             f"{self.budget.total - self.budget.used} of slice_memory_bytes={self.budget.total} left; "
                             "send it again once other slices are answered") from None

    def _abort(self, context, code: grpc.StatusCode, reason: str) -> None:
        self.metrics.errors.labels(code=code.name).inc()
        context.abort(code, reason)

    def parse_header(self, h: recon_pb2.SliceHeader, served: Served | None) -> ParsedHeader:
        """Validates one slice's header against served, the set its call started with; SliceFault
        names what is wrong."""
        bad = Code.INVALID_ARGUMENT
        if len(h.request_id) > MAX_REQUEST_ID_CHARS:
            raise SliceFault(bad, f"request_id has {len(h.request_id)} characters, at most {MAX_REQUEST_ID_CHARS}")
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
            raise SliceFault(Code.NOT_FOUND, f"model '{escape(h.model, 64)}' is not served (serving {b.name} version {b.version})")
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
        log.info("request %s slice %d: %s %s", escape(request_id), index, code.name, escape(reason, 1024))
        return recon_pb2.SliceResult(
            slice_index=index, request_id=request_id if len(request_id) <= MAX_REQUEST_ID_CHARS else "",
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
            log.error("request %s slice %d: compute failed: %s", escape(h.request_id), h.slice_index, type(exc).__name__)
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
            log.error("request %s slice %d: result failed: %s: %s", escape(h.request_id), h.slice_index, type(exc).__name__, exc)
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
        self._take_slot(context)
        self.metrics.streams_active.inc()
        try:
            served = self.holder.get()  # every slice of this stream uses this set, even if another is swapped in
            out: queue.Queue = queue.Queue()
            cancelled = threading.Event()
            context.add_callback(cancelled.set)
            state = _StreamState()
            reader = threading.Thread(
                target=self._read_stream, args=(request_iterator, context, out, cancelled, served, state),
                name="stream-reader", daemon=True
            )
            reader.start()
            ending: StreamFault | None = None  # set when an idle slice ends the stream: sent once in-flight results are out
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
                    if ending is None:
                        expired = self._expire_idle(state)
                        if expired is not None:
                            ending, result = expired
                            if result is not None:
                                yield result
                    if ending is not None and state.outstanding == 0:
                        self._abort(context, ending.code, ending.reason)
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
                    with state.lock:
                        state.outstanding -= 1
                    continue
                yield item
        finally:
            self.metrics.streams_active.dec()
            self.slots.give()

    def _expire_idle(self, state: "_StreamState") -> tuple[StreamFault, recon_pb2.SliceResult | None] | None:
        """The open slice of a stream silent for slice_idle_seconds: its memory freed, its error result (None if
        the slice was already answered with an error) and the status that then ends the stream."""
        idle = self.settings.slice_idle_seconds
        with state.lock:
            o = state.open
            if o is None or time.monotonic() - o.touched < idle:
                return None
            state.closed = True  # the reader submits nothing more
            answered = o.failed
            o.drop()
        reason = f"no message for slice {o.index} in {idle:g} s (slice_idle_seconds)"
        log.info("request %s slice %d: idle for %g s; stream ended, %d bytes of slice memory freed",
                 escape(o.rid), o.index, idle, o.nbytes)
        result = None if answered else self.error_result(
            o.index, o.rid, Code.DEADLINE_EXCEEDED, f"{reason}; its memory is freed and the stream ends")
        return StreamFault(Code.DEADLINE_EXCEEDED, reason), result

    def _read_stream(self, request_iterator, context, out: queue.Queue, cancelled: threading.Event, served: Served | None,
                     state: "_StreamState") -> None:
        inflight = threading.Semaphore(self.settings.stream_inflight)
        seen: set[int] = set()

        def done(pending: Pending) -> None:
            out.put(pending)  # its slot is released by the response generator, after the result is sent

        try:
            for msg in request_iterator:
                if state.closed:  # an idle slice ended the stream
                    return
                kind = msg.WhichOneof("item")
                if kind == "header":
                    h = msg.header
                    if state.open is not None:
                        raise StreamFault(Code.INVALID_ARGUMENT, f"header of slice {h.slice_index} while slice {state.open.index} still open (no last chunk)")
                    slice_ = _OpenSlice(h.slice_index, h.request_id)
                    try:
                        if h.slice_index in seen:
                            raise SliceFault(Code.ALREADY_EXISTS, f"slice index {h.slice_index} already sent on this stream")
                        slice_.parsed = self.parse_header(h, served)
                        slice_.reservation = self.reserve(slice_.parsed)
                        slice_.nbytes = slice_.reservation.nbytes
                    except SliceFault as fault:
                        slice_.failed = True
                        out.put(self.error_result(h.slice_index, h.request_id, fault.code, fault.reason))
                    seen.add(h.slice_index)
                    with state.lock:
                        state.open = slice_
                elif kind == "chunk":
                    c = msg.chunk
                    t_chunk = time.perf_counter()  # the last chunk's own scatter counts in its slice's server time
                    slice_ = state.open
                    if slice_ is None:
                        raise StreamFault(Code.INVALID_ARGUMENT, f"chunk of slice {c.slice_index} without a header before it")
                    if c.slice_index != slice_.index or c.seq != slice_.seq:
                        raise StreamFault(
                            Code.INVALID_ARGUMENT,
                            f"chunk out of order: got slice {c.slice_index} seq {c.seq}, expected slice {slice_.index} seq {slice_.seq}",
                        )
                    slice_.seq += 1
                    complete = None
                    with state.lock:  # against _expire_idle freeing the slice meanwhile
                        slice_.touched = time.monotonic()
                        if not slice_.failed:
                            try:
                                self._take_chunk(slice_, c)
                            except SliceFault as fault:
                                slice_.drop()
                                out.put(self.error_result(c.slice_index, slice_.rid, fault.code, fault.reason))
                            else:
                                if c.last:
                                    complete = (slice_.parsed, slice_.scatter, slice_.reservation)
                                    slice_.scatter, slice_.reservation = None, None
                        if c.last:
                            state.open = None
                    if complete is not None:
                        self._hand_off(complete, t_chunk, context, cancelled, inflight, state, done, out)
                else:
                    raise StreamFault(Code.INVALID_ARGUMENT, "empty StreamRequest: expected a header or a chunk")
            if state.open is not None:
                raise StreamFault(Code.INVALID_ARGUMENT, f"stream ended inside slice {state.open.index} (no last chunk)")
        except StreamFault as fault:
            # the slices before the fault were good: their results go out before the stream's status
            self._wait_inflight(inflight, cancelled, context)
            out.put(fault)
            return
        except (grpc.RpcError, _CallEnded) as exc:  # the call ended under us (cancelled, deadline, idle, message too large)
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
        finally:
            with state.lock:  # a slice left open by a cancelled, broken or idle stream gives its memory back
                if state.open is not None:
                    state.open.drop()
        self._wait_inflight(inflight, cancelled, context)
        out.put(_End())

    def _hand_off(self, complete, t_last: float, context, cancelled: threading.Event, inflight: threading.Semaphore,
                  state: "_StreamState", done: Callable[[Pending], None], out: queue.Queue) -> None:
        """A complete slice to the batcher; its memory reservation is released once compute is done with it."""
        parsed, scatter, reservation = complete
        try:
            _acquire(inflight, cancelled, context)  # push back: stop reading while this stream has enough in compute
        except BaseException:
            reservation.release()
            raise
        with state.lock:
            if state.closed:
                inflight.release()
                reservation.release()
                return
            state.outstanding += 1
        try:
            fut = self.submit(parsed, scatter, context, cancelled)
        except BaseException as exc:
            inflight.release()
            reservation.release()
            with state.lock:
                state.outstanding -= 1
            if isinstance(exc, SliceFault):
                h = parsed.header
                out.put(self.error_result(h.slice_index, h.request_id, exc.code, exc.reason))
                return
            raise
        fut.add_done_callback(lambda _f: reservation.release())
        pending = Pending(parsed, t_last, fut, inflight.release)
        fut.add_done_callback(lambda _f, p=pending: done(p))

    def _wait_inflight(self, inflight: threading.Semaphore, cancelled: threading.Event, context) -> None:
        """Until every slice of this stream handed to compute has had its result sent (or the call ended)."""
        try:
            for _ in range(self.settings.stream_inflight):
                _acquire(inflight, cancelled, context)
        except _CallEnded:
            pass

    def _take_chunk(self, slice_: "_OpenSlice", c: recon_pb2.KspaceChunk) -> None:
        data = c.data  # upb copies a bytes field on every access (2.8 ms for 4 MB): read it once
        if len(data) > wire.MAX_CHUNK_BYTES:
            raise SliceFault(Code.RESOURCE_EXHAUSTED, f"chunk seq {c.seq} has {len(data)} bytes, at most {wire.MAX_CHUNK_BYTES}")
        if wire.crc32(data) != c.crc32:
            raise SliceFault(Code.DATA_LOSS, f"chunk seq {c.seq}: crc32 mismatch (zlib.crc32 of data)")
        if slice_.scatter is None:  # the zero-filled matrix, filled as the chunks arrive
            slice_.scatter = self.scatter_for(slice_.parsed)
        self.feed(slice_.parsed, slice_.scatter, data)

    @staticmethod
    def feed(parsed: ParsedHeader, scatter: wire.LineScatter, data: bytes) -> None:
        try:
            scatter.feed(data)
        except ValueError:
            raise SliceFault(Code.INVALID_ARGUMENT, f"more k-space bytes than the header declared ({parsed.header.payload_bytes})") from None

    def Reconstruct(self, request, context):
        self._admit(context, "Reconstruct")
        self._take_slot(context)
        try:
            return self._reconstruct(request, context)
        finally:
            self.slots.give()

    def _reconstruct(self, request, context):
        h = request.header
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        reservation = None
        try:
            data = request.data  # read once: upb copies a bytes field on every access
            if len(data) > wire.MAX_CHUNK_BYTES:
                raise SliceFault(Code.RESOURCE_EXHAUSTED, f"{len(data)} bytes in one message, at most {wire.MAX_CHUNK_BYTES}: use ReconstructStream")
            if wire.crc32(data) != request.crc32:
                raise SliceFault(Code.DATA_LOSS, "crc32 mismatch (zlib.crc32 of data)")
            parsed = self.parse_header(h, self.holder.get())
            reservation = self.reserve(parsed)
            t_last = time.perf_counter()
            scatter = self.scatter_for(parsed)
            self.feed(parsed, scatter, data)
            fut = self.submit(parsed, scatter, context, cancelled)
            del scatter  # the batcher holds the matrix now; the reservation is released when it is done
        except (SliceFault, StreamFault) as fault:
            if reservation is not None:
                reservation.release()
            self.error_result(h.slice_index, h.request_id, fault.code, fault.reason)
            context.abort(fault.code, fault.reason)
        fut.add_done_callback(lambda _f: reservation.release())
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


def load_initial(settings: Settings, wait: Callable[[float], bool] | None = None) -> tuple[BakedSet | None, MlflowStore | None, bool]:
    """(set, store, stale): the set to serve first. --model-dir if given; else the model URI from the registry;
    with the registry unreachable (no answer within registry_timeout_seconds), the newest verified version in
    the cache, stale. With neither, it retries every alias_poll_seconds until wait(seconds) returns True
    (a drain began), then gives (None, store, False)."""
    if settings.model_dir is not None:
        return read_baked_set(settings.model_dir, uri=str(settings.model_dir)), None, False
    store = MlflowStore(settings.tracking_uri, settings.cache_dir)
    wait = wait or (lambda seconds: time.sleep(seconds) or False)
    while True:
        try:
            return store.load(settings.model_uri, timeout=settings.registry_timeout_seconds), store, False
        except ModelError as exc:
            cached = store.newest_cached(settings.model_uri)
            if cached is not None:
                log.warning("STALE: %s cannot be served from the registry (%s); serving version %s from the cache %s "
                            "until the registry answers (metric dnirecon_model_stale 1)",
                            settings.model_uri, exc, cached.version, cached.directory)
                return cached, store, True
            log.error("NOT_SERVING: %s cannot be served from the registry (%s) and %s holds no verified version of it; "
                      "trying again in %g s (alias_poll_seconds)", settings.model_uri, exc,
                      store.cache_dir / parse_model_uri(settings.model_uri)[0], settings.alias_poll_seconds)
        if wait(settings.alias_poll_seconds):
            return None, store, False


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
            options=[*SERVER_MESSAGE_OPTIONS, ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
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
        self.mrd = self._bind_mrd()
        self.follower = None
        self.stale = False  # the set served came from the cache, the registry unreachable
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

    def _bind_mrd(self):
        """The MRD (ISMRMRD streaming) listener, sharing the holder, batcher, metrics and the servicer's limits
        (its call slots and slice memory budget); None when off."""
        s = self.settings
        if not s.mrd_port:
            return None
        from service.mrd_server import MrdServer

        try:
            return MrdServer(s.host, s.mrd_port, holder=self.holder, batcher=self.batcher, metrics=self.metrics,
                             max_slice_bytes=s.max_slice_bytes, inflight=s.stream_inflight,
                             slots=self.servicer.slots, budget=self.servicer.budget,
                             slice_idle_seconds=s.slice_idle_seconds,
                             keepalive=(s.keepalive_seconds, s.keepalive_timeout_seconds),
                             draining=self.servicer.draining.is_set,
                             on_failure=lambda: self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))
        except OSError as exc:
            self.server.stop(None)
            raise ConfigError(f"DNIRECON_MRD_PORT / --mrd-port (with DNIRECON_GRPC_HOST / --host): cannot bind "
                              f"{s.host}:{s.mrd_port} ({exc.strerror or exc}), expected a free port (0: no MRD endpoint)") from None

    def _set_health(self, status) -> None:
        for name in HEALTH_SERVICE_NAMES:
            self.health.set(name, status)

    def install(self, baked: BakedSet, should_stop: Callable[[], bool] | None = None, stale: bool = False) -> dict[str, float]:
        """Load and warm beside the current set, then swap; raises if the set is refused (the caller counts it).
        stale: the set came from the cache because the registry could not be reached. -> seconds of load and warmup."""
        timings: dict[str, float] = {}
        served = load_served(baked, self.settings, should_stop, timings)
        self.holder.swap(served)
        self.stale = stale
        self.metrics.model_stale.set(1 if stale else 0)
        self.metrics.model_loads.labels(outcome="ok").inc()
        m = served.models
        self.metrics.set_model(baked.name, baked.version, m.providers, m.fallback)
        log.info("serving %s version %s%s (alphas %s, continuous %s) on %s", baked.name, baked.version,
                 " (STALE: from the cache, the registry unreachable)" if stale else "",
                 m.alphas, m.continuous is not None, m.providers)
        return timings

    def confirmed(self, version: str) -> None:
        """The alias follower's on_confirmed: the registry answered; the set served is no longer stale once the
        alias names it."""
        served = self.holder.get()
        if served is not None and served.baked.version == version and self.stale:
            self.stale = False
            self.metrics.model_stale.set(0)
            log.info("registry reachable again: %s is at version %s, the one served; no longer stale",
                     self.settings.model_uri, version)

    def swapped(self, phases: dict[str, float]) -> None:
        """The alias follower's on_phases: the phases of the last alias move, as metrics."""
        self.metrics.model_swap_phase.clear()
        for phase, seconds in phases.items():
            self.metrics.model_swap_phase.labels(phase=phase).set(seconds)

    def refused(self, version: str, exc: Exception) -> None:
        """The alias follower's on_refused: one count per refused version, whether fetch or load refused it."""
        self.metrics.model_loads.labels(outcome="refused").inc()

    def follow(self, store: MlflowStore, version: str):
        """The (unstarted) alias follower: installs new versions, counts refused ones, clears the stale flag once
        the registry names the version served, and publishes the phases of each move."""
        from service.model_store import AliasFollower

        return AliasFollower(store, self.settings.model_uri, version, self.settings.alias_poll_seconds, self.install,
                             on_refused=self.refused, on_confirmed=self.confirmed, on_phases=self.swapped)

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
        if self.mrd is not None:
            self.mrd.start()  # sessions get "ERR no model loaded yet" until the model is warm
        if self._stopping("model download"):
            return
        baked, store, stale = load_initial(self.settings, self.shutdown.wait)
        if baked is None or self._stopping("model load and warm-up"):
            return
        try:
            self.install(baked, should_stop=self.shutdown.is_set, stale=stale)
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
                if not stale:
                    store.remember_served(self.settings.model_uri, baked.version)
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
        if self.mrd is not None:
            self.mrd.stop_accepting()
        done = self.server.stop(grace=grace)
        # fail the queue while the calls are still open, so their clients get an answer per slice
        if not done.wait(max(0.0, grace - min(1.0, grace / 2))):
            self.batcher.stop()
        done.wait()
        if self.mrd is not None:  # MRD sessions share the same grace
            self.mrd.wait(max(0.0, grace - min(1.0, grace / 2)))
        self.batcher.stop()
        if self.mrd is not None:
            self.mrd.wait(5.0)
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
            if self.mrd is not None:
                self.mrd.stop_accepting()
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
