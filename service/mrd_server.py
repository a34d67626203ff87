"""The MRD (ISMRMRD streaming) endpoint of `dnirecon serve`: a TCP listener and one session per connection.

A session: CONFIG_FILE or CONFIG_TEXT (the config name `dnirecon` or a served model name or alias,
and JSON parameters), HEADER (ISMRMRD XML), TEXT (JSON parameters, optional), ACQUISITIONs, CLOSE.
Each slice goes to the engine through the same Batcher as gRPC slices; one MRD image per slice comes
back, then CLOSE. A broken session gets an ERR text and CLOSE and touches no other session. Logs hold
session ids and counts, never the header's content.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import queue
import socket
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dnirecon.fastmri_io import center_crop
from service.engine import Cancelled, Job, QueueFull, ShuttingDown
from service.mrd_protocol import (Disconnected, MessageId, ProtocolError, Reader, close_message, image_message,
                                  text_message)
from service.mrd_slices import Encoding, Provenance, SessionError, Slice, SliceAssembler, build_image, parse_encoding, safe

log = logging.getLogger(__name__)

CONFIG_NAME = "dnirecon"
MAX_TEXT_BYTES = 64 * 1024  # config text and TEXT messages (OpenRecon's UI parameters are a few kB)
MAX_HEADER_BYTES = 4 * 1024 * 1024  # ISMRMRD XML header (a scanner's is a few hundred kB)
MAX_WAVEFORM_BYTES = 1024 * 1024
IDLE_SECONDS = 120.0  # a session silent this long is closed
MAX_SESSIONS = 32
SUBMIT_TIMEOUT_S = 5.0
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
        self.acquisitions = 0
        self.images = 0
        self.errors = 0
        self._pending = 0  # slices handed to compute whose image is not sent yet
        self._count_lock = threading.Lock()
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
        self.conn.settimeout(self.server.idle_seconds)
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
            self.send_error(f"no message for {self.server.idle_seconds:g} s, closing")
        except OSError as exc:
            outcome = f"connection error {type(exc).__name__}"
            self._cancelled.set()
        except Exception:  # a bug: this session ends, the server goes on
            outcome = "server error"
            log.exception("mrd session %s: failed", self.id)
            self.send_error("server error")
        finally:
            self._out.put(None)
            self._writer.join()
            if not self._cancelled.is_set():
                self._try_close()
            _close_gently(self.conn)
            log.info("mrd session %s: %s; %d acquisitions, %d images, %d errors",
                     self.id, outcome, self.acquisitions, self.images, self.errors)

    def _next_id(self) -> int:
        """The next message id; a quiet peer waiting for images in compute is not idle."""
        while True:
            try:
                return self.reader.message_id()
            except socket.timeout:
                if self._pending == 0:
                    raise

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
        self.assembler = SliceAssembler(self.enc, self.server.max_slice_bytes)
        self._selection()  # a wrong alpha or model is answered now, not after the first slice's readouts

    def _selection(self):
        served = self.served
        if self.params.model and self.params.model not in known_names(served):
            raise SessionError(f"model {safe(self.params.model)} is not served; known: {shown(known_names(served))}")
        try:
            return served.models.select(self.params.alpha)
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
        _traj, data = self.reader.acquisition_payload(head)
        self.acquisitions += 1
        if not imaging:
            self.assembler.ignored += 1
            return
        for s in self.assembler.add(n, head, data, time.perf_counter()):
            self._submit(s)

    def _flush(self) -> None:
        if self.assembler is not None:
            for s in self.assembler.flush():
                self._submit(s)

    def _submit(self, s: Slice) -> None:
        selection = self._selection()
        while not self._inflight.acquire(timeout=0.25):  # the writer frees a slot per image sent
            if not self._writer.is_alive():
                raise SessionError("image writer stopped")
        job = Job(selection, s.kspace_ri(), s.mask, is_cancelled=self._cancelled.is_set)
        try:
            fut = self.server.batcher.submit(job, timeout=SUBMIT_TIMEOUT_S)
        except (QueueFull, ShuttingDown) as exc:
            self._inflight.release()
            raise SessionError(f"slice {s.key.slice}: {exc}") from None
        with self._count_lock:
            self._pending += 1
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
                with self._count_lock:
                    self._pending -= 1
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
        prov = Provenance(b.name, str(b.version), item.alpha, float(r.dc_residual),
                          {"DnireconServerMs": f"{server_ms:.3f}", "DnireconComputeMs": f"{1e3 * r.compute_s:.3f}"})
        head, attributes, pixels = build_image(s, image, self.enc, prov, self.images, series=self.params.series,
                                               datatype=self.params.datatype)
        self.send(image_message(head, attributes, pixels))
        m.latency.observe(time.perf_counter() - s.t_last)
        m.slices.labels(outcome="ok").inc()


class MrdServer:
    """Accepts MRD connections on its own thread; each session runs on its own thread."""

    def __init__(self, host: str, port: int, *, holder, batcher, metrics, max_slice_bytes: int, inflight: int,
                 draining: Callable[[], bool], on_failure: Callable[[], None] = lambda: None,
                 idle_seconds: float = IDLE_SECONDS, max_sessions: int = MAX_SESSIONS):
        self.holder, self.batcher, self.metrics = holder, batcher, metrics
        self.on_failure = on_failure  # the listener stopped without a drain: health goes NOT_SERVING
        self.max_slice_bytes, self.inflight, self.draining = max_slice_bytes, inflight, draining
        self.idle_seconds, self.max_sessions = idle_seconds, max_sessions
        self.sock = _listen(host, port)
        self.port = self.sock.getsockname()[1]
        self._sessions: set[threading.Thread] = set()
        self._lock = threading.Lock()
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
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sessions = {t for t in self._sessions if t.is_alive()}
                full = len(self._sessions) >= self.max_sessions
                if not full:
                    t = threading.Thread(target=Session(conn, self).run, name="mrd-session", daemon=True)
                    self._sessions.add(t)
            if full:
                threading.Thread(target=_refuse, args=(conn, f"ERR {self.max_sessions} MRD sessions open, try again later"),
                                 daemon=True).start()
                continue
            t.start()

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
