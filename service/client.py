"""Scanner-side client of dnirecon.v1: streams slices, collects images. Imports neither torch nor training."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from dnirecon.errors import ConfigError, DataError
from dnirecon.files import replaced_on_success, write_png
from dnirecon.v1 import recon_pb2, recon_pb2_grpc
from dnirecon import wire

log = logging.getLogger(__name__)


def _read(path_or_pem: str | os.PathLike | bytes | None) -> bytes | None:
    """PEM bytes as given, else the file's bytes (ConfigError naming the file if unreadable)."""
    if not path_or_pem or isinstance(path_or_pem, bytes):
        return path_or_pem or None
    try:
        return Path(path_or_pem).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path_or_pem}: cannot read ({exc.strerror})") from None


class ReconClient:
    """A channel to one server. token adds 'authorization: Bearer <token>'; root_cert enables TLS,
    client_cert/client_key (both, and only with root_cert) add the client side of mutual TLS.
    The certificates are file paths or PEM bytes. keepalive_s: ping the server after this long without
    traffic and fail the calls (UNAVAILABLE) when no answer comes within keepalive_timeout_s; 0: no pings."""

    def __init__(self, target: str, *, token: str | None = None, root_cert: str | os.PathLike | bytes | None = None,
                 client_cert: str | os.PathLike | bytes | None = None, client_key: str | os.PathLike | bytes | None = None,
                 server_name: str | None = None, keepalive_s: float = wire.CLIENT_KEEPALIVE_S,
                 keepalive_timeout_s: float = wire.CLIENT_KEEPALIVE_TIMEOUT_S):
        if (client_cert or client_key) and not root_cert:
            raise ConfigError("--cert-file / --key-file (client_cert / client_key) need --ca-file (root_cert): "
                              "without it the channel would not use TLS at all")
        if bool(client_cert) != bool(client_key):
            raise ConfigError("--cert-file and --key-file (client_cert, client_key) must be given together")
        if not (keepalive_s >= 0 and keepalive_timeout_s > 0):  # also refuses NaN
            raise ConfigError(f"--keepalive-seconds (keepalive_s) must be >= 0 (0: no pings) and keepalive_timeout_s > 0, "
                              f"got {keepalive_s!r} and {keepalive_timeout_s!r}")
        options = list(wire.CHANNEL_OPTIONS) + wire.client_keepalive_options(keepalive_s, keepalive_timeout_s)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert:
            creds = grpc.ssl_channel_credentials(_read(root_cert), _read(client_key), _read(client_cert))
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            if token:
                log.warning("sending the bearer token to %s over an insecure channel: give --ca-file to use TLS", target)
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = recon_pb2_grpc.ReconstructionStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "ReconClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def stream(self, slices: Iterable[tuple[int, np.ndarray, np.ndarray]], recon_size: tuple[int, int], *,
               alpha: float | None = None, model: str = "", request_id: str | None = None,
               timeout: float | None = None, chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES) -> Iterator[recon_pb2.SliceResult]:
        """Streams (index, kspace (C,H,W) complex64, mask (W,)) slices; yields results as they come back.

        An exception raised while producing the requests (reading the next slice, packing it) is raised
        from here as it is; gRPC alone would report it as "UNKNOWN: Exception iterating requests!"."""
        wire.check_chunk_bytes(chunk_bytes)  # here, not first inside the request iterator gRPC consumes
        rid = request_id or uuid.uuid4().hex
        failed: list[BaseException] = []

        def requests():
            try:
                for index, kspace, mask in slices:
                    yield from wire.slice_messages(index, kspace, mask, recon_size, alpha=alpha, model=model,
                                                   request_id=rid, chunk_bytes=chunk_bytes)
            except Exception as exc:
                failed.append(exc)
                raise

        call = self.stub.ReconstructStream(requests(), timeout=timeout, metadata=self.metadata)

        def results():
            try:
                yield from call
            except grpc.RpcError:
                if failed:
                    raise failed[0] from None
                raise
            finally:
                call.cancel()  # a no-op once the call has ended; frees it when the caller stops early

        return results()

    def reconstruct_one(self, index: int, kspace: np.ndarray, mask: np.ndarray, recon_size: tuple[int, int], *,
                        alpha: float | None = None, model: str = "", request_id: str | None = None,
                        timeout: float | None = None) -> recon_pb2.SliceResult:
        """The unary RPC: the packed lines must fit in one 4,000,000-byte message."""
        header = wire.make_header(index, kspace.shape, mask, recon_size, alpha=alpha, model=model,
                                  request_id=request_id or uuid.uuid4().hex)
        data = wire.pack_acquired(kspace, mask)
        return self.stub.Reconstruct(recon_pb2.SliceRequest(header=header, data=data, crc32=wire.crc32(data)),
                                     timeout=timeout, metadata=self.metadata)

    def list_models(self, timeout: float | None = None) -> recon_pb2.ListModelsResponse:
        return self.stub.ListModels(recon_pb2.ListModelsRequest(), timeout=timeout, metadata=self.metadata)

    def server_info(self, timeout: float | None = None) -> recon_pb2.ServerInfo:
        return self.stub.GetServerInfo(recon_pb2.ServerInfoRequest(), timeout=timeout, metadata=self.metadata)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


