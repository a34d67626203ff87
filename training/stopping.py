"""Stop a training loop cleanly on SIGINT (Ctrl-C) or SIGTERM (a Kubernetes eviction, a preempted node).

The first signal only asks: the loop finishes the optimiser step it is in, saves a checkpoint at that
step and ends its MLflow run KILLED, so `--resume` loses nothing. A second signal interrupts at once
(KeyboardInterrupt), for a step that hangs. Under torchrun every rank must stop at the same step, or the
ranks still running would wait for ever in their next all-reduce: `requested()` agrees across ranks.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: while inside, SIGINT/SIGTERM set `signum` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere (a library caller's worker thread)
    the process keeps its own handlers and `signum` stays None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping at once")
        self.signum = signum
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self, world: int = 1, device: torch.device | None = None) -> int | None:
        """The signal that asked to stop, agreed across the `world` ranks (max of their signal numbers)."""
        if world <= 1:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        all_reduce_released(flag, dist.ReduceOp.MAX)
        return int(flag.item()) or None


def all_reduce_released(tensor: torch.Tensor, op=dist.ReduceOp.SUM, timeout_s: float = 10.0) -> torch.Tensor:
    """`dist.all_reduce(tensor, op)` that returns only once the gloo backend has let go of `tensor`.

    ProcessGroupGloo runs a collective on a worker thread, and that thread drops its reference to the
    tensor after the caller already has the result. In torch 2.13, releasing a tensor that has a Python
    object takes the GIL. If the rank reaches interpreter shutdown first, the worker thread cannot take
    the GIL and exits inside a C++ destructor: std::terminate, SIGABRT ("terminate called without an
    active exception"), after training finished and its checkpoint was written. A core from one such
    abort showed exactly this. `requested()` is the last collective on every path out of the training
    loop, so it waits here.

    While the backend holds the tensor, the tensor holds its Python object, so the reference count shows
    when the backend lets go. This waits, sleeping so that the GIL is free, until the count is back to
    what it was, for at most `timeout_s`. The wait is for gloo only: NCCL keeps tensors for its own
    watchdog and releases them on another schedule.
    """
    held = sys.getrefcount(tensor)
    dist.all_reduce(tensor, op=op)
    if dist.get_backend() == "gloo":
        deadline = time.monotonic() + timeout_s
        while sys.getrefcount(tensor) > held and time.monotonic() < deadline:
            time.sleep(0.0005)
    return tensor
