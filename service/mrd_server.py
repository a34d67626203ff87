"""The MRD (ISMRMRD streaming) endpoint of `dnirecon serve`: a TCP listener and one session per connection.

A session: CONFIG_FILE or CONFIG_TEXT (the config name `dnirecon` or a served model name or alias,
and JSON parameters), HEADER (ISMRMRD XML), TEXT (JSON parameters, optional), ACQUISITIONs, CLOSE.
Noise readouts before the first image line prewhiten every slice of the session (dnirecon.noise).
Each slice goes to the engine through the same Batcher as gRPC slices; one MRD image per slice comes
back, then CLOSE. A broken session gets an ERR text and CLOSE and touches no other session. Logs hold
session ids, counts and escaped client strings (service.logsafe), never the header's content.

The limits are the gRPC servicer's own objects: a session holds one of its call Slots (max_streams) from
accept to close, each slice's matrix is reserved from its ByteBudget (slice_memory_bytes), and an open
slice with no message for slice_idle_seconds ends the session.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import queue
import select
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dnirecon.fastmri_io import center_crop
from service.engine import Cancelled, Job, QueueFull, ShuttingDown
from service.limits import ByteBudget, Slots
from service.logsafe import escape
from service.mrd_protocol import (Disconnected, MessageId, ProtocolError, Reader, close_message, image_message,
                                  text_message)
from dnirecon.noise import prewhiten
from service.mrd_slices import (NOISE_MEASUREMENT, Encoding, NoiseMeasurement, Provenance, Refused, SessionError, Slice,
                                SliceAssembler, build_image, has_flag, parse_encoding, safe)

log = logging.getLogger(__name__)

CONFIG_NAME = "dnirecon"
MAX_TEXT_BYTES = 64 * 1024  # config text and TEXT messages (OpenRecon's UI parameters are a few kB)
MAX_HEADER_BYTES = 4 * 1024 * 1024  # ISMRMRD XML header (a scanner's is a few hundred kB)
MAX_WAVEFORM_BYTES = 1024 * 1024
SUBMIT_TIMEOUT_S = 5.0
MAX_POLL_MS = 2**31 - 1  # poll(2) takes a C int of milliseconds
MAX_REFUSING = 16  # refusals being answered at once; beyond, a connection is closed without its ERR text
_ids = itertools.count(1)


@dataclass
class Params:
    """A session's parameters: from config text or a TEXT JSON object (OpenRecon's {"parameters": {...}})."""

    alpha: float | None = None
    model: str = ""
    datatype: str = "float32"
    series: int = 1

    def update(self, text: str, where: str) -> None:
        try:
            doc = json.loads(text)
        except ValueError:
            raise SessionError(f"{where} is not a JSON object of parameters (alpha, model, datatype, series)") from None
        if not isinstance(doc, dict):
            raise SessionError(f"{where} is JSON {type(doc).__name__}, expected an object of parameters")
        params = doc.get("parameters", doc)
        if not isinstance(params, dict):
            raise SessionError(f"{where}: 'parameters' is {type(params).__name__}, expected an object")
        if params.get("alpha") not in (None, ""):
            try:
                self.alpha = float(params["alpha"])
            except (TypeError, ValueError):
                raise SessionError(f"{where}: alpha is {safe(params['alpha'])}, expected a number in [0, 1]") from None
        for key in ("model", "config"):
            if params.get(key) not in (None, ""):
                self.model = str(params[key])
        if params.get("datatype") not in (None, ""):
            if params["datatype"] not in ("float32", "uint16"):
                raise SessionError(f"{where}: datatype is {safe(params['datatype'])}, expected float32 or uint16")
            self.datatype = params["datatype"]
        if params.get("series") not in (None, ""):
            try:
                self.series = int(params["series"])
            except (TypeError, ValueError):
                raise SessionError(f"{where}: series is {safe(params['series'])}, expected an integer") from None
            if not 0 <= self.series <= 65535:
                raise SessionError(f"{where}: series is {self.series}, expected 0..65535")


def known_names(served) -> set[str]:
    """Config names that select the served set: `dnirecon`, its name, URI, name/version and alias."""
    b = served.baked
    alias = b.uri.rsplit("@", 1)[1] if "@" in b.uri else None
    names = {CONFIG_NAME, b.name, b.uri, f"{b.name}/{b.version}"}
    return names | ({alias, f"{b.name}@{alias}"} if alias else set())


def shown(names: set[str]) -> str:
    """The names a client may use, without a --model-dir path (the server's file system is its own)."""
    return ", ".join(sorted(n for n in names if not n.startswith("/")))


@dataclass
class _Out:
    slice: Slice
    future: futures.Future
    served: object
    alpha: float


class Session:
    """One MRD connection, read in its own thread; a writer thread sends the images in slice order."""

    def __init__(self, conn: socket.socket, server: "MrdServer"):
        self.conn, self.server = conn, server
        self.id = f"mrd-{next(_ids)}"
        self.reader = Reader(conn)
        self.params = Params()
        self.config: str | None = None
        self.served = None
        self.enc: Encoding | None = None
        self.assembler: SliceAssembler | None = None
        self.noise: NoiseMeasurement | None = None
        self.acquisitions = 0
        self.images = 0
        self.errors = 0
        self._send_lock = threading.Lock()
        self._out: queue.Queue = queue.Queue()
        self._inflight = threading.Semaphore(server.inflight)
        self._cancelled = threading.Event()
        self._writer = threading.Thread(target=self._write_images, name=f"{self.id}-writer", daemon=True)

    # ---- sending -----------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.conn.sendall(data)

    def send_error(self, reason: str) -> None:
        self.errors += 1
        self.server.metrics.errors.labels(code="MRD_ERR").inc()
        log.info("mrd session %s: ERR %s", self.id, escape(reason, 1024))  # the reason quotes client strings
        try:
            self.send(text_message(f"ERR {reason}"))
        except OSError:
            pass

    def _try_close(self) -> None:
        try:
            self.send(close_message())
        except OSError:
            pass

    # ---- the session -------------------------------------------------------------------------------
    def run(self) -> None:
        self.conn.settimeout(self.server.slice_idle_seconds)  # a message, or an image sent, stalled this long
        self._writer.start()
        outcome = "closed"
        try:
            self._loop()
        except SessionError as exc:
            outcome = "error"
            self.send_error(str(exc))
        except ProtocolError as exc:
            outcome = "error"
            self.send_error(str(exc))
        except Disconnected as exc:
            outcome = "dropped mid-message" if exc.mid_message else "dropped"
            self._cancelled.set()
            if exc.mid_message:  # a peer that only half-closed still reads why
                self.send_error("truncated message: the connection ended inside it")
            self._try_close()
        except socket.timeout:
            outcome = "idle"
            self.send_error(self._idle_reason())
        except OSError as exc:
            outcome = f"connection error {type(exc).__name__}"
            self._cancelled.set()
        except Exception:  # a bug: this session ends, the server goes on
            outcome = "server error"
            log.exception("mrd session %s: failed", self.id)
            self.send_error("server error")
        finally:
            if self.assembler is not None:
                self.assembler.abandon()  # a slice left open gives its memory back
            if self.noise is not None:
                self.noise.release()
            self._out.put(None)
            self._writer.join()
            if not self._cancelled.is_set():
                self._try_close()
            _close_gently(self.conn)
            log.info("mrd session %s: %s; %d acquisitions, %d images, %d errors; %s",
                     self.id, outcome, self.acquisitions, self.images, self.errors, self._noise_outcome())

    def _noise_outcome(self) -> str:
        """The closing log line's account of prewhitening (numbers only, nothing a client wrote)."""
        nm = self.noise
        if nm is None or (nm.readouts == 0 and nm.late == 0):
            return "not prewhitened (no noise readouts)"
        if nm.readouts == 0:
            return f"not prewhitened ({nm.late} noise readouts after the first image line, not used)"
        if nm.result is not None:
            return f"prewhitened with {nm.readouts} noise readouts: {nm.result.summary}"
        return f"not prewhitened ({nm.readouts} noise readouts, no imaging readout after them)"

    def _idle_reason(self) -> str:
        idle = self.server.slice_idle_seconds
        key = self.assembler.open_key if self.assembler is not None else None
        if key is not None:
            return (f"no message for slice {key.slice} in {idle:g} s (slice_idle_seconds); its memory is freed "
                    "and the session ends")
        return f"no data for {idle:g} s inside a message (slice_idle_seconds); the session ends"

    def _next_id(self) -> int:
        """The next message id. Between slices a session may stay silent (as a gRPC stream between slices
        may); with a slice open, slice_idle_seconds of silence ends it (socket.timeout)."""
        poll = select.poll()
        poll.register(self.conn.fileno(), select.POLLIN | select.POLLPRI)
        while True:
            if poll.poll(min(math.ceil(1e3 * self.server.slice_idle_seconds), MAX_POLL_MS)):
                return self.reader.message_id()  # the connection's timeout applies from here on
            if self.assembler is not None and self.assembler.open_key is not None:
                raise socket.timeout("slice idle")

    def _loop(self) -> None:
        r = self.reader
        while True:
            mid = self._next_id()
            if mid == MessageId.CLOSE:
                self._flush()
                if self.served is not None and self.acquisitions == 0:
                    self.send(text_message("WRN no acquisitions received, no images"))
                return
            if mid == MessageId.CONFIG_FILE:
                self._configure(r.config_file(), None)
            elif mid == MessageId.CONFIG_TEXT:
                self._configure(None, r.text("CONFIG_TEXT", MAX_TEXT_BYTES))
            elif mid == MessageId.HEADER:
                self._header(r.text("HEADER", MAX_HEADER_BYTES))
            elif mid == MessageId.TEXT:
                text = r.text("TEXT", MAX_TEXT_BYTES)
                if text.lstrip().startswith("{"):
                    if self.acquisitions:
                        raise SessionError("TEXT parameters after the first ACQUISITION, expected them before the data")
                    self.params.update(text, "TEXT")
            elif mid == MessageId.ACQUISITION:
                self._acquisition()
            elif mid == MessageId.WAVEFORM:
                r.skip_waveform(MAX_WAVEFORM_BYTES)
            elif mid == MessageId.IMAGE:
                raise SessionError("IMAGE messages are not accepted: dnirecon reconstructs raw acquisitions")
            else:
                raise ProtocolError(f"unknown message id {mid}, expected one of "
                                    f"{', '.join(f'{m.value} {m.name}' for m in MessageId)}")

    def _configure(self, name: str | None, text: str | None) -> None:
        self._accept_config(name, text)
        p = self.params
        log.info("mrd session %s: config %s, alpha %s, datatype %s, series %d", self.id, safe(self.config, 128),
                 "default" if p.alpha is None else f"{p.alpha:g}", p.datatype, p.series)

    def _accept_config(self, name: str | None, text: str | None) -> None:
        if self.config is not None:
            raise SessionError("a second CONFIG message, expected one per session")
        if self.server.draining():
            raise SessionError("server is shutting down")
        served = self.server.holder.get()
        if served is None:
            raise SessionError("no model loaded yet")
        if text is not None:
            if text.lstrip().startswith("{"):
                self.params.update(text, "CONFIG_TEXT")
            else:
                raise SessionError("CONFIG_TEXT is not a JSON object of parameters (alpha, model, datatype, series)")
            name = self.params.model or CONFIG_NAME
        known = known_names(served)
        if name not in known:
            raise SessionError(f"unknown config {safe(name)}; known: {shown(known)}")
        self.config, self.served = name, served
        self.server.metrics.requests.labels(rpc="MrdSession").inc()

    def _header(self, xml: str) -> None:
        if self.config is None:
            raise SessionError("HEADER before a CONFIG_FILE or CONFIG_TEXT message")
        if self.enc is not None:
            raise SessionError("a second HEADER, expected one per session")
        self.enc = parse_encoding(xml)
        self.assembler = SliceAssembler(self.enc, self.server.max_slice_bytes, reserve=self.server.budget.reserve)
        self.noise = NoiseMeasurement(self.enc, self.server.max_slice_bytes, reserve=self.server.budget.reserve)
        self._selection()  # a wrong alpha or model is answered now, not after the first slice's readouts

    def _selection(self, mask: np.ndarray | None = None):
        """The graph for a slice with this (W,) mask; with no mask (at the header) only the model and alpha
        are checked, since a model with a set of cascades per acceleration picks its graph by the mask."""
        served = self.served
        if self.params.model and self.params.model not in known_names(served):
            raise SessionError(f"model {safe(self.params.model)} is not served; known: {shown(known_names(served))}")
        try:
            if mask is None:
                served.models.checked_alpha(self.params.alpha)
                return None
            return served.models.select(self.params.alpha, mask)
        except ValueError as exc:
            raise SessionError(f"unknown alpha: {exc}") from None

    def _acquisition(self) -> None:
        if self.assembler is None:
            raise SessionError("ACQUISITION before the HEADER")
        n = self.acquisitions
        head = self.reader.acquisition_header()
        imaging = self.assembler.check_header(n, head)
        if not imaging and head.number_of_samples * max(head.active_channels, 1) * 8 > self.server.max_slice_bytes:
            raise SessionError(f"acquisition {n}: {head.active_channels}x{head.number_of_samples} samples, too large")
        # noise readouts count until the first imaging readout fixes the whitening of the session
        noise = not imaging and has_flag(head, NOISE_MEASUREMENT) and self.assembler.readouts == 0 \
            and self.assembler.skipped == 0
        if noise:
            self.noise.check_header(n, head)
        _traj, data = self.reader.acquisition_payload(head)
        self.acquisitions += 1
        if noise:
            self.noise.add(n, head, data)
            return
        if not imaging:
            self.noise.late += has_flag(head, NOISE_MEASUREMENT)
            self.assembler.ignored += 1
            return
        if self.assembler.readouts == 0 and self.assembler.skipped == 0 and self.noise.result is None:
            self.noise.whitener_for(head)
        for s in self.assembler.add(n, head, data, time.perf_counter()):
            if isinstance(s, Refused):
                self._refused(s)
            else:
                self._submit(s)

    def _refused(self, r: Refused) -> None:
        """A slice the memory budget cannot hold: answered alone, the session goes on."""
        budget = self.server.budget
        self.server.metrics.slices.labels(outcome="error").inc()
        self.send_error(f"slice {r.key.slice}: {r.nbytes} bytes zero-filled do not fit the memory for slices being "
                        f"assembled ({r.detail}, slice_memory_bytes={budget.total}); its readouts are skipped and "
                        "the session goes on")

    def _flush(self) -> None:
        if self.assembler is not None:
            for s in self.assembler.flush():
                self._submit(s)

    def _submit(self, s: Slice) -> None:
        try:
            if self.noise is not None and self.noise.result is not None:
                prewhiten(s.kspace, self.noise.result.matrix, out=s.kspace)  # the slice's own matrix, in place
            selection = self._selection(s.mask)
            while not self._inflight.acquire(timeout=0.25):  # the writer frees a slot per image sent
                if not self._writer.is_alive():
                    raise SessionError("image writer stopped")
        except BaseException:
            s.release()
            raise
        job = Job(selection, s.kspace_ri(), s.mask, is_cancelled=self._cancelled.is_set)
        try:
            fut = self.server.batcher.submit(job, timeout=SUBMIT_TIMEOUT_S)
        except (QueueFull, ShuttingDown) as exc:
            self._inflight.release()
            s.release()
            raise SessionError(f"slice {s.key.slice}: {exc}") from None
        self._out.put(_Out(s, fut, self.served, selection.alpha))

    def _write_images(self) -> None:
        m = self.server.metrics
        while True:
            item = self._out.get()
            if item is None:
                return
            try:
                self._write_one(item, m)
            except OSError:
                self._cancelled.set()  # the peer is gone: the rest are dropped as they finish
            finally:
                item.slice.release()  # sent, failed or dropped: its matrix leaves the budget
                self._inflight.release()

    def _write_one(self, item: _Out, m) -> None:
        s = item.slice
        try:
            r = item.future.result()
        except (Cancelled, ShuttingDown) as exc:
            m.slices.labels(outcome="error").inc()
            if not self._cancelled.is_set():
                self.send_error(f"slice {s.key.slice}: {exc}")
            return
        except Exception as exc:  # an onnxruntime failure on this slice: the others go on
            m.slices.labels(outcome="error").inc()
            log.error("mrd session %s slice %d: compute failed: %s", self.id, s.key.slice, type(exc).__name__)
            self.send_error(f"slice {s.key.slice}: compute failed: {type(exc).__name__}")
            return
        if self._cancelled.is_set():
            return
        b = item.served.baked
        image = np.asarray(center_crop(r.image, self.enc.recon), np.float32)
        self.images += 1
        server_ms = 1e3 * (time.perf_counter() - s.t_last)  # last readout -> image built (sent right after)
        extra = {"DnireconServerMs": f"{server_ms:.3f}", "DnireconComputeMs": f"{1e3 * r.compute_s:.3f}"}
        if self.noise is not None and self.noise.result is not None:
            extra["DnireconPrewhitened"] = self.noise.result.channels  # the image is in units of the noise sd
        prov = Provenance(b.name, str(b.version), item.alpha, float(r.dc_residual), extra)
        head, attributes, pixels = build_image(s, image, self.enc, prov, self.images, series=self.params.series,
                                               datatype=self.params.datatype)
        self.send(image_message(head, attributes, pixels))
        m.latency.observe(time.perf_counter() - s.t_last)
        m.slices.labels(outcome="ok").inc()


class MrdServer:
    """Accepts MRD connections on its own thread; each session runs on its own thread.

    slots, budget: the limits the gRPC calls take (the servicer's); slice_idle_seconds: how long an open
    slice may wait for a message; keepalive: (idle seconds, timeout seconds) of TCP keepalive probes, so a
    peer whose network path died between slices gives its slot back."""

    def __init__(self, host: str, port: int, *, holder, batcher, metrics, max_slice_bytes: int, inflight: int,
                 slots: Slots, budget: ByteBudget, slice_idle_seconds: float, draining: Callable[[], bool],
                 on_failure: Callable[[], None] = lambda: None, keepalive: tuple[float, float] = (60.0, 20.0)):
        self.holder, self.batcher, self.metrics = holder, batcher, metrics
        self.on_failure = on_failure  # the listener stopped without a drain: health goes NOT_SERVING
        self.max_slice_bytes, self.inflight, self.draining = max_slice_bytes, inflight, draining
        self.slots, self.budget, self.slice_idle_seconds = slots, budget, slice_idle_seconds
        self.keepalive = keepalive
        self.sock = _listen(host, port)
        self.port = self.sock.getsockname()[1]
        self._sessions: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._refusing = threading.BoundedSemaphore(MAX_REFUSING)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="mrd-accept", daemon=True)

    def start(self) -> "MrdServer":
        self._thread.start()
        log.info("MRD listening on port %d", self.port)
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return  # drained
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    time.sleep(0.1)  # out of descriptors for a moment: the listener goes on
                    continue
                log.error("MRD listener stopped: %s; health NOT_SERVING", type(exc).__name__)
                self.on_failure()
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _keepalive(conn, *self.keepalive)
            except OSError:  # the peer already reset the connection
                conn.close()
                continue
            if not self.slots.take():
                self._refuse(conn, f"ERR {self.slots.limit} reconstruction calls and MRD sessions already open on this "
                                   "server (max_streams); try again later or on another replica")
                continue
            t = threading.Thread(target=self._session, args=(conn,), name="mrd-session", daemon=True)
            with self._lock:
                self._sessions = {s for s in self._sessions if s.is_alive()}
                self._sessions.add(t)
            try:
                t.start()
            except RuntimeError:  # no thread to be had: the slot goes back, the listener goes on
                self.slots.give()
                conn.close()

    def _session(self, conn: socket.socket) -> None:
        try:
            Session(conn, self).run()
        finally:
            self.slots.give()

    def _refuse(self, conn: socket.socket, text: str) -> None:
        """text and CLOSE on a thread of its own; with MAX_REFUSING such threads busy, a plain close."""
        self.metrics.errors.labels(code="MRD_ERR").inc()
        if not self._refusing.acquire(blocking=False):
            conn.close()
            return

        def refuse() -> None:
            try:
                _refuse(conn, text)
            finally:
                self._refusing.release()

        try:
            threading.Thread(target=refuse, name="mrd-refuse", daemon=True).start()
        except RuntimeError:
            self._refusing.release()
            conn.close()

    def stop_accepting(self) -> None:
        """Drain: new connections are refused; open sessions go on."""
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def wait(self, timeout: float) -> bool:
        """Until the open sessions end or timeout; True when none is left."""
        end = time.monotonic() + timeout
        with self._lock:
            sessions = list(self._sessions)
        for t in sessions:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in sessions)