@dataclass
class VolumeResult:
    images: np.ndarray  # (slices, h, w) float32
    dc_residual: np.ndarray  # (slices,)
    errors: dict[int, str] = field(default_factory=dict)
    alpha: float | None = None
    model: str = ""
    bytes_sent: int = 0
    sampling: str = ""  # what was done with the file's k-space (SamplingPlan.text)


DEFAULT_ACCEL = 4  # what a fully sampled file is undersampled to when no --accel is given


@dataclass(frozen=True)
class SamplingPlan:
    """The mask a volume is sent with, and why: `text` says it to the user."""

    mask: np.ndarray  # (W,) float32, 1 = column sent
    fully_sampled: bool  # the file held every column inside its encoding limits
    text: str


def plan_sampling(kspace0: np.ndarray, padding: tuple[int, int], accel: int | None, name: str,
                  re_undersample: bool = False) -> SamplingPlan:
    """The mask of a volume from its first slice. Fully sampled (every column inside the header's encoding
    limits acquired): fastMRI's deterministic validation mask for accel (default 4), seeded by the file
    name. Already undersampled: its acquired columns; an accel is then a ConfigError naming the file, unless
    re_undersample keeps only the acquired columns that the accel mask also holds."""
    from dnirecon.subsample import mask_for

    if re_undersample and accel is None:
        raise ConfigError(f"{name}: --re-undersample needs --accel, the acceleration to re-undersample to")
    acquired = (np.abs(kspace0) > 0).any(axis=(0, 1))
    left, right = padding
    width = acquired.size
    inside = np.zeros_like(acquired)
    inside[left:right] = True

    def accel_mask(r: int) -> np.ndarray:
        return np.asarray(mask_for(r, seed=name, width=width, padding=(left, right)), np.float32).reshape(-1)

    if acquired[inside].all():
        r = accel or DEFAULT_ACCEL
        mask = accel_mask(r)
        return SamplingPlan(mask, True, f"{name}: fully sampled ({right - left} columns inside the encoding limits); "
                                        f"sending fastMRI's {r}x validation mask for this file: {int(mask.sum())} of {width} columns")
    n_acq, n_in = int(acquired[inside].sum()), int(inside.sum())
    held = f"{n_acq} of the {n_in} columns inside the encoding limits acquired, about {n_in / max(n_acq, 1):.1f}x"
    if accel is None:
        return SamplingPlan(acquired.astype(np.float32), False,
                            f"{name}: already undersampled ({held}); sending its acquired columns as the mask")
    if not re_undersample:
        raise ConfigError(f"{name}: --accel {accel} cannot apply: the k-space is already undersampled ({held}). "
                          f"Leave out --accel to reconstruct the columns it holds, or add --re-undersample to keep only "
                          f"those that the {accel}x mask also holds")
    mask = (acquired & (accel_mask(accel) > 0)).astype(np.float32)
    if not mask.any():
        raise ConfigError(f"{name}: --re-undersample --accel {accel}: no acquired column is in the {accel}x mask")
    return SamplingPlan(mask, False, f"{name}: already undersampled ({held}); re-undersampled with fastMRI's {accel}x "
                                     f"mask: sending {int(mask.sum())} of {width} columns")


class VolumeCollector:
    """Places each result at its slice index over one or more streams. A slice answered twice in one stream,
    or one that was not asked for, is a DataError; a per-slice UNAVAILABLE (a draining server) stays open
    for the next stream, any other per-slice error is final."""

    def __init__(self, indices: list[int], recon_size: tuple[int, int], progress=None):
        self.pos = {i: k for k, i in enumerate(indices)}
        self.out = VolumeResult(np.zeros((len(indices), *recon_size), np.float32), np.full(len(indices), np.nan, np.float32))
        self.final: set[int] = set()
        self.progress = progress

    def open(self) -> list[int]:
        """Slices without a final answer, in order: what the next stream sends."""
        return [i for i in self.pos if i not in self.final]

    def add_stream(self, results: Iterable[recon_pb2.SliceResult], asked: list[int]) -> None:
        asked_set, seen = set(asked), set()
        for r in results:
            if r.slice_index not in asked_set or r.slice_index in seen:
                raise DataError(f"server answered slice {r.slice_index} {'twice' if r.slice_index in seen else 'which was not sent'}")
            seen.add(r.slice_index)
            if r.HasField("error"):
                self.out.errors[r.slice_index] = f"{r.error.code_name}: {r.error.reason}"
                if r.error.code_name == grpc.StatusCode.UNAVAILABLE.name:
                    continue  # e.g. "server shutting down": another stream may get it
            else:
                self.out.errors.pop(r.slice_index, None)
                self.out.images[self.pos[r.slice_index]] = wire.image_from_result(r)
                self.out.dc_residual[self.pos[r.slice_index]] = r.dc_residual
                self.out.alpha, self.out.model = r.alpha, f"{r.model_name}/{r.model_version}"
            self.final.add(r.slice_index)
            if self.progress is not None:
                self.progress.update(1)

    def answered(self) -> int:
        """Slices with an image."""
        return len(self.final - set(self.out.errors))

    def result(self) -> VolumeResult:
        missing = [i for i in self.open() if i not in self.out.errors]
        if missing:
            raise DataError(f"server never answered slices {missing}")
        return self.out


