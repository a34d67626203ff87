"""onnxruntime execution of baked sets: sessions, alpha and cascade-set selection, warm-up and
micro-batching.

Knows onnxruntime and numpy; nothing of gRPC or MLflow.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from dnirecon.errors import ModelError
from dnirecon.routing import nearest_set, sampled_fraction

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
INPUTS = ("kspace", "mask")
OUTPUTS = ("image", "dc_residual")


def provider_list(providers: list[str], cudnn_conv_algo_search: str = "HEURISTIC", use_tf32: bool = False) -> list:
    """onnxruntime's providers argument, with the CUDA options from the settings. TF32 is off unless
    asked for: onnxruntime turns it on for FP32 MatMul and Conv on Ampere and later, ~1e-3 relative
    error, and the graph's Fourier transforms are matrix products."""
    out: list = []
    for p in providers:
        if p == CUDA:
            out.append((CUDA, {"cudnn_conv_algo_search": cudnn_conv_algo_search, "use_tf32": "1" if use_tf32 else "0"}))
        else:
            out.append(p)
    return out


class OnnxModel:
    """One ONNX reconstruction (contract: kspace (B,C,H,W,2), mask (B,W)[, alpha (1,)] -> image, dc_residual)."""

    def __init__(self, path: Path, providers: list[str], *, intra_op_threads: int = 0, cudnn_conv_algo_search: str = "HEURISTIC",
                 use_tf32: bool = False, spinning: bool = True, cpu_mem_arena: bool = True):
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = cpu_mem_arena
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        if not spinning:  # idle onnxruntime threads otherwise spin on cores the gRPC threads need
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.provider_options = provider_list(providers, cudnn_conv_algo_search, use_tf32)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid graphs
            raise ModelError(f"{self.path}: onnxruntime cannot load it: {exc}") from None
        self.requested = list(providers)
        # What the session really got: onnxruntime-gpu lists CUDA as available even without a GPU.
        self.providers = list(self.session.get_providers())
        names = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        if names[:2] != list(INPUTS) or not set(OUTPUTS) <= set(outs):
            raise ModelError(
                f"{self.path}: inputs {names} / outputs {outs}, expected inputs kspace, mask[, alpha] and outputs image, dc_residual"
            )
        self.has_alpha = "alpha" in names
        self.use_iobinding = CUDA in self.providers

    @property
    def fallback(self) -> bool:
        return any(p not in self.providers for p in self.requested if p != "TensorrtExecutionProvider")

    def run(self, kspace: np.ndarray, mask: np.ndarray, alpha: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """kspace (B,C,H,W,2) float32, mask (B,W) float32 -> image (B,H,W), dc_residual (B,)."""
        feeds = {"kspace": np.ascontiguousarray(kspace, np.float32), "mask": np.ascontiguousarray(mask, np.float32)}
        if self.has_alpha:
            feeds["alpha"] = np.array([0.0 if alpha is None else alpha], np.float32)
        if self.use_iobinding:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in OUTPUTS:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            image, dc = binding.copy_outputs_to_cpu()[:2]  # copies already
        else:
            # onnxruntime's CPU outputs are views of its memory arena (the array's base is a capsule that
            # keeps the arena block alive). The server holds a batch's images until their responses are
            # sent, while the next batch runs; the arena then plans around the held blocks, and over a few
            # hundred slices touches more and more of its region (RSS +12 MiB between slices 100 and 200
            # at 8x192x110, docs/benchmarks.md). Copying them (0.5 MB a slice) frees the block now.
            image, dc = (np.array(o, np.float32, copy=True) for o in self.session.run(list(OUTPUTS), feeds)[:2])
        return np.asarray(image, np.float32), np.asarray(dc, np.float32).reshape(-1)


@dataclass
class Selection:
    model: OnnxModel
    alpha: float  # the alpha used
    feed_alpha: float | None  # fed to a continuous model, None for a baked one


Graphs = tuple  # ((acceleration of the set of cascades or None, onnx file), ...), model_store.BakedSet's


class ModelSet:
    """The sessions of one baked set: for each baked alpha (and the continuous model, if any) one per set
    of cascades; a slice runs the set `dnirecon.routing.nearest_set` picks for its mask."""

    def __init__(
        self,
        name: str,
        version: str,
        baked: list[tuple[float, Graphs]],
        continuous: Graphs | None,
        providers: list[str],
        *,
        intra_op_threads: int = 0,
        cudnn_conv_algo_search: str = "HEURISTIC",
        use_tf32: bool = False,
        default_alpha: float | None = None,
        spinning: bool = True,
        cpu_mem_arena: bool = True,
    ):
        if not baked and continuous is None:
            raise ModelError(f"model set {name} version {version} has no ONNX file")
        self.name, self.version = name, version
        kw = dict(intra_op_threads=intra_op_threads, cudnn_conv_algo_search=cudnn_conv_algo_search, use_tf32=use_tf32,
                  spinning=spinning, cpu_mem_arena=cpu_mem_arena)
        accels = {tuple(a for a, _p in graphs) for _alpha, graphs in baked} | ({tuple(a for a, _p in continuous)} if continuous else set())
        if len(accels) != 1:
            raise ModelError(f"model set {name} version {version}: its graphs serve different sets of cascades {sorted(accels, key=str)}")
        self.accels = [a for a in accels.pop() if a is not None]

        def sessions(graphs: Graphs) -> list[OnnxModel]:
            return [OnnxModel(p, providers, **kw) for _a, p in graphs]

        self.baked = [(float(a), sessions(graphs)) for a, graphs in sorted(baked, key=lambda e: e[0])]
        self.continuous = sessions(continuous) if continuous else None
        if self.continuous is not None and not all(m.has_alpha for m in self.continuous):
            raise ModelError(f"{continuous[0][1]}: the continuous model has no 'alpha' input")
        self.default_alpha = _default_alpha(name, version, default_alpha, self.baked)
        self.requested = list(providers)
        self.providers: list[str] = []
        for m in self.models():
            self.providers += [p for p in m.providers if p not in self.providers]
        self.fallback = any(m.fallback for m in self.models())
        if self.fallback:
            log.error(
                "onnxruntime providers requested %s but sessions got %s: running on the fallback (no GPU?)",
                self.requested, self.providers,
            )
        else:
            log.info("onnxruntime providers in use: %s", self.providers)

    def models(self) -> list[OnnxModel]:
        return [m for _a, ms in self.baked for m in ms] + (list(self.continuous) if self.continuous else [])

    @property
    def alphas(self) -> list[float]:
        return [a for a, _m in self.baked]

    def cascade_set(self, mask: np.ndarray | None) -> int:
        """The set of cascades a slice with this (W,) mask runs (dnirecon.routing.nearest_set)."""
        if not self.accels:
            return 0
        if mask is None:
            raise ValueError(f"a mask is needed to choose among the sets of cascades for {self.accels}x")
        return int(nearest_set(sampled_fraction(mask), self.accels))

    def checked_alpha(self, alpha: float | None) -> float:
        """The alpha a request gets (the default for None); ValueError outside [0, 1]."""
        if alpha is None:
            alpha = self.default_alpha
        if not (0.0 <= alpha <= 1.0):  # also false for NaN
            raise ValueError(f"alpha {alpha} is outside [0, 1]")
        return alpha

    def select(self, alpha: float | None, mask: np.ndarray | None = None) -> Selection:
        """Nearest baked alpha, or exactly the requested one when the continuous model is served; the
        graph of the set of cascades that serves `mask` (W,) (any mask of a one-set model)."""
        alpha = self.checked_alpha(alpha)
        index = self.cascade_set(mask)
        if self.baked:
            best, models = min(self.baked, key=lambda am: abs(am[0] - alpha))
            if self.continuous is None or abs(best - alpha) < 1e-6:
                return Selection(models[index], best, None)
        return Selection(self.continuous[index], float(np.float32(alpha)), float(alpha))

    def warmup(self, shapes: list[tuple[int, int, int]], max_batch: int = 1,
               should_stop: Callable[[], bool] | None = None) -> None:
        """Runs every session (every alpha, every set of cascades) on each (coils, readout, phase) shape,
        at batch 1 and at max_batch; raises ModelError on failure (a graph with a fixed batch of 1 fails
        here, not on a batch), and WarmupStopped before the next run once should_stop() is true."""
        rng = np.random.default_rng(0)
        runs = [(a, m) for a, ms in self.baked for m in ms] + [(0.5, m) for m in (self.continuous or [])]
        for coils, h, w in shapes:
            for b in sorted({1, max(1, int(max_batch))}):
                kspace = (rng.standard_normal((b, coils, h, w, 2)) * 1e-3).astype(np.float32)
                mask = np.repeat(warmup_mask(w)[None], b, 0)
                kspace *= mask[:, None, None, :, None]
                for alpha, model in runs:
                    if should_stop is not None and should_stop():
                        raise WarmupStopped(f"warm-up of {self.name} version {self.version} stopped before {b}x{coils}x{h}x{w}")
                    t0 = time.perf_counter()
                    try:
                        image, dc = model.run(kspace, mask, alpha)
                    except Exception as exc:  # onnxruntime failures are reported as this set's failure
                        raise ModelError(f"{model.path}: warm-up on {b}x{coils}x{h}x{w} failed: {exc}") from None
                    if image.shape != (b, h, w) or dc.shape != (b,) or not np.isfinite(image).all():
                        raise ModelError(
                            f"{model.path}: warm-up on batch {b} of {coils}x{h}x{w} gave image {image.shape} "
                            f"(finite: {np.isfinite(image).all()}), dc_residual {dc.shape}; expected ({b}, {h}, {w}) finite and ({b},)"
                        )
                    log.info("warmed %s on %dx%dx%dx%d in %.1f ms", model.path.name, b, coils, h, w, 1e3 * (time.perf_counter() - t0))


def _default_alpha(name: str, version: str, value, baked: list) -> float:
    """The manifest's default_alpha checked (a number in [0, 1]), else the lowest baked alpha."""
    if value is None:
        return baked[0][0] if baked else 0.0
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = float("nan")
    if isinstance(value, bool) or not 0.0 <= alpha <= 1.0:  # also false for NaN
        raise ModelError(f"model set {name} version {version}: manifest default_alpha is {value!r}, expected a number in [0, 1]")
    return alpha


def warmup_mask(width: int) -> np.ndarray:
    """Every 4th column plus a centre block: a mask every reconstruction accepts."""
    mask = np.zeros(width, np.float32)
    mask[::4] = 1
    c, half = width // 2, max(2, width // 25)
    mask[c - half : c + half] = 1
    return mask


class QueueFull(Exception):
    pass


class WarmupStopped(Exception):
    """A warm-up was asked to stop (the server is shutting down): not a fault of the model."""


class ShuttingDown(Exception):
    """The batcher was stopped: the job was never computed."""


@dataclass
class Job:
    """One slice waiting for compute. kspace (C,H,W,2) float32, mask (W,) float32."""

    selection: Selection
    kspace: np.ndarray
    mask: np.ndarray
    deadline: float | None = None  # time.monotonic() by which the answer is useless
    is_cancelled: Callable[[], bool] = lambda: False
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return (id(self.selection.model), self.selection.feed_alpha, self.kspace.shape)


@dataclass
class JobResult:
    image: np.ndarray  # (H, W) full field of view
    dc_residual: float
    queue_s: float
    compute_s: float
    batch_size: int


class Cancelled(Exception):
    """The job's caller cancelled or its deadline passed before compute started."""


def _batched(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays stacked on a new batch axis; one array becomes a view (a 15-coil slice is 28 MB)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


class Batcher:
    """A bounded queue and a worker thread that runs jobs of the same model, alpha and shape together."""

    def __init__(self, max_batch: int = 4, max_queue: int = 64, wait_ms: float = 0.0, metrics=None):
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_ms / 1e3
        self.metrics = metrics
        self._q: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return len(self._q)

    def submit(self, job: Job, timeout: float | None = None) -> Future:
        """Queues job; waits up to timeout for room, then raises QueueFull (the caller pushes back).
        Raises ShuttingDown once the batcher is stopped."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while len(self._q) >= self.max_queue and not self._stopped:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFull(f"compute queue full ({self.max_queue} slices)")
                self._cv.wait(left)
            if self._stopped:
                raise ShuttingDown("server shutting down: no new compute")
            job.enqueued = time.perf_counter()
            self._q.append(job)
            self._gauge()
            self._cv.notify_all()
        return job.future

    def stop(self) -> None:
        """Stops the workers after their current batch; every queued job fails with ShuttingDown."""
        with self._cv:
            self._stopped = True
            queued = list(self._q)
            self._q.clear()
            self._gauge()
            self._cv.notify_all()
        _fail(queued, ShuttingDown("server shutting down before this slice was computed"))

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._q))

    def _take_matching(self, key: tuple, batch: list[Job]) -> None:
        for job in list(self._q):
            if len(batch) >= self.max_batch:
                return
            if job.key == key:
                self._q.remove(job)
                batch.append(job)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
                first = self._q.popleft()
                batch = [first]
                self._take_matching(first.key, batch)
                end = time.monotonic() + self.wait_s
                while len(batch) < self.max_batch and time.monotonic() < end:
                    self._cv.wait(end - time.monotonic())
                    self._take_matching(first.key, batch)
                self._gauge()
                self._cv.notify_all()  # room in the queue
            try:
                self._run(batch)
            except Exception as exc:  # a bad batch fails its slices, never the worker
                log.error("batch of %d failed: %s: %s", len(batch), type(exc).__name__, exc)
                _fail(batch, exc)

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if job.is_cancelled() or (job.deadline is not None and now > job.deadline):
                job.future.set_exception(Cancelled("cancelled or past its deadline before compute"))
                if self.metrics is not None:
                    self.metrics.slices.labels(outcome="dropped").inc()
            else:
                live.append(job)
        if not live:
            return
        start = time.perf_counter()
        sel = live[0].selection
        image, dc = sel.model.run(_batched([j.kspace for j in live]), _batched([j.mask for j in live]), sel.feed_alpha)
        if len(image) != len(live) or len(dc) != len(live):
            raise ModelError(f"model output has batch {len(image)} (image) / {len(dc)} (dc_residual), expected {len(live)}")
        compute = time.perf_counter() - start
        if self.metrics is not None:
            self.metrics.compute_time.observe(compute)
            self.metrics.batch_size.observe(len(live))
        for i, job in enumerate(live):
            queue_s = start - job.enqueued
            if self.metrics is not None:
                self.metrics.queue_time.observe(queue_s)
            job.future.set_result(JobResult(image[i], float(dc[i]), queue_s, compute, len(live)))


def _fail(jobs: list[Job], exc: BaseException) -> None:
    """Fails the futures of jobs not yet answered."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