LINGER_SECONDS, LINGER_BYTES = 2.0, 64 * 1024 * 1024


def _close_gently(conn: socket.socket) -> None:
    """FIN after what was sent, then discard what the peer still sends (bounded) before closing: closing
    with unread data would send a reset, and the peer's stack could drop our ERR and CLOSE unread."""
    try:
        conn.shutdown(socket.SHUT_WR)
        end, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        while left > 0 and (wait := end - time.monotonic()) > 0:
            conn.settimeout(wait)
            chunk = conn.recv(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass
    finally:
        conn.close()


def _keepalive(conn: socket.socket, idle_s: float, timeout_s: float) -> None:
    """TCP keepalive probes after idle_s of silence (0: the system's), the peer given up after about timeout_s
    without an answer: the MRD counterpart of the gRPC port's keepalive settings."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if not hasattr(socket, "TCP_KEEPIDLE"):  # not Linux: the system's keepalive timing
        return
    probes, most = 3, 32767  # Linux refuses an idle or interval over 32767 s
    if idle_s > 0:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, min(most, max(1, math.ceil(idle_s))))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, min(most, max(1, math.ceil(timeout_s / probes))))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, probes)


def _refuse(conn: socket.socket, text: str) -> None:
    try:
        conn.settimeout(5)
        conn.sendall(text_message(text) + close_message())
    except OSError:
        pass
    finally:
        _close_gently(conn)


def _listen(host: str, port: int) -> socket.socket:
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    wildcard = h in ("", "::", "0.0.0.0", "*")
    family = socket.AF_INET6 if (":" in h or (wildcard and socket.has_ipv6)) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and wildcard:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] takes IPv4 too, like gRPC's
        sock.bind(("::" if family == socket.AF_INET6 and wildcard else ("0.0.0.0" if wildcard else h), port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