RESUME_BACKOFF_S = 1.0


def reconstruct_file(client: ReconClient, path: str | os.PathLike, *, accel: int | None = None, alpha: float | None = None,
                     model: str = "", timeout: float | None = None, progress: bool = False,
                     resumes: int = 2, re_undersample: bool = False,
                     on_plan: Callable[[SamplingPlan], None] | None = None) -> VolumeResult:
    """Streams every slice of a fastMRI-layout file with the mask plan_sampling gives (accel and
    re_undersample as it takes them; on_plan hears the plan before the first slice is sent).

    A stream that ends UNAVAILABLE (the server drained in a rolling update, a connection lost) and slices
    answered UNAVAILABLE are sent again on a new stream, up to `resumes` times (1 s, 2 s, ... apart);
    slices already answered are not. Out of resumes, the slices answered are returned and the rest are
    UNAVAILABLE in `errors`; with none answered, the RpcError is raised. The new stream asks for the model version that answered the first
    slices (NAME/VERSION), so one volume never mixes versions: a server now serving another refuses them
    (NOT_FOUND). `timeout` is the deadline of each stream."""
    from dnirecon.fastmri_io import FastMRIVolume

    if not (isinstance(resumes, int) and resumes >= 0):
        raise ConfigError(f"--resumes must be an integer >= 0, got {resumes!r}")
    path = Path(path)
    with FastMRIVolume(path) as vol:
        hdr = vol.header
        n = vol.num_slices
        recon_size = tuple(hdr.recon_size)
        plan = plan_sampling(vol.kspace(0), (hdr.padding_left, hdr.padding_right), accel, path.name, re_undersample)
        mask = plan.mask
        log.info("%s slices: %d", plan.text, n)
        if on_plan is not None:
            on_plan(plan)
        sent = [0]

        def slices(indices: list[int]):
            for i in indices:
                try:
                    k = vol.kspace(i)
                except (OSError, ValueError, KeyError) as exc:  # h5py's errors for a damaged dataset
                    raise DataError(f"{path}: slice {i} of 'kspace' cannot be read ({exc})") from None
                sent[0] += int(k.shape[0] * k.shape[1] * mask.sum() * 8)
                yield i, k, mask

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, unit="slice", desc=path.name)
        volume = VolumeCollector(list(range(n)), recon_size, bar)
        why = ""  # what ended the previous attempt
        try:
            for attempt in range(resumes + 1):
                todo = volume.open()
                if not todo:
                    break
                if attempt:
                    log.warning("%s: %d slices not answered (%s); resuming on a new stream in %.0f s (%d of %d)",
                                path.name, len(todo), why, RESUME_BACKOFF_S * attempt, attempt, resumes)
                    time.sleep(RESUME_BACKOFF_S * attempt)
                ask = volume.out.model or model  # pinned to the version that answered the first slices
                try:
                    volume.add_stream(client.stream(slices(todo), recon_size, alpha=alpha, model=ask, timeout=timeout), todo)
                    why = "answered UNAVAILABLE"
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or not (attempt < resumes or volume.answered()):
                        raise
                    why = f"stream ended UNAVAILABLE: {exc.details()}"
                    if attempt == resumes:  # out of resumes: the slices answered are kept, the rest fail
                        for i in volume.open():
                            volume.out.errors.setdefault(i, f"UNAVAILABLE: {exc.details()}")
        finally:
            if bar is not None:
                bar.close()
    result = volume.result()
    result.bytes_sent = sent[0]
    result.sampling = plan.text
    return result


def write_outputs(result: VolumeResult, source: Path, out_dir: Path) -> tuple[Path, list[Path]]:
    """HDF5 (written to a temporary file, then renamed: never half-written) and one PNG per slice."""
    import h5py

    target = out_dir / f"{source.stem}.recon.h5"
    with replaced_on_success(target) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("reconstruction", data=result.images)
            f.create_dataset("dc_residual", data=result.dc_residual)
            f.attrs["source"] = source.name
            f.attrs["model"] = result.model
            if result.alpha is not None:
                f.attrs["alpha"] = result.alpha
            f.attrs["failed_slices"] = np.array(sorted(result.errors), dtype=np.int64)
    png_dir = out_dir / source.stem
    png_dir.mkdir(exist_ok=True)
    return target, [write_png(img, png_dir / f"slice_{i:03d}.png") for i, img in enumerate(result.images)]
